"""The MLflow tracking endpoints: each a coroutine from the request's fields to MLflow's answer.

`handle` routes one request. Every write becomes an `append` frame submitted to the daemon's
writer, so MLflow's calls are events like any other client's; every read is a `Query` to
the readers. Checks that MLflow makes before a write (a param never changes, experiment
names are unique) and the write itself run under one lock, so two MLflow calls cannot both
pass a check that only one of them may.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import structlog

from tracklog.protocol import errors as tl_errors
from tracklog.protocol.messages import Ack, Query, Result

from ..artifacts import ArtifactStore
from ..queries import Readers
from ..storage.eventlog import AppendResult
from ..writer import Writer
from . import model, search
from .errors import (
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    INVALID_STATE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
    MlflowError,
    experiment_not_found,
    invalid_value,
    missing,
    run_not_found,
)

#: The paths MLflow's client and UI call the tracking API under.
API_PREFIXES: Final = ("/api/2.0/mlflow/", "/ajax-api/2.0/mlflow/")
#: MLflow's limits on one log-batch (mlflow/utils/validation.py).
MAX_METRICS_PER_BATCH: Final = 1000
MAX_PARAMS_TAGS_PER_BATCH: Final = 100
MAX_PARAM_VALUE_CHARS: Final = 6000
MAX_TAG_VALUE_CHARS: Final = 8000
MAX_EXPERIMENT_NAME_CHARS: Final = 500
#: search-runs: MLflow's default page and largest page.
DEFAULT_SEARCH_RUNS: Final = 1000
MAX_SEARCH_RUNS: Final = 50_000
DEFAULT_SEARCH_EXPERIMENTS: Final = 1000
MAX_SEARCH_EXPERIMENTS: Final = 50_000
#: Points of a run read to find MLflow's latest value of each metric (the highest step, then
#: timestamp); a run with more shows the last value logged instead (docs/mlflow.md).
EXACT_LATEST_POINTS: Final = 100_000
#: Runs marked deleted or restored in one append when their experiment is.
MARKS_PER_APPEND: Final = 5000
#: Runs tracklog's `runs` query gives in one page (the handler reads several for a larger one).
_RUNS_PAGE: Final = 1000
#: Request fields that are lists when they come as query parameters of a GET (any field
#: given more than once is a list too).
_LIST_FIELDS: Final = frozenset({"experiment_ids", "order_by", "run_ids"})
#: Protocol error codes that pass: MLflow's client retries TEMPORARILY_UNAVAILABLE (503).
_PASSING: Final = frozenset({"overloaded", "disk_full"})

_encode = msgspec.json.Encoder().encode
log = structlog.get_logger("tracklog.mlflow")


@dataclass
class MlflowContext:
    """What the handlers need of the daemon: its writer, its readers, a clock."""

    writer: Writer
    readers: Readers
    clock: Callable[[], float] = time.time
    #: Held around each check-then-write (params, experiment names).
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: The artifact store behind MLflow's proxied artifact API (None: that API answers 503).
    artifacts: ArtifactStore | None = None


Handler = Callable[[MlflowContext, dict[str, Any]], Awaitable[dict[str, Any]]]


def matches(path: str) -> bool:
    """Whether `path` is under the MLflow tracking API."""
    return path.startswith(API_PREFIXES)


async def handle(
    method: str, path: str, query: dict[str, list[str]], body: Any, context: MlflowContext
) -> tuple[int, dict[str, Any]]:
    """Answer one MLflow API request: (HTTP status, JSON value), errors as MLflow sends them.

    `query` is the URL's parameters (each name with its values), `body` the parsed JSON
    body (None without one): a GET reads its fields from the query, a POST from the body.
    """
    endpoint = next((path[len(p) :] for p in API_PREFIXES if path.startswith(p)), None)
    routes = ROUTES.get(endpoint.rstrip("/")) if endpoint is not None else None
    if routes is None:
        return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"No API endpoint at {path}"}
    handler = routes.get(method.upper())
    if handler is None:
        allowed = ", ".join(sorted(routes))
        return 405, {"error_code": "BAD_REQUEST", "message": f"{method} is not allowed on {path} ({allowed})"}
    try:
        fields = _fields(query, body)
        return 200, await handler(context, fields)
    except MlflowError as exc:
        return exc.status, exc.body()
    except Exception as exc:  # a bug: answered as MLflow's server answers one, and logged
        log.exception("mlflow handler failed", path=path, method=method)
        return 500, {"error_code": INTERNAL_ERROR, "message": f"{type(exc).__name__}: {exc}"}


def _fields(query: dict[str, list[str]], body: Any) -> dict[str, Any]:
    """The request's fields: the JSON body's, else the query parameters (lists where MLflow's
    request has a repeated field)."""
    if body is not None:
        if not isinstance(body, dict):
            raise MlflowError(INVALID_PARAMETER_VALUE, "The request body must be a JSON object.")
        return body
    return {k: (list(v) if k in _LIST_FIELDS or len(v) > 1 else v[0]) for k, v in query.items() if v}


# -- request fields ----------------------------------------------------------------------------


def _text(fields: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = fields.get(name)
    if value is None or value == "":
        if required:
            raise missing(name)
        return None
    if not isinstance(value, str):
        raise invalid_value(name, value, f"Hint: Value was of type '{type(value).__name__}'.")
    return value


def _integer(fields: dict[str, Any], name: str, *, required: bool = False) -> int | None:
    """An int64 field: protobuf's JSON sends them as numbers or as decimal strings."""
    value = fields.get(name)
    if value is None or value == "":
        if required:
            raise missing(name)
        return None
    if isinstance(value, bool):
        raise invalid_value(name, value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise invalid_value(name, value, f"Hint: Value was of type '{type(value).__name__}'.")


def _number(value: Any, path: str) -> float:
    """A metric value: a number, or one of protobuf's spellings of NaN and the infinities."""
    if isinstance(value, bool) or value is None:
        raise invalid_value(path, value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise invalid_value(path, value, "Please specify value as a valid double (64-bit floating point)")


def _run_id(fields: dict[str, Any]) -> str:
    run_id = _text(fields, "run_id") or _text(fields, "run_uuid")
    if run_id is None:
        raise missing("run_id")
    return run_id


def _pairs(fields: dict[str, Any], name: str) -> list[tuple[str, str]]:
    """`[{key, value}, ...]` (tags, params) as pairs, each key and value a string."""
    items = fields.get(name) or []
    if not isinstance(items, list):
        raise invalid_value(name, items, "Expected a list.")
    out = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise missing(f"{name}[{index}].key")
        value = item.get("value", "")
        out.append((item["key"], "" if value is None else str(value)))
    return out


def _check_key(key: str, path: str) -> None:
    if not key:
        raise missing(path)
    why = model.bad_name(key)
    if why is not None:
        raise invalid_value(path, key, why)


# -- page tokens ----------------------------------------------------------------------------------


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def _offset(fields: dict[str, Any]) -> int:
    token = fields.get("page_token")
    if not token:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(str(token).encode()))["offset"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise MlflowError(INVALID_PARAMETER_VALUE, "Invalid page token, could not base64-decode") from None
    if not isinstance(offset, int) or offset < 0:
        raise MlflowError(INVALID_PARAMETER_VALUE, f"Invalid page token, offset {offset!r} is not valid")
    return offset


# -- the daemon: writes and reads -------------------------------------------------------------


async def append_events(context: MlflowContext, events: list[dict[str, Any]]) -> Ack:
    """Append events through the writer as one `append` frame (the WebSocket path), and wait
    for the commit. A refused event is INVALID_PARAMETER_VALUE naming it."""
    if not events:
        return Ack(accepted=0)
    frame = _encode({"op": "append", "events": events}).decode()  # text: a JSON frame
    result = await (await context.writer.submit_frame(frame))
    if isinstance(result, tl_errors.ProtocolError):
        code = TEMPORARILY_UNAVAILABLE if result.code in _PASSING else INTERNAL_ERROR
        raise MlflowError(code, f"tracklog: {result.code}: {result.message}")
    assert isinstance(result, AppendResult)
    if result.ack.rejected:
        raise MlflowError(INVALID_PARAMETER_VALUE, "; ".join(r.message for r in result.ack.rejected))
    return result.ack


async def ask(context: MlflowContext, query: Query) -> Result:
    try:
        return await context.readers.query(query)
    except tl_errors.BadQuery as exc:
        raise MlflowError(INVALID_PARAMETER_VALUE, exc.message) from None
    except tl_errors.ProtocolError as exc:
        raise MlflowError(INTERNAL_ERROR, f"tracklog: {exc.message}") from None


async def _run(context: MlflowContext, run_id: str) -> dict[str, Any]:
    """The `run` row of exactly this id (tracklog's prefixes and names are not MLflow ids)."""
    try:
        result = await context.readers.query(Query(q="run", run=run_id))
    except tl_errors.NotFound:
        raise run_not_found(run_id) from None
    except tl_errors.BadQuery:  # an ambiguous reference: no run has this id
        raise run_not_found(run_id) from None
    row: dict[str, Any] = result.rows[0]
    if row["id"] != run_id:
        raise run_not_found(run_id)
    return row


def _not_active(run_id: str) -> MlflowError:
    return MlflowError(
        INVALID_PARAMETER_VALUE,
        f"The run {run_id} must be in the 'active' state. Current state is deleted.",
    )


async def _active_run(context: MlflowContext, run_id: str) -> dict[str, Any]:
    run = await _run(context, run_id)
    if run["deleted"]:
        raise _not_active(run_id)
    return run


async def _run_deleted(context: MlflowContext, run_id: str) -> bool:
    """Whether the run of exactly this id is deleted; run_not_found when no run has the id.

    The `resolve` query finds a full id by the runs table's primary key alone, where the
    `run` query would read the run's tags, metric summaries and artifacts too: this is
    the check before each write, whose cost every logged metric pays."""
    try:
        result = await context.readers.query(Query(q="resolve", run=run_id))
    except (tl_errors.NotFound, tl_errors.BadQuery):  # BadQuery: an ambiguous reference
        raise run_not_found(run_id) from None
    found: dict[str, Any] = result.rows[0]
    if found["by"] != "id":  # a name or an id prefix: not an MLflow run id
        raise run_not_found(run_id)
    return bool(found["deleted"])


async def _check_active(context: MlflowContext, run_id: str) -> None:
    """That the run of exactly this id exists and is not deleted (MLflow's errors if not)."""
    if await _run_deleted(context, run_id):
        raise _not_active(run_id)


async def _experiments(
    context: MlflowContext, ids: list[str] | None = None, names: list[str] | None = None
) -> list[dict[str, Any]]:
    """Experiment rows (deleted ones too), with experiment 0 as MLflow has it when no event
    has made it yet."""
    rows = (
        await ask(context, Query(q="experiments", experiments=ids, names=names, deleted=True, limit=50_000))
    ).rows
    if not any(row["id"] == model.DEFAULT_EXPERIMENT_ID for row in rows):
        default = model.default_experiment()
        if (ids is None or default["id"] in ids) and (names is None or default["name"] in names):
            exists = await ask(context, Query(q="experiments", experiments=[default["id"]], deleted=True))
            if not exists.rows:
                rows.insert(0, default)
    return rows


async def _experiment(context: MlflowContext, experiment_id: str) -> dict[str, Any]:
    rows = await _experiments(context, ids=[experiment_id])
    if not rows:
        raise experiment_not_found(experiment_id)
    return rows[0]


async def _artifact_location(context: MlflowContext, run: dict[str, Any]) -> str:
    experiment_id = model.experiment_id_of(run)
    rows = await _experiments(context, ids=[experiment_id])
    if rows and rows[0].get("artifact_location"):
        return str(rows[0]["artifact_location"])
    return model.default_artifact_location(experiment_id)


async def _latest_metrics(context: MlflowContext, run: dict[str, Any]) -> list[dict[str, Any]]:
    """Each metric's latest value as MLflow defines it (highest step, then timestamp, then
    value), read from the histories; from the summaries (the last logged) past a size."""
    summaries = run.get("metrics") or {}
    if not summaries:
        return []
    if sum(int(s.get("count") or 0) for s in summaries.values()) > EXACT_LATEST_POINTS:
        return model.latest_metrics(summaries)
    return model.latest_from_histories((await ask(context, Query(q="metrics", run=run["id"]))).rows)


async def _run_json(context: MlflowContext, run: dict[str, Any]) -> dict[str, Any]:
    inputs = await _dataset_inputs(context, run["id"])
    location = await _artifact_location(context, run)
    return model.run_json(run, location, await _latest_metrics(context, run), inputs)


# -- experiments ------------------------------------------------------------------------------


def _experiment_event(
    context: MlflowContext, experiment_id: str, exists: bool, **data: Any
) -> dict[str, Any]:
    """An `experiment` event at the context's time; one that makes experiment 0 gives it
    MLflow's name and location."""
    payload = {"experiment": experiment_id, **{k: v for k, v in data.items() if v is not None}}
    if not exists and experiment_id == model.DEFAULT_EXPERIMENT_ID:
        default = model.default_experiment()
        payload.setdefault("name", default["name"])
        payload.setdefault("artifact_location", default["artifact_location"])
    return {"type": "experiment", "ts": context.clock(), "data": payload}


async def _stored(context: MlflowContext, experiment_id: str) -> bool:
    rows = await ask(context, Query(q="experiments", experiments=[experiment_id], deleted=True))
    return bool(rows.rows)


def _check_experiment_name(name: str) -> None:
    if len(name) > MAX_EXPERIMENT_NAME_CHARS:
        raise invalid_value(
            "name", name, f"'name' exceeds the maximum length of {MAX_EXPERIMENT_NAME_CHARS} characters"
        )


async def create_experiment(context: MlflowContext, fields: dict[str, Any]) -> dict[str, Any]:
    name = _text(fields, "name", required=True)
    assert name is not None
    _check_experiment_name(name)
    location = _text(fields, "artifact_location")
    tags = dict(_pairs(fields, "tags"))
    async with context.lock:
        every = await _experiments(context)
        if any(row["name"] == name for row in every):
            raise MlflowError(RESOURCE_ALREADY_EXISTS, f"Experiment(name={name}) already exists.")
        numbers = [int(row["id"]) for row in every if str(row["id"]).isdigit()]
        experiment_id = str(max([0, *numbers]) + 1)
        await append_events(
            context,
            [
                _experiment_event(
                    context,
                    experiment_id,
                    False,
                    name=name,
                    artifact_location=location or model.default_artifact_location(experiment_id),
                    tags=tags or None,
                )
            ],
        )
    return {"experiment_id": experiment_id}


async def get_experiment(context: MlflowContext, fields: dict[str, Any]) -> dict[str, Any]:
    experiment_id = _text(fields, "experiment_id", required=True)
    assert experiment_id is not None
    return {"experiment": model.experiment_json(await _experiment(context, experiment_id))}


async def get_experiment_by_name(context: MlflowContext, fields: dict[str, Any]) -> dict[str, Any]:
    name = _text(fields, "experiment_name", required=True)
    assert name is not None
    rows = await _experiments(context, names=[name])
    if not rows:
        raise MlflowError(RESOURCE_DOES_NOT_EXIST, f"Could not find experiment with name '{name}'")
    return {"experiment": model.experiment_json(rows[0])}


def _view_type(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name) or "ACTIVE_ONLY"
    names = {1: "ACTIVE_ONLY", 2: "DELETED_ONLY", 3: "ALL"}
    value = names.get(value, value) if isinstance(value, int) else str(value).upper()
    if value not in ("ACTIVE_ONLY", "DELETED_ONLY", "ALL"):
        raise invalid_value(name, fields.get(name))
    return value


def _max_results(fields: dict[str, Any], default: int, most: int) -> int:
    value = _integer(fields, "max_results")
    if value is None:
        return default
    if not 0 < value <= most:
        raise invalid_value(
            "max_results", value, f"It must be at most {most}, but got value {value}" if value > 0 else None
        )
    return value


async def search_experiments(context: MlflowContext, fields: dict[str, Any]) -> dict[str, Any]:
    view = _view_type(fields, "view_type")
    limit = _max_results(fields, DEFAULT_SEARCH_EXPERIMENTS, MAX_SEARCH_EXPERIMENTS)
    offset = _offset(fields)
    order = fields.get("order_by") or None
    if order is not None and not isinstance(order, list):
        order = [order]
    matcher = search.experiment_matcher(_text(fields, "filter"))
    sort_key = search.experiment_sort_key(order)
    found = []
    for row in await _experiments(context):
        if view == "ACTIVE_ONLY" and row["lifecycle"] != "active":
            continue
        if view == "DELETED_ONLY" and row["lifecycle"] != "deleted":
            continue
        experiment = model.experiment_json(row)
        if matcher(experiment):
            found.append(experiment)
    for key, descending in reversed(sort_key):
        found.sort(key=lambda e, k=key: _sortable(e.get(k)), reverse=descending)  # type: ignore[misc]
    page = found[offset : offset + limit]
    out: dict[str, Any] = {"experiments": page}
    if offset + limit < len(found):
        out["next_page_token"] = _token(offset + limit)
    return out


def _sortable(value: Any) -> tuple[int, Any]:
    """A sort key that puts numbers (experiment ids too) in numeric order, and None last."""
    if value is None:
        return (2, "")
    if isinstance(value, str) and value.isdigit():
        return (0, int(value))
    if isinstance(value, (int, float)):
        return (0, value)
    return (1, value)


async def update_experiment(context: MlflowContext, fields: dict[str, Any]) -> dict[str, Any]:
    experiment_id = _text(fields, "experiment_id", required=True)
    new_name = _text(fields, "new_name", required=True)
    assert experiment_id is not None and new_name is not None
    _check_experiment_name(new_name)
    async with context.lock:
        experiment = await _experiment(context, experiment_id)
        if experiment["lifecycle"] != "active":
            raise MlflowError(INVALID_STATE, "Cannot rename a non-active experiment.")
        if any(row["name"] == new_name and row["id"] != experiment_id for row in await _experiments(context)):
            raise MlflowError(RESOURCE_ALREADY_EXISTS, f"Experiment(name={new_name}) already exists.")
        exists = await _stored(context, experiment_id)
        await append_events(context, [_experiment_event(context, experiment_id, exists, name=new_name)])
    return {}


async def _set_lifecycle(context: MlflowContext, fields: dict[str, Any], lifecycle: str) -> dict[str, Any]:
    """Delete or restore an experiment, and mark its runs the same (as MLflow's stores do).

    The runs' marks go first, in appends of at most MARKS_PER_APPEND events (an append holds
    at most 10,000), and the experiment's own event last: if a part fails, the experiment
    is as it was and the call can be made again."""
    experiment_id = _text(fields, "experiment_id", required=True)
    assert experiment_id is not None
    async with context.lock:
        experiment = await _experiment(context, experiment_id)
        if lifecycle == "deleted" and experiment["lifecycle"] != "active":
            raise experiment_not_found(experiment_id)
        exists = await _stored(context, experiment_id)
        marked = "deleted = false" if lifecycle == "deleted" else "deleted = true"
        kind = "run.deleted" if lifecycle == "deleted" else "run.restored"
        runs = await _all_runs(context, f"{search.experiments_text([experiment_id])} and {marked}")
        marks = [{"type": kind, "run": run["id"]} for run in runs]
        for start in range(0, len(marks), MARKS_PER_APPEND):
            await append_events(context, marks[start : start + MARKS_PER_APPEND])
        await append_events(context, [_experiment_event(context, experiment_id, exists, lifecycle=lifecycle)])
    return {}


async def delete_experiment(context: MlflowContext, fields: dict[str, Any]) -> dict[str, Any]:
    return await _set_lifecycle(context, fields, "deleted")


async def restore_experiment(context: MlflowContext, fields: dict[str, Any]) -> dict[str, Any]:
    return await _set_lifecycle(context, fields, "active")


async def set_experiment_tag(context: MlflowContext, fields: dict[str, Any]) -> dict[str, Any]:
    experiment_id = _text(fields, "experiment_id", required=True)
    key = _text(fields, "key", required=True)
    assert experiment_id is not None and key is not None
    value = fields.get("value")
    async with context.lock:
        experiment = await _experiment(context, experiment_id)
        _require_active_experiment(experiment)
        exists = await _stored(context, experiment_id)
        await append_events(
            context,
            [
                _experiment_event(
                    context, experiment_id, exists, tags={key: "" if value is None else str(value)}
                )
            ],
        )
    return {}


async def delete_experiment_tag(context: MlflowContext, fields: dict[str, Any]) -> dict[str, Any]:
    experiment_id = _text(fields, "experiment_id", required=True)
    key = _text(fields, "key", required=True)
    assert experiment_id is not None and key is not None
    async with context.lock:
        experiment = await _experiment(context, experiment_id)
        _require_active_experiment(experiment)
        if key not in experiment["tags"]:
            raise MlflowError(
                RESOURCE_DOES_NOT_EXIST, f"No tag with name: {key} in experiment with id {experiment_id}"
            )
        await append_events(context, [_experiment_event(context, experiment_id, True, remove_tags=[key])])
    return {}


def _require_active_experiment(experiment: dict[str, Any]) -> None:
    if experiment["lifecycle"] != "active":
        raise MlflowError(
            INVALID_PARAMETER_VALUE,
            f"The experiment {experiment['id']} must be in the 'active' state. Current state is"
            f" {experiment['lifecycle']}.",
        )


# -- runs ---------------------------------------------------------------------------------------


def _tag_events(
    run_id: str, tags: list[tuple[str, str]], *, start: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The data of a run.started (`start`) or run.updated event setting these MLflow tags:
    the name and note tags set the run's fields, the others are tags with values."""
    data: dict[str, Any] = start if start is not None else {}
    values: dict[str, str] = {}
    for key, value in tags:
        if key == model.RUN_NAME_TAG:
            data["name"] = value
        elif key == model.NOTE_TAG:
            data["notes"] = value
        else:
            values[key] = value
    if values:
        data["tag_values"] = values
    return data


def _check_tags(tags: list[tuple[str, str]], path: str = "tags") -> None:
    for index, (key, value) in enumerate(tags):
        _check_key(key, f"{path}[{index}].key" if path else "key")
        if len(value) > MAX_TAG_VALUE_CHARS:
            raise invalid_value(
                f"{path}[{index}].value" if path else "value",
                value[:100],
                f"'value' exceeds the maximum length of {MAX_TAG_VALUE_CHARS} characters",
            )


async def create_run(context: MlflowContext, fields: dict[str, Any]) -> dict[str, Any]:
    experiment_id = _text(fields, "experiment_id") or model.DEFAULT_EXPERIMENT_ID
    start_time = _integer(fields, "start_time")
    tags = _pairs(fields, "tags")
    _check_tags(tags)
    run_name = _text(fields, "run_name")
    tag_name = dict(tags).get(model.RUN_NAME_TAG)
    if run_name and tag_name and run_name != tag_name:
        raise MlflowError(
            INVALID_PARAMETER_VALUE,
            "Both 'run_name' argument and 'mlflow.runName' tag are specified, but with different values"
            f" (run_name='{run_name}', mlflow.runName='{tag_name}').",
        )
    experiment = await _experiment(context, experiment_id)
    _require_active_experiment(experiment)
    run_id = uuid.uuid4().hex
    data = _tag_events(run_id, tags, start={})
    data["name"] = run_name or tag_name or model.random_run_name()
    data["experiment"] = experiment_id
    user = _text(fields, "user_id") or dict(tags).get(model.USER_TAG)
    if user:
        data["user"] = user
    parent = dict(tags).get(model.PARENT_TAG)
    if parent:
        data["parent"] = parent
    started = model.seconds(start_time) if start_time is not None else context.clock()
    await append_events(context, [{"type": "run.started", "run": run_id, "ts": started, "data": data}])
    return {"run": await _run_json(context, await _run(context, run_id))}


async def get_run(context: MlflowContext, fields: dict[str, Any]) -> dict[str, Any]:
    return {"run": await _run_json(context, await _run(context, _run_id(fields)))}


async def update_run(context: MlflowContext, fields: dict[str, Any]) -> dict[str, Any]:
    run_id = _run_id(fields)
    status = _text(fields, "status")
    end_time = _integer(fields, "end_time")
    run_name = _text(fields, "run_name")
    if status is not None and status not in model.STATUS_FROM_MLFLOW:
        raise invalid_value("status", status)
    await _check_active(context, run_id)
    events: list[dict[str, Any]] = []
    if run_name:
        events.append({"type": "run.updated", "run": run_id, "data": {"name": run_name}})
    if status is not None:
        wanted = model.STATUS_FROM_MLFLOW[status]
        if wanted == "running":
            events.append({"type": "run.updated", "run": run_id, "data": {"status": "running"}})
        else:
            ts = model.seconds(end_time) if end_time is not None else context.clock()
            events.append({"type": "run.finished", "run": run_id, "ts": ts, "data": {"status": wanted}})
    await append_events(context, events)
    run = await _run(context, run_id)
    return {"run_info": model.run_info(run, await _artifact_location(context, run))}


async def delete_run(context: MlflowContext, fields: dict[str, Any]) -> dict[str, Any]:
    run_id = _run_id(fields)
    await _run_deleted(context, run_id)
    await append_events(context, [{"type": "run.deleted", "run": run_id}])
    return {}


async def restore_run(context: MlflowContext, fields: dict[str, Any]) -> dict[str, Any]:
    run_id = _run_id(fields)
    await _run_deleted(context, run_id)
    await append_events(context, [{"type": "run.restored", "run": run_id}])
    return {}


async def _all_runs(context: MlflowContext, filter_text: str) -> list[dict[str, Any]]:
    """Every run matching a tracklog filter, deleted or not, a page at a time."""
    out: list[dict[str, Any]] = []
    while True:
        result = await ask(
            context, Query(q="runs", filter=filter_text, deleted=True, limit=_RUNS_PAGE, offset=len(out))
        )
        out.extend(result.rows)
        if len(result.rows) < _RUNS_PAGE:
            return out


async def search_runs(context: MlflowContext, fields: dict[str, Any]) -> dict[str, Any]:
    ids = fields.get("experiment_ids") or []
    if not isinstance(ids, list):
        ids = [ids]
    ids = [str(i) for i in ids]
    view = _view_type(fields, "run_view_type")
    limit = _max_results(fields, DEFAULT_SEARCH_RUNS, MAX_SEARCH_RUNS)
    offset = _offset(fields)
    order = fields.get("order_by") or None
    if order is not None and not isinstance(order, list):
        order = [order]
    parts = [search.experiments_text(ids)] if ids else ["experiment = 'no experiment asked for'"]
    translated = search.run_filter(_text(fields, "filter"))
    if translated:
        parts.append(f"({translated})")
    if view == "DELETED_ONLY":
        parts.append("deleted = true")
    filter_text = " and ".join(parts)
    order_by = search.run_order(order)
    rows: list[dict[str, Any]] = []
    total = 0
    while len(rows) < limit:
        want = min(_RUNS_PAGE, limit - len(rows))
        result = await ask(
            context,
            Query(
                q="runs",
                filter=filter_text,
                order_by=order_by,
                limit=want,
                offset=offset + len(rows),
                deleted=view != "ACTIVE_ONLY",
            ),
        )
        rows.extend(result.rows)
        total = result.total or 0
        if len(result.rows) < want:
            break
    runs = []
    locations: dict[str, str] = {}
    for row in rows:
        # A `runs` row has the latest value of each metric but not its step and time: the
        # `run` query has them (one more read per run of the page).
        full = await _run(context, row["id"])
        experiment_id = model.experiment_id_of(full)
        if experiment_id not in locations:
            locations[experiment_id] = await _artifact_location(context, full)
        runs.append(
            model.run_json(
                full,
                locations[experiment_id],
                await _latest_metrics(context, full),
                await _dataset_inputs(context, full["id"]),
            )
        )
    out: dict[str, Any] = {"runs": runs} if runs else {}
    if offset + len(rows) < total:
        out["next_page_token"] = _token(offset + len(rows))
    return out


# -- logging ------------------------------------------------------------------------------------


def _metric_events(run_id: str, metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """MLflow metrics as `metrics` events: one per run of metrics sharing a timestamp and a
    step (an event has one time and one step for all its values), in the order logged.

    A batch of 1,000 spends most of its time here, so the common case is cheap: a key is
    checked once per request however many points it has, and a value, timestamp or step
    of the plain JSON type skips the slower parsing (which gives the same error wording)."""
    events: list[dict[str, Any]] = []
    good_keys: set[str] = set()
    values: dict[str, float | str] = {}
    last_ts: float | None = None
    last_step: int | None = None
    for index, metric in enumerate(metrics):
        if not isinstance(metric, dict):
            raise invalid_value(f"metrics[{index}]", metric)
        key = metric.get("key")
        if not isinstance(key, str) or key not in good_keys:
            if not isinstance(key, str) or not key:
                raise missing(f"metrics[{index}].key")
            _check_key(key, f"metrics[{index}].key")
            good_keys.add(key)
        value = metric.get("value")
        if type(value) is not float:
            value = _number(value, f"metrics[{index}].value")
        timestamp = metric.get("timestamp")
        if type(timestamp) is not int:
            timestamp = _integer(metric, "timestamp", required=True)
            assert timestamp is not None
        step = metric.get("step")
        if type(step) is not int:
            step = _integer(metric, "step") or 0
        ts = model.seconds(timestamp)
        if ts == last_ts and step == last_step and key not in values:
            values[key] = _wire_number(value)
        else:
            values = {key: _wire_number(value)}
            events.append(
                {"type": "metrics", "run": run_id, "ts": ts, "data": {"values": values, "step": step}}
            )
            last_ts, last_step = ts, step
    return events


def _wire_number(value: float) -> float | str:
    """A value as the protocol's JSON carries it (NaN and the infinities as strings)."""
    return model.metric_value(value) if not math.isfinite(value) else value


async def _log(
    context: MlflowContext,
    run_id: str,
    metrics: list[dict[str, Any]],
    params: list[tuple[str, str]],
    tags: list[tuple[str, str]],
) -> None:
    """Log metrics, params and tags to a run as MLflow does: limits and names checked first,
    a param that would change refused (INVALID_PARAMETER_VALUE), then one append."""
    for name, count, most in (
        ("metrics", len(metrics), MAX_METRICS_PER_BATCH),
        ("params", len(params), MAX_PARAMS_TAGS_PER_BATCH),
        ("tags", len(tags), MAX_PARAMS_TAGS_PER_BATCH),
    ):
        if count > most:
            raise MlflowError(
                INVALID_PARAMETER_VALUE,
                f"A batch logging request can contain at most {most} {name}. Got {count} {name}."
                f" Please split up {name} across multiple requests and try again.",
            )
    for index, (key, value) in enumerate(params):
        _check_key(key, f"params[{index}].key")
        if len(value) > MAX_PARAM_VALUE_CHARS:
            raise invalid_value(
                f"params[{index}].value",
                value[:100],
                f"'value' exceeds the maximum length of {MAX_PARAM_VALUE_CHARS} characters",
            )
    _check_tags(tags)
    given: dict[str, str] = {}
    for key, value in params:
        if given.get(key, value) != value:
            dupes = sorted({k for k, _ in params if sum(1 for q, _ in params if q == k) > 1})
            raise MlflowError(
                INVALID_PARAMETER_VALUE,
                f"Duplicate parameter keys have been submitted: {dupes}. Please ensure the request"
                " contains only one param value per param key.",
            )
        given[key] = value
    events = _metric_events(run_id, metrics)
    if tags:
        events.append({"type": "run.updated", "run": run_id, "data": _tag_events(run_id, tags)})
    if not params:
        await _check_active(context, run_id)
        await append_events(context, events)
        return
    async with context.lock:
        run = await _active_run(context, run_id)
        logged = model.params_of(run.get("config") or {})
        changed = [
            {"key": k, "old_value": logged[k], "new_value": v}
            for k, v in given.items()
            if k in logged and logged[k] != v
        ]
        if changed:
            if len(params) == 1:
                key, value = params[0]
                message = (
                    f"Changing param values is not allowed. Param with key='{key}' was already logged with"
                    f" value='{logged[key]}' for run ID='{run_id}'. Attempted logging new value '{value}'."
                )
            else:
                message = (
                    f"Changing param values is not allowed. Params were already logged='{changed}'"
                    f" for run ID='{run_id}'."
                )
            raise MlflowError(INVALID_PARAMETER_VALUE, message)
        new = {k: v for k, v in given.items() if k not in logged}
        if new:
            events.append({"type": "run.updated", "run": run_id, "data": {"config": new}})
        await append_events(context, events)


async def log_metric(context: MlflowContext, fields: dict[str, Any]) -> dict[str, Any]:
    run_id = _run_id(fields)
    if fields.get("key") in (None, ""):
        raise missing("key")
    if fields.get("value") is None:
        raise missing("value")
    if fields.get("timestamp") in (None, ""):
        raise missing("timestamp")
    metric = {k: fields.get(k) for k in ("key", "value", "timestamp", "step")}
    try:
        await _log(context, run_id, [metric], [], [])
    except MlflowError as exc:
        exc.message = exc.message.replace("metrics[0].", "")
        raise
    return {}


async def log_param(context: MlflowContext, fields: dict[str, Any]) -> dict[str, Any]:
    run_id = _run_id(fields)
    key = _text(fields, "key", required=True)
    assert key is not None
    value = fields.get("value")
    await _log(context, run_id, [], [(key, "" if value is None else str(value))], [])
    return {}


async def set_tag(context: MlflowContext, fields: dict[str, Any]) -> dict[str, Any]:
    run_id = _run_id(fields)
    key = _text(fields, "key", required=True)
    assert key is not None
    value = fields.get("value")
    await _log(context, run_id, [], [], [(key, "" if value is None else str(value))])
    return {}


async def delete_tag(context: MlflowContext, fields: dict[str, Any]) -> dict[str, Any]:
    run_id = _run_id(fields)
    key = _text(fields, "key", required=True)
    assert key is not None
    run = await _active_run(context, run_id)
    if key not in model.run_tags(run):
        raise MlflowError(RESOURCE_DOES_NOT_EXIST, f"No tag with name: {key} in run with id {run_id}")
    if key == model.RUN_NAME_TAG:
        data: dict[str, Any] = {"name": ""}
    elif key == model.NOTE_TAG:
        data = {"notes": ""}
    else:
        data = {"remove_tags": [key]}
    await append_events(context, [{"type": "run.updated", "run": run_id, "data": data}])
    return {}


async def log_batch(context: MlflowContext, fields: dict[str, Any]) -> dict[str, Any]:
    run_id = _run_id(fields)
    metrics = fields.get("metrics") or []
    if not isinstance(metrics, list):
        raise invalid_value("metrics", metrics)
    await _log(context, run_id, metrics, _pairs(fields, "params"), _pairs(fields, "tags"))
    return {}


#: The item stage that holds a run's MLflow dataset inputs.
DATASET_STAGE: Final = "mlflow.inputs"


async def log_inputs(context: MlflowContext, fields: dict[str, Any]) -> dict[str, Any]:
    """Dataset inputs become items of the run (stage `mlflow.inputs`, kind `dataset`)."""
    run_id = _run_id(fields)
    datasets = fields.get("datasets") or []
    if not isinstance(datasets, list):
        raise invalid_value("datasets", datasets)
    await _check_active(context, run_id)
    events = []
    for index, entry in enumerate(datasets):
        dataset = entry.get("dataset") if isinstance(entry, dict) else None
        if not isinstance(dataset, dict) or not dataset.get("name") or not dataset.get("digest"):
            raise invalid_value(f"datasets[{index}].dataset", dataset)
        item = f"{dataset['name']}:{dataset['digest']}"
        events.append(
            {
                "type": "item",
                "run": run_id,
                "data": {
                    "item": item,
                    "kind": "dataset",
                    "stage": DATASET_STAGE,
                    "data": {"dataset": dataset, "tags": entry.get("tags") or []},
                },
            }
        )
    await append_events(context, events)
    return {}


async def _dataset_inputs(context: MlflowContext, run_id: str) -> list[dict[str, Any]]:
    rows = (await ask(context, Query(q="items", run=run_id, stage=DATASET_STAGE, limit=10_000))).rows
    seen: dict[str, dict[str, Any]] = {}
    for row in rows:  # the same dataset logged twice is one input, as in MLflow
        data = row.get("data") or {}
        if isinstance(data, dict) and "dataset" in data:
            entry: dict[str, Any] = {"dataset": data["dataset"]}
            if data.get("tags"):
                entry["tags"] = data["tags"]
            seen.setdefault(str(row.get("item")), entry)
    return list(seen.values())


async def get_metric_history(context: MlflowContext, fields: dict[str, Any]) -> dict[str, Any]:
    run_id = _run_id(fields)
    key = _text(fields, "metric_key", required=True)
    assert key is not None
    max_results = _integer(fields, "max_results")
    if max_results is not None and max_results <= 0:
        raise MlflowError(
            INVALID_PARAMETER_VALUE,
            f"Invalid value {max_results} for parameter 'max_results' supplied."
            " It must be a positive integer.",
        )
    offset = _offset(fields)
    points = await _history(context, run_id, key)
    end = len(points) if max_results is None else offset + max_results
    out: dict[str, Any] = {}
    page = points[offset:end]
    if page:
        out["metrics"] = page
    if end < len(points):
        out["next_page_token"] = _token(end)
    return out


async def _history(context: MlflowContext, run_id: str, key: str) -> list[dict[str, Any]]:
    """Every point of a metric, in logging order, as MLflow's Metric (none when not logged)."""
    run = await _run(context, run_id)
    if key not in (run.get("metrics") or {}):
        return []
    try:
        result = await context.readers.query(Query(q="metrics", run=run_id, names=[key]))
    except tl_errors.NotFound:
        return []
    series = result.rows[0]
    return [
        {"key": key, "value": model.metric_value(float(v)), "timestamp": model.millis(ts), "step": step}
        for step, v, ts in zip(series["steps"], series["values"], series["ts"], strict=True)
    ]


async def get_metric_history_bulk_interval(context: MlflowContext, fields: dict[str, Any]) -> dict[str, Any]:
    """The UI's bulk history: points of one metric for up to 100 runs, in a step range."""
    run_ids = fields.get("run_ids") or fields.get("run_id") or []
    if not isinstance(run_ids, list):
        run_ids = [run_ids]
    if not run_ids:
        raise MlflowError(
            INVALID_PARAMETER_VALUE, "GetMetricHistoryBulkInterval request must specify at least one run_id."
        )
    if len(run_ids) > 100:
        raise MlflowError(
            INVALID_PARAMETER_VALUE,
            "GetMetricHistoryBulkInterval request cannot specify more than 100 run_ids."
            f" Received {len(run_ids)} run_ids.",
        )
    key = _text(fields, "metric_key", required=True)
    assert key is not None
    start = _integer(fields, "start_step")
    end = _integer(fields, "end_step")
    max_results = min(_integer(fields, "max_results") or 25_000, 25_000)
    out = []
    for run_id in sorted(str(r) for r in run_ids):
        for point in await _history(context, run_id, key):
            if (start is None or point["step"] >= start) and (end is None or point["step"] <= end):
                out.append({**point, "run_id": run_id})
    return {"metrics": out[:max_results]} if out else {}


async def search_logged_models(context: MlflowContext, fields: dict[str, Any]) -> dict[str, Any]:
    """MLflow 3's logged models: tracklog keeps none, so a search finds none (the client asks
    when it lists a run's artifacts)."""
    return {}


ROUTES: Final[dict[str, dict[str, Handler]]] = {
    "experiments/create": {"POST": create_experiment},
    "experiments/get": {"GET": get_experiment},
    "experiments/get-by-name": {"GET": get_experiment_by_name},
    "experiments/search": {"POST": search_experiments, "GET": search_experiments},
    "experiments/update": {"POST": update_experiment},
    "experiments/delete": {"POST": delete_experiment},
    "experiments/restore": {"POST": restore_experiment},
    "experiments/set-experiment-tag": {"POST": set_experiment_tag},
    "experiments/delete-experiment-tag": {"POST": delete_experiment_tag},
    "runs/create": {"POST": create_run},
    "runs/get": {"GET": get_run},
    "runs/update": {"POST": update_run},
    "runs/delete": {"POST": delete_run},
    "runs/restore": {"POST": restore_run},
    "runs/search": {"POST": search_runs, "GET": search_runs},
    "runs/log-metric": {"POST": log_metric},
    "runs/log-parameter": {"POST": log_param},
    "runs/log-batch": {"POST": log_batch},
    "runs/set-tag": {"POST": set_tag},
    "runs/delete-tag": {"POST": delete_tag},
    "runs/log-inputs": {"POST": log_inputs},
    "metrics/get-history": {"GET": get_metric_history},
    "metrics/get-history-bulk-interval": {"GET": get_metric_history_bulk_interval},
    "logged-models/search": {"POST": search_logged_models},
}
