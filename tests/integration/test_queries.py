"""Queries of PROTOCOL.md against a real daemon: runs, metrics, compare, best, items, search, stats."""

from __future__ import annotations

from typing import Any

from tests.conftest import Client, on_every_backend

pytestmark = on_every_backend


def started(run: str, name: str, **data: Any) -> dict[str, Any]:
    return {"type": "run.started", "run": run, "data": {"name": name, **data}}


def points(run: str, name: str, values: list[float], epoch: int | None = None) -> list[dict[str, Any]]:
    out = []
    for step, value in enumerate(values):
        data: dict[str, Any] = {"values": {name: value}, "step": step}
        if epoch is not None:
            data["epoch"] = epoch
        out.append({"type": "metrics", "run": run, "data": data})
    return out


async def three_runs(client: Client) -> None:
    await client.append(
        [
            started(
                "a", "alpha run", pipeline="train", tags=["baseline"], config={"lr": 0.1}, notes="first try"
            ),
            started("b", "beta run", pipeline="train", tags=["tuned"], config={"lr": 0.01}),
            started("c", "gamma run", pipeline="eval"),
            *points("a", "loss", [3.0, 1.0, 2.0]),
            *points("b", "loss", [4.0, 1.0, 0.5]),
            *points("c", "loss", [1.0]),
            {"type": "run.finished", "run": "a", "data": {"status": "completed"}},
            {"type": "run.finished", "run": "b", "data": {"status": "failed", "error": "boom"}},
            {
                "type": "item",
                "run": "a",
                "data": {
                    "item": "i1",
                    "kind": "translation_result",
                    "stage": "translate",
                    "data": {"text": "the running foxes jumped"},
                },
            },
            {"type": "item", "run": "a", "data": {"item": "i2", "kind": "output_image", "status": "failed"}},
            {"type": "artifact", "run": "b", "data": {"kind": "checkpoint", "path": "/ckpt/beta-final.pt"}},
        ]
    )


async def test_runs_filters_orders_pages_and_reports_the_total_and_seq(client: Client) -> None:
    await three_runs(client)
    reply = await client.query(
        "runs", filter="metrics.loss < 2.5 and pipeline = 'train'", order_by=["metrics.loss asc"], limit=1
    )
    assert reply["op"] == "result" and reply["total"] == 2 and reply["seq"] == 15
    [row] = reply["rows"]
    assert (row["id"], row["tags"], row["metrics"], row["config"]) == (
        "b",
        ["tuned"],
        {"loss": 0.5},
        {"lr": 0.01},
    )
    page2 = await client.query(
        "runs",
        filter="metrics.loss < 2.5 and pipeline = 'train'",
        order_by=["metrics.loss asc"],
        limit=1,
        offset=1,
    )
    assert [r["id"] for r in page2["rows"]] == ["a"]


async def test_a_bad_filter_or_limit_is_bad_query_with_the_position(client: Client) -> None:
    reply = await client.query("runs", filter="metrcs.loss < 1")
    assert reply["op"] == "error" and reply["code"] == "bad_query" and reply["message"].endswith("at 0")
    reply = await client.query("runs", limit=1001)
    assert reply["code"] == "bad_query" and "limit" in reply["message"]


async def test_deleted_runs_are_listed_only_when_asked(client: Client) -> None:
    await three_runs(client)
    await client.append([{"type": "run.deleted", "run": "c"}])
    assert [r["id"] for r in (await client.query("runs"))["rows"]] == ["a", "b"]
    assert [r["id"] for r in (await client.query("runs", deleted=True))["rows"]] == ["a", "b", "c"]


async def test_metrics_downsampling_keeps_a_one_point_spike(client: Client) -> None:
    values = [1.0] * 3000
    values[1234] = 99.0
    values[2000] = -5.0
    events = points("s", "loss", values)
    await client.append(events)
    reply = await client.query("metrics", run="s", max_points=100)
    [row] = reply["rows"]
    assert len(row["steps"]) <= 100 and row["points"] == 3000 and row["downsampled"] is True
    assert 99.0 in row["values"] and -5.0 in row["values"]
    assert row["steps"][row["values"].index(99.0)] == 1234
    assert row["epochs"][0] is None and len(row["ts"]) == len(row["steps"])


async def test_metrics_step_range_reads_only_those_steps(client: Client) -> None:
    await client.append(points("s", "loss", [float(i) for i in range(2500)], epoch=3))
    [row] = (await client.query("metrics", run="s", names=["loss"], step_from=1020, step_to=1030))["rows"]
    assert row["steps"] == list(range(1020, 1031)) and row["values"] == [float(i) for i in range(1020, 1031)]
    assert set(row["epochs"]) == {3}


async def test_metrics_of_an_unknown_run_is_not_found(client: Client) -> None:
    reply = await client.query("metrics", run="nope")
    assert reply["code"] == "not_found"


async def test_compare_reports_where_extremes_were_reached_and_epochs(client: Client) -> None:
    await three_runs(client)
    await client.append(points("a", "acc", [0.1, 0.9]) + points("a", "acc", [0.5], epoch=1))
    rows = (await client.query("compare", runs=["a", "b"], metrics=["loss"]))["rows"]
    assert [
        (r["run"], r["min"], r["min_step"], r["max"], r["max_step"], r["last"], r["count"]) for r in rows
    ] == [("a", 1.0, 1, 3.0, 0, 2.0, 3), ("b", 0.5, 2, 4.0, 0, 0.5, 3)]
    acc = (await client.query("compare", runs=["a"], metrics=["acc"]))["rows"][0]
    assert acc["epochs"] == 1 and acc["max"] == 0.9


async def test_best_is_over_every_value_and_the_earlier_run_wins_a_tie(client: Client) -> None:
    await three_runs(client)
    [best] = (await client.query("best", metric="loss", mode="max"))["rows"]
    assert (best["run"], best["value"], best["step"]) == ("b", 4.0, 0)
    await client.append(points("d", "loss", [0.5]))
    [best] = (await client.query("best", metric="loss", mode="min"))["rows"]
    assert (best["run"], best["value"], best["step"]) == ("b", 0.5, 2)
    [best] = (await client.query("best", metric="loss", mode="min", filter="pipeline = 'eval'"))["rows"]
    assert best["run"] == "c"


async def test_items_filter_by_status_and_artifacts_list_a_run(client: Client) -> None:
    await three_runs(client)
    reply = await client.query("items", run="a", status="failed")
    assert reply["total"] == 1 and reply["rows"][0]["item"] == "i2"
    arts = (await client.query("artifacts", run="b"))["rows"]
    assert [a["path"] for a in arts] == ["/ckpt/beta-final.pt"]


async def test_search_stems_ranks_and_snips_runs_items_and_artifacts(client: Client) -> None:
    await three_runs(client)
    rows = (await client.query("search", text="fox run"))["rows"]
    assert [(r["kind"], r["run"]) for r in rows] == [("item", "a")]
    assert "[foxes]" in rows[0]["snippet"] and "[running]" in rows[0]["snippet"]
    rows = (await client.query("search", text="beta"))["rows"]
    assert {r["kind"] for r in rows} == {"run", "artifact"}
    rows = (await client.query("search", text='"NEAR( OR * ^'))["rows"]
    assert rows == []
    await client.append([{"type": "run.updated", "run": "a", "data": {"add_tags": ["shiny"]}}])
    assert [r["run"] for r in (await client.query("search", text="shiny"))["rows"]] == ["a"]


async def test_stats_counts_runs_items_artifacts_and_tags(client: Client) -> None:
    await three_runs(client)
    [stats] = (await client.query("stats"))["rows"]
    assert stats["runs_by_status"] == {"completed": 1, "failed": 1, "running": 1}
    assert stats["items_by_status"] == {"failed": 1, "ok": 1}
    assert stats["artifacts_by_kind"] == {"checkpoint": 1}
    assert stats["head"] == 15 and stats["metric_points"] == 7 and stats["database_bytes"] > 0
    assert stats["ingest_rate"] > 0
    assert stats["log_bytes"] > 0 and stats["log_bytes_exact"] is True


async def test_out_of_range_numbers_and_oversized_filters_are_bad_queries_over_the_wire(
    client: Client,
) -> None:
    await three_runs(client)
    for args in (
        {"filter": " or ".join(["name = 'x'"] * 3000)},
        {"filter": " and ".join(f"metrics.m{i} > 0" for i in range(100))},
        {"filter": "config.lr = 99999999999999999999"},
        {"offset": 10**20},
    ):
        reply = await client.query("runs", **args)
        assert reply["op"] == "error" and reply["code"] == "bad_query", reply
    reply = await client.query("events", from_seq=12 * 10**28)
    assert reply["code"] == "bad_query" and "from_seq" in reply["message"]
    assert (await client.query("runs"))["total"] == 3


async def test_a_subscription_from_beyond_64_bit_seqs_is_refused_and_the_connection_keeps_working(
    client: Client,
) -> None:
    """It used to be accepted, then hang: the catch-up read failed on the number."""
    reply = await client.request({"op": "subscribe", "from_seq": 12 * 10**28})
    assert reply["op"] == "error" and reply["code"] == "bad_message" and "from_seq" in reply["message"]
    reply = await client.request({"op": "subscribe", "from_seq": 0})
    assert reply["op"] == "subscribed"
