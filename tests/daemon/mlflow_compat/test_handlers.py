"""The MLflow tracking handlers against a real daemon's writer and readers, without HTTP:
answers shaped as MLflow's server gives them, errors with MLflow's codes and statuses, and
every write an event in the log that tracklog's own queries and subscribers see."""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

import msgspec

from tests.conftest import open_client
from tracklog.daemon.server import Daemon
from tracklog.protocol.messages import Query

from .conftest import WAIT, Api

NOW_MS = 1_767_225_600_000  # 2026-01-01, in MLflow's milliseconds


async def new_run(api: Api, experiment_id: str = "0", **fields: Any) -> str:
    fields.setdefault("start_time", NOW_MS)
    body = await api.post("runs/create", experiment_id=experiment_id, **fields)
    run_id: str = body["run"]["info"]["run_id"]
    return run_id


async def events_of(daemon: Daemon, run: str | None = None) -> list[dict[str, Any]]:
    result = await daemon.readers.query(Query(q="events", run=run, limit=10_000))
    return [msgspec.to_builtins(row) for row in result.rows]


# -- experiments ------------------------------------------------------------------------------------


async def test_experiment_0_named_default_exists_before_anything_is_logged(api: Api) -> None:
    experiment = (await api.get("experiments/get", experiment_id="0"))["experiment"]
    assert experiment["name"] == "Default" and experiment["lifecycle_stage"] == "active"
    assert experiment["artifact_location"] == "mlflow-artifacts:/0"
    by_name = await api.get("experiments/get-by-name", experiment_name="Default")
    assert by_name["experiment"]["experiment_id"] == "0"


async def test_create_experiment_gives_the_next_integer_id_and_get_returns_it_with_its_tags(
    api: Api, daemon: Daemon
) -> None:
    created = await api.post("experiments/create", name="base", tags=[{"key": "team", "value": "nlp"}])
    assert created == {"experiment_id": "1"}
    assert (await api.post("experiments/create", name="second")) == {"experiment_id": "2"}
    experiment = (await api.get("experiments/get", experiment_id="1"))["experiment"]
    assert experiment["name"] == "base" and experiment["tags"] == [{"key": "team", "value": "nlp"}]
    assert experiment["artifact_location"] == "mlflow-artifacts:/1"
    assert isinstance(experiment["creation_time"], int) and experiment["creation_time"] > 0
    kinds = [e["type"] for e in await events_of(daemon)]
    assert kinds == ["experiment", "experiment"]


async def test_a_duplicate_experiment_name_is_resource_already_exists_with_status_400(api: Api) -> None:
    await api.post("experiments/create", name="dup")
    status, body = await api.call("POST", "experiments/create", name="dup")
    assert status == 400
    assert body == {
        "error_code": "RESOURCE_ALREADY_EXISTS",
        "message": "Experiment(name=dup) already exists.",
    }
    status, body = await api.call("POST", "experiments/create", name="Default")
    assert (status, body["error_code"]) == (400, "RESOURCE_ALREADY_EXISTS")


async def test_a_missing_or_unknown_experiment_is_answered_as_mlflow_answers_it(api: Api) -> None:
    status, body = await api.call("POST", "experiments/create")
    assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert body["message"].startswith("Missing value for required parameter 'name'.")
    status, body = await api.call("GET", "experiments/get", experiment_id="42")
    assert (status, body) == (
        404,
        {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "No Experiment with id=42 exists"},
    )
    status, body = await api.call("GET", "experiments/get-by-name", experiment_name="nope")
    assert (status, body["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")
    assert body["message"] == "Could not find experiment with name 'nope'"


async def test_rename_delete_and_restore_an_experiment_and_its_runs_follow(api: Api) -> None:
    await api.post("experiments/create", name="old")
    run_id = await new_run(api, "1")
    await api.post("experiments/update", experiment_id="1", new_name="new")
    assert (await api.get("experiments/get-by-name", experiment_name="new"))["experiment"][
        "experiment_id"
    ] == "1"
    await api.post("experiments/delete", experiment_id="1")
    experiment = (await api.get("experiments/get", experiment_id="1"))["experiment"]
    assert experiment["lifecycle_stage"] == "deleted"
    assert (await api.get("runs/get", run_id=run_id))["run"]["info"]["lifecycle_stage"] == "deleted"
    status, body = await api.call("POST", "experiments/update", experiment_id="1", new_name="x")
    assert (status, body["message"]) == (500, "Cannot rename a non-active experiment.")
    status, body = await api.call("POST", "runs/create", experiment_id="1")
    assert status == 400 and "must be in the 'active' state" in body["message"]
    await api.post("experiments/restore", experiment_id="1")
    assert (await api.get("runs/get", run_id=run_id))["run"]["info"]["lifecycle_stage"] == "active"


async def test_search_experiments_filters_orders_and_pages(api: Api) -> None:
    for name in ("alpha", "beta", "gamma"):
        await api.post("experiments/create", name=name, tags=[{"key": "kind", "value": name[0]}])
    await api.post("experiments/delete", experiment_id="2")
    found = await api.post("experiments/search", max_results=2, order_by=["name ASC"])
    assert [e["name"] for e in found["experiments"]] == ["Default", "alpha"]
    rest = await api.post(
        "experiments/search", max_results=2, order_by=["name ASC"], page_token=found["next_page_token"]
    )
    assert [e["name"] for e in rest["experiments"]] == ["gamma"] and "next_page_token" not in rest
    like = await api.post("experiments/search", filter="name LIKE '%a%' AND tags.kind = 'g'")
    assert [e["name"] for e in like["experiments"]] == ["gamma"]
    deleted = await api.post("experiments/search", view_type="DELETED_ONLY")
    assert [e["name"] for e in deleted["experiments"]] == ["beta"]
    every = await api.post("experiments/search", view_type="ALL")
    assert [e["experiment_id"] for e in every["experiments"]] == ["3", "2", "1", "0"]  # newest first


async def test_experiment_tags_are_set_and_deleted(api: Api) -> None:
    await api.post("experiments/create", name="t")
    await api.post("experiments/set-experiment-tag", experiment_id="1", key="k", value="v")
    assert (await api.get("experiments/get", experiment_id="1"))["experiment"]["tags"] == [
        {"key": "k", "value": "v"}
    ]
    await api.post("experiments/delete-experiment-tag", experiment_id="1", key="k")
    assert "tags" not in (await api.get("experiments/get", experiment_id="1"))["experiment"]
    status, body = await api.call("POST", "experiments/delete-experiment-tag", experiment_id="1", key="k")
    assert (status, body["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")


# -- runs -------------------------------------------------------------------------------------------


async def test_create_run_gives_a_32_hex_id_a_name_and_the_tags_and_get_run_returns_it(api: Api) -> None:
    await api.post("experiments/create", name="e")
    body = await api.post(
        "runs/create",
        experiment_id="1",
        start_time=NOW_MS,
        user_id="ann",
        tags=[{"key": "mlflow.runName", "value": "first"}, {"key": "mlflow.source.type", "value": "LOCAL"}],
    )
    info = body["run"]["info"]
    assert re.fullmatch(r"[0-9a-f]{32}", info["run_id"]) and info["run_uuid"] == info["run_id"]
    assert info["run_name"] == "first" and info["experiment_id"] == "1" and info["user_id"] == "ann"
    assert info["status"] == "RUNNING" and info["lifecycle_stage"] == "active"
    assert info["start_time"] == NOW_MS and "end_time" not in info
    assert info["artifact_uri"] == f"mlflow-artifacts:/1/{info['run_id']}/artifacts"
    tags = {t["key"]: t["value"] for t in body["run"]["data"]["tags"]}
    assert tags == {"mlflow.runName": "first", "mlflow.source.type": "LOCAL"}
    assert (await api.get("runs/get", run_id=info["run_id"]))["run"] == body["run"]


async def test_a_run_without_a_name_gets_one_like_mlflow_gives(api: Api) -> None:
    info = (await api.post("runs/create", experiment_id="0"))["run"]["info"]
    assert re.fullmatch(r"[a-z]+-[a-z]+-\d+", info["run_name"])


async def test_a_missing_run_is_resource_does_not_exist_with_status_404(api: Api) -> None:
    missing = "0" * 32
    for method, endpoint, fields in (
        ("GET", "runs/get", {"run_id": missing}),
        ("POST", "runs/log-metric", {"run_id": missing, "key": "m", "value": 1, "timestamp": NOW_MS}),
        ("POST", "runs/log-batch", {"run_id": missing, "params": [{"key": "p", "value": "1"}]}),
        ("POST", "runs/update", {"run_id": missing, "status": "FINISHED"}),
        ("POST", "runs/delete", {"run_id": missing}),
        ("GET", "metrics/get-history", {"run_id": missing, "metric_key": "m"}),
    ):
        status, body = await api.call(method, endpoint, **fields)
        assert (status, body) == (
            404,
            {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Run with id={missing} not found"},
        ), endpoint


async def test_a_run_prefix_or_name_is_not_an_mlflow_run_id(api: Api) -> None:
    run_id = await new_run(api, run_name="named")
    for ref in (run_id[:8], "named"):
        status, _ = await api.call("GET", "runs/get", run_id=ref)
        assert status == 404


async def test_update_run_finishes_it_at_the_end_time_and_renames_it(api: Api, daemon: Daemon) -> None:
    run_id = await new_run(api)
    body = await api.post(
        "runs/update", run_id=run_id, status="FINISHED", end_time=NOW_MS + 5000, run_name="done"
    )
    info = body["run_info"]
    assert info["status"] == "FINISHED" and info["end_time"] == NOW_MS + 5000 and info["run_name"] == "done"
    tracklog_run = (await daemon.readers.query(Query(q="run", run=run_id))).rows[0]
    assert tracklog_run["status"] == "completed" and tracklog_run["finished"] == (NOW_MS + 5000) / 1000
    await api.post("runs/update", run_id=run_id, status="RUNNING")
    info = (await api.get("runs/get", run_id=run_id))["run"]["info"]
    assert info["status"] == "RUNNING" and "end_time" not in info
    status, _ = await api.call("POST", "runs/update", run_id=run_id, status="DONE")
    assert status == 400


async def test_delete_and_restore_run_flip_its_lifecycle_and_a_deleted_run_takes_no_writes(api: Api) -> None:
    run_id = await new_run(api)
    await api.post("runs/delete", run_id=run_id)
    assert (await api.get("runs/get", run_id=run_id))["run"]["info"]["lifecycle_stage"] == "deleted"
    status, body = await api.call(
        "POST", "runs/log-metric", run_id=run_id, key="m", value=1, timestamp=NOW_MS
    )
    assert status == 400 and body["message"] == (
        f"The run {run_id} must be in the 'active' state. Current state is deleted."
    )
    await api.post("runs/restore", run_id=run_id)
    assert (await api.get("runs/get", run_id=run_id))["run"]["info"]["lifecycle_stage"] == "active"


def write_requests(run_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Every write on a run, one request each (the checks before a write are what they share)."""
    metric = {"key": "m", "value": 1.5, "timestamp": NOW_MS, "step": 1}
    dataset = {"name": "d", "digest": "abc", "source_type": "local", "source": "/data"}
    return [
        ("runs/log-metric", {"run_id": run_id, **metric}),
        ("runs/log-batch", {"run_id": run_id, "metrics": [metric]}),
        ("runs/log-batch", {"run_id": run_id, "tags": [{"key": "t", "value": "v"}]}),
        ("runs/log-batch", {"run_id": run_id, "params": [{"key": "p", "value": "1"}]}),
        ("runs/log-parameter", {"run_id": run_id, "key": "p", "value": "1"}),
        ("runs/set-tag", {"run_id": run_id, "key": "t", "value": "v"}),
        ("runs/log-inputs", {"run_id": run_id, "datasets": [{"dataset": dataset}]}),
        ("runs/update", {"run_id": run_id, "status": "FINISHED", "end_time": NOW_MS}),
    ]


async def test_a_write_to_an_unknown_id_an_id_prefix_or_a_run_name_is_not_found_and_logs_nothing(
    api: Api, daemon: Daemon
) -> None:
    run_id = await new_run(api, run_name="named")
    before = len(await events_of(daemon))
    for ref in ("0" * 32, run_id[:8], "named"):
        for endpoint, fields in [*write_requests(ref), ("runs/delete", {"run_id": ref})]:
            status, body = await api.call("POST", endpoint, **fields)
            assert (status, body) == (
                404,
                {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Run with id={ref} not found"},
            ), (endpoint, ref)
        status, _ = await api.call("POST", "runs/restore", run_id=ref)
        assert status == 404
    assert len(await events_of(daemon)) == before


async def test_every_write_to_a_deleted_run_is_refused_until_it_is_restored(api: Api, daemon: Daemon) -> None:
    run_id = await new_run(api)
    await api.post("runs/delete", run_id=run_id)
    await api.post("runs/delete", run_id=run_id)  # deleting a deleted run again is not an error
    before = len(await events_of(daemon))
    for endpoint, fields in write_requests(run_id):
        status, body = await api.call("POST", endpoint, **fields)
        assert (status, body) == (
            400,
            {
                "error_code": "INVALID_PARAMETER_VALUE",
                "message": f"The run {run_id} must be in the 'active' state. Current state is deleted.",
            },
        ), endpoint
    assert len(await events_of(daemon)) == before
    await api.post("runs/restore", run_id=run_id)
    for endpoint, fields in write_requests(run_id):
        await api.post(endpoint, **fields)
    history = await api.get("metrics/get-history", run_id=run_id, metric_key="m")
    assert [p["value"] for p in history["metrics"]] == [1.5, 1.5]


# -- logging ----------------------------------------------------------------------------------------


async def test_log_metric_keeps_timestamp_and_step_and_get_history_pages_through_them(api: Api) -> None:
    run_id = await new_run(api)
    for step in range(5):
        await api.post(
            "runs/log-metric",
            run_id=run_id,
            key="loss",
            value=1.0 / (step + 1),
            timestamp=NOW_MS + step,
            step=step,
        )
    await api.post("runs/log-metric", run_id=run_id, key="loss", value="NaN", timestamp=NOW_MS + 9, step=9)
    whole = (await api.get("metrics/get-history", run_id=run_id, metric_key="loss"))["metrics"]
    assert [(m["step"], m["timestamp"]) for m in whole] == [(s, NOW_MS + s) for s in (0, 1, 2, 3, 4, 9)]
    assert whole[1] == {"key": "loss", "value": 0.5, "timestamp": NOW_MS + 1, "step": 1}
    assert whole[-1]["value"] == "NaN"
    first = await api.get("metrics/get-history", run_id=run_id, metric_key="loss", max_results=4)
    assert len(first["metrics"]) == 4
    rest = await api.get(
        "metrics/get-history",
        run_id=run_id,
        metric_key="loss",
        max_results=4,
        page_token=first["next_page_token"],
    )
    assert first["metrics"] + rest["metrics"] == whole and "next_page_token" not in rest
    assert await api.get("metrics/get-history", run_id=run_id, metric_key="never") == {}
    latest = (await api.get("runs/get", run_id=run_id))["run"]["data"]["metrics"]
    assert latest == [{"key": "loss", "value": "NaN", "timestamp": NOW_MS + 9, "step": 9}]


async def test_log_batch_groups_metrics_by_time_and_step_into_events(api: Api, daemon: Daemon) -> None:
    run_id = await new_run(api)
    metrics = [
        {"key": "a", "value": 1, "timestamp": NOW_MS, "step": 0},
        {"key": "b", "value": 2, "timestamp": NOW_MS, "step": 0},
        {"key": "a", "value": 3, "timestamp": NOW_MS, "step": 0},  # a again: a new event
        {"key": "a", "value": 4, "timestamp": NOW_MS + 1, "step": 1},
    ]
    await api.post(
        "runs/log-batch",
        run_id=run_id,
        metrics=metrics,
        params=[{"key": "lr", "value": "0.1"}],
        tags=[{"key": "stage", "value": "dev"}],
    )
    logged = [e for e in await events_of(daemon, run_id) if e["type"] == "metrics"]
    assert [e["data"]["values"] for e in logged] == [{"a": 1, "b": 2}, {"a": 3}, {"a": 4}]
    history = (await api.get("metrics/get-history", run_id=run_id, metric_key="a"))["metrics"]
    assert [m["value"] for m in history] == [1, 3, 4]
    data = (await api.get("runs/get", run_id=run_id))["run"]["data"]
    assert data["params"] == [{"key": "lr", "value": "0.1"}]
    assert {"key": "stage", "value": "dev"} in data["tags"]


async def test_log_batch_reads_each_metrics_fields_in_every_json_spelling_and_names_a_bad_one(
    api: Api, daemon: Daemon
) -> None:
    run_id = await new_run(api)
    metrics = [
        {"key": "a", "value": 1.5, "timestamp": NOW_MS, "step": 0},
        {"key": "a", "value": 2, "timestamp": str(NOW_MS + 1), "step": "1"},  # int64 as strings
        {"key": "a", "value": "Infinity", "timestamp": float(NOW_MS + 2)},  # no step: step 0
        {"key": "b", "value": "-1e3", "timestamp": NOW_MS + 3, "step": 3.0},
    ]
    await api.post("runs/log-batch", run_id=run_id, metrics=metrics)
    history = (await api.get("metrics/get-history", run_id=run_id, metric_key="a"))["metrics"]
    assert [(m["value"], m["timestamp"], m["step"]) for m in history] == [
        (1.5, NOW_MS, 0),
        (2.0, NOW_MS + 1, 1),
        ("Infinity", NOW_MS + 2, 0),
    ]
    assert (await api.get("metrics/get-history", run_id=run_id, metric_key="b"))["metrics"][0][
        "value"
    ] == -1000
    good = {"key": "a", "value": 1.0, "timestamp": NOW_MS, "step": 0}
    before = len(await events_of(daemon))
    for bad, message in (
        ({"key": "a/../b"}, "Invalid value \"a/../b\" for parameter 'metrics[2].key' supplied: Names may be"),
        ({"key": ""}, "Missing value for required parameter 'metrics[2].key'."),
        ({"key": 7}, "Missing value for required parameter 'metrics[2].key'."),
        ({"key": ["a"]}, "Missing value for required parameter 'metrics[2].key'."),
        ({"value": True}, "Invalid value true for parameter 'metrics[2].value' supplied."),
        ({"value": "abc"}, "Invalid value \"abc\" for parameter 'metrics[2].value' supplied: Please"),
        ({"timestamp": None}, "Missing value for required parameter 'timestamp'."),
        ({"timestamp": "soon"}, "Invalid value \"soon\" for parameter 'timestamp' supplied: Hint"),
        ({"step": 1.5}, "Invalid value 1.5 for parameter 'step' supplied: Hint"),
    ):
        batch = [good, good, {**good, **bad}]
        status, body = await api.call("POST", "runs/log-batch", run_id=run_id, metrics=batch)
        assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE", bad
        assert body["message"].startswith(message), (bad, body["message"])
    status, body = await api.call("POST", "runs/log-batch", run_id=run_id, metrics=[good, "not a metric"])
    assert (status, body["message"]) == (
        400,
        "Invalid value \"not a metric\" for parameter 'metrics[1]' supplied.",
    )
    assert len(await events_of(daemon)) == before


async def test_log_batch_refuses_more_than_mlflows_limits(api: Api) -> None:
    run_id = await new_run(api)
    too_many = {
        "metrics": [{"key": "m", "value": 1, "timestamp": NOW_MS, "step": i} for i in range(1001)],
        "params": [{"key": f"p{i}", "value": "v"} for i in range(101)],
        "tags": [{"key": f"t{i}", "value": "v"} for i in range(101)],
    }
    for name, items in too_many.items():
        status, body = await api.call("POST", "runs/log-batch", run_id=run_id, **{name: items})
        assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE"
        assert f"at most {len(items) - 1} {name}. Got {len(items)} {name}" in body["message"]
    status, _ = await api.call("POST", "runs/log-batch", run_id=run_id, metrics=too_many["metrics"][:1000])
    assert status == 200


async def test_a_param_is_immutable_once_logged_as_mlflow_enforces(api: Api) -> None:
    run_id = await new_run(api)
    await api.post("runs/log-parameter", run_id=run_id, key="lr", value="0.1")
    await api.post("runs/log-parameter", run_id=run_id, key="lr", value="0.1")  # the same value: fine
    status, body = await api.call("POST", "runs/log-parameter", run_id=run_id, key="lr", value="0.2")
    assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert body["message"] == (
        "Changing param values is not allowed. Param with key='lr' was already logged with value='0.1'"
        f" for run ID='{run_id}'. Attempted logging new value '0.2'."
    )
    status, body = await api.call(
        "POST",
        "runs/log-batch",
        run_id=run_id,
        params=[{"key": "lr", "value": "0.3"}, {"key": "bs", "value": "8"}],
    )
    assert status == 400 and "Changing param values is not allowed" in body["message"]
    params = (await api.get("runs/get", run_id=run_id))["run"]["data"]["params"]
    assert params == [{"key": "lr", "value": "0.1"}]  # nothing of the refused batch was logged


async def test_concurrent_different_values_for_one_param_leave_exactly_one(api: Api) -> None:
    run_id = await new_run(api)
    answers = await asyncio.gather(
        *(api.call("POST", "runs/log-parameter", run_id=run_id, key="seed", value=str(i)) for i in range(8))
    )
    assert sorted(status for status, _ in answers) == [200] + [400] * 7
    assert len((await api.get("runs/get", run_id=run_id))["run"]["data"]["params"]) == 1


async def test_a_bad_key_is_refused_with_mlflows_message(api: Api) -> None:
    run_id = await new_run(api)
    status, body = await api.call(
        "POST", "runs/log-metric", run_id=run_id, key="a*b", value=1, timestamp=NOW_MS
    )
    assert status == 400 and "Names may only contain alphanumerics" in body["message"]
    status, body = await api.call("POST", "runs/log-parameter", run_id=run_id, key="../x", value="1")
    assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE"


async def test_set_tag_and_delete_tag_and_a_missing_tag_is_resource_does_not_exist(api: Api) -> None:
    run_id = await new_run(api, run_name="n")
    await api.post("runs/set-tag", run_id=run_id, key="k", value="v")
    await api.post("runs/set-tag", run_id=run_id, key="mlflow.runName", value="renamed")
    await api.post("runs/set-tag", run_id=run_id, key="mlflow.note.content", value="a note")
    run = (await api.get("runs/get", run_id=run_id))["run"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags == {"k": "v", "mlflow.runName": "renamed", "mlflow.note.content": "a note"}
    assert run["info"]["run_name"] == "renamed"
    await api.post("runs/delete-tag", run_id=run_id, key="k")
    status, body = await api.call("POST", "runs/delete-tag", run_id=run_id, key="k")
    assert (status, body) == (
        404,
        {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"No tag with name: k in run with id {run_id}"},
    )


async def test_log_inputs_records_datasets_that_get_run_returns(api: Api) -> None:
    run_id = await new_run(api)
    dataset = {"name": "train", "digest": "abc123", "source_type": "local", "source": "/data"}
    await api.post(
        "runs/log-inputs",
        run_id=run_id,
        datasets=[{"tags": [{"key": "mlflow.data.context", "value": "training"}], "dataset": dataset}],
    )
    await api.post("runs/log-inputs", run_id=run_id, datasets=[{"dataset": dataset}])  # the same one again
    inputs = (await api.get("runs/get", run_id=run_id))["run"]["inputs"]
    assert inputs == {
        "dataset_inputs": [
            {"dataset": dataset, "tags": [{"key": "mlflow.data.context", "value": "training"}]}
        ]
    }


# -- search ------------------------------------------------------------------------------------------


async def test_search_runs_filters_by_metrics_params_tags_and_attributes(api: Api) -> None:
    await api.post("experiments/create", name="s")
    ids = {}
    for i, name in enumerate(("a", "b", "c")):
        run_id = await new_run(api, "1", run_name=name, start_time=NOW_MS + i)
        ids[name] = run_id
        await api.post(
            "runs/log-batch",
            run_id=run_id,
            metrics=[{"key": "acc", "value": i / 10, "timestamp": NOW_MS, "step": 0}],
            params=[{"key": "lr", "value": str(i)}],
            tags=[{"key": "group", "value": "x" if i < 2 else "y"}],
        )
    await api.post("runs/update", run_id=ids["c"], status="FAILED")
    other = await new_run(api, "0", run_name="elsewhere")

    async def names(filter_string: str, **more: Any) -> list[str]:
        body = await api.post("runs/search", experiment_ids=["1"], filter=filter_string, **more)
        return [r["info"]["run_name"] for r in body.get("runs", [])]

    assert await names("") == ["c", "b", "a"]  # newest first, as MLflow orders
    assert await names("metrics.acc > 0.05") == ["c", "b"]
    assert await names("params.lr = '1'") == ["b"]
    assert await names("tags.group = 'x' and metrics.acc < 0.15") == ["b", "a"]
    assert await names("attributes.status = 'FAILED'") == ["c"]
    assert await names("attributes.run_name LIKE 'b%'") == ["b"]
    assert await names(f"attributes.run_id IN ('{ids['a']}', '{ids['c']}')") == ["c", "a"]
    assert await names(f"attributes.start_time >= {NOW_MS + 1}") == ["c", "b"]
    assert await names("tags.`mlflow.runName` = 'a'") == ["a"]
    assert await names("", order_by=["metrics.acc ASC"]) == ["a", "b", "c"]
    assert await names("", order_by=["params.lr DESC"]) == ["c", "b", "a"]
    both = await api.post("runs/search", experiment_ids=["0", "1"], max_results=50000)
    assert ids["a"] in [r["info"]["run_id"] for r in both["runs"]] and other in [
        r["info"]["run_id"] for r in both["runs"]
    ]
    status, body = await api.call("POST", "runs/search", experiment_ids=["1"], filter="metrics.acc >")
    assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE"


async def test_search_runs_pages_with_tokens_and_honours_the_view_type(api: Api) -> None:
    made = [await new_run(api, start_time=NOW_MS + i) for i in range(5)]
    first = await api.post("runs/search", experiment_ids=["0"], max_results=2)
    assert [r["info"]["run_id"] for r in first["runs"]] == [made[4], made[3]]
    second = await api.post(
        "runs/search", experiment_ids=["0"], max_results=2, page_token=first["next_page_token"]
    )
    third = await api.post(
        "runs/search", experiment_ids=["0"], max_results=2, page_token=second["next_page_token"]
    )
    assert [r["info"]["run_id"] for r in second["runs"] + third["runs"]] == [made[2], made[1], made[0]]
    assert "next_page_token" not in third
    await api.post("runs/delete", run_id=made[0])
    active = await api.post("runs/search", experiment_ids=["0"])
    assert made[0] not in [r["info"]["run_id"] for r in active["runs"]]
    deleted = await api.post("runs/search", experiment_ids=["0"], run_view_type="DELETED_ONLY")
    assert [r["info"]["run_id"] for r in deleted["runs"]] == [made[0]]
    every = await api.post("runs/search", experiment_ids=["0"], run_view_type="ALL")
    assert len(every["runs"]) == 5


# -- the same runs, seen by tracklog -----------------------------------------------------------------


async def test_mlflow_writes_are_events_that_tracklog_queries_and_subscribers_see(
    api: Api, daemon: Daemon
) -> None:
    client, _ = await open_client(f"ws://127.0.0.1:{daemon.port}/ws")
    sub = await client.request({"op": "subscribe", "from_seq": daemon.writer.head})
    assert sub["op"] == "subscribed"
    run_id = await new_run(api, run_name="seen")
    await api.post("runs/log-metric", run_id=run_id, key="loss", value=0.5, timestamp=NOW_MS, step=3)
    received: list[dict[str, Any]] = []
    while len(received) < 2:
        message = await client.recv(WAIT)
        if message.get("op") == "events":
            received.extend(message["events"])
    assert [(e["type"], e["run"]) for e in received] == [("run.started", run_id), ("metrics", run_id)]
    assert received[1]["data"] == {"values": {"loss": 0.5}, "step": 3}
    assert received[1]["ts"] == NOW_MS / 1000
    run = (await daemon.readers.query(Query(q="run", run=run_id))).rows[0]
    assert run["name"] == "seen" and run["experiment"] == "0" and run["metrics"]["loss"]["last"] == 0.5


async def test_a_tracklog_run_reads_back_through_mlflow_with_config_as_params(
    api: Api, daemon: Daemon
) -> None:
    client, _ = await open_client(f"ws://127.0.0.1:{daemon.port}/ws")
    ack = await client.append(
        [
            {
                "type": "run.started",
                "run": "native-1",
                "ts": NOW_MS / 1000,
                "data": {
                    "name": "native",
                    "config": {"lr": 0.001, "opt": {"name": "adam"}, "on": True},
                    "tags": ["v1"],
                },
            },
            {
                "type": "metrics",
                "run": "native-1",
                "ts": NOW_MS / 1000 + 1,
                "data": {"values": {"acc": 0.9}, "step": 7},
            },
            {
                "type": "run.finished",
                "run": "native-1",
                "ts": NOW_MS / 1000 + 2,
                "data": {"status": "completed"},
            },
        ]
    )
    assert ack["accepted"] == 3
    run = (await api.get("runs/get", run_id="native-1"))["run"]
    assert run["info"]["experiment_id"] == "0" and run["info"]["status"] == "FINISHED"
    assert run["info"]["end_time"] == NOW_MS + 2000
    assert run["data"]["params"] == [
        {"key": "lr", "value": "0.001"},
        {"key": "on", "value": "True"},
        {"key": "opt.name", "value": "adam"},
    ]
    assert {"key": "v1", "value": ""} in run["data"]["tags"]
    assert run["data"]["metrics"] == [{"key": "acc", "value": 0.9, "timestamp": NOW_MS + 1000, "step": 7}]
    found = await api.post("runs/search", experiment_ids=["0"], filter="params.`opt.name` = 'adam'")
    assert [r["info"]["run_id"] for r in found["runs"]] == ["native-1"]
    assert not math.isnan(run["data"]["metrics"][0]["value"])


# -- routing -----------------------------------------------------------------------------------------


async def test_routes_answer_under_both_prefixes_and_refuse_unknown_paths_and_methods(api: Api) -> None:
    ajax = type(api)(api.context, "/ajax-api/2.0/mlflow/")
    assert (await ajax.get("experiments/get", experiment_id="0"))["experiment"]["name"] == "Default"
    status, body = await api.call("GET", "runs/nonsense")
    assert (status, body["error_code"]) == (404, "ENDPOINT_NOT_FOUND")
    status, body = await api.call("POST", "runs/get", run_id="x")
    assert status == 405
    status, body = await api.call("GET", "metrics/get-history", run_id="x")
    assert status == 400 and "metric_key" in body["message"]


async def test_a_handler_that_fails_unexpectedly_answers_internal_error(api: Api, monkeypatch: Any) -> None:
    from tracklog.daemon.mlflow import handlers

    async def broken(context: Any, fields: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setitem(handlers.ROUTES, "runs/get", {"GET": broken})
    status, body = await api.call("GET", "runs/get", run_id="x")
    assert (status, body) == (500, {"error_code": "INTERNAL_ERROR", "message": "RuntimeError: boom"})


async def test_deleting_an_experiment_marks_its_runs_in_appends_of_bounded_size(
    api: Api, daemon: Daemon, monkeypatch: Any
) -> None:
    from tracklog.daemon.mlflow import handlers

    monkeypatch.setattr(handlers, "MARKS_PER_APPEND", 2)
    await api.post("experiments/create", name="many")
    runs = [await new_run(api, "1") for _ in range(5)]
    sizes: list[list[str]] = []
    real = handlers.append_events

    async def counted(context: Any, events: list[dict[str, Any]]) -> Any:
        sizes.append([e["type"] for e in events])
        return await real(context, events)

    monkeypatch.setattr(handlers, "append_events", counted)
    await api.post("experiments/delete", experiment_id="1")
    assert [len(types) for types in sizes] == [2, 2, 1, 1] and sizes[-1] == ["experiment"]
    logged = await events_of(daemon)
    deletes = [e for e in logged if e["type"] == "run.deleted"]
    assert sorted(e["run"] for e in deletes) == sorted(runs)
    assert logged[-1]["type"] == "experiment" and logged[-1]["data"]["lifecycle"] == "deleted"
    assert len({e["seq"] for e in deletes}) == 5
    found = await api.post("runs/search", experiment_ids=["1"], run_view_type="DELETED_ONLY")
    assert len(found["runs"]) == 5
