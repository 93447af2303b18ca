"""Projections: pure functions from one logged event to the row changes it causes.

Nothing here touches a database. Live ingest, catch-up at start, `rebuild`, `verify`
and `replay` all call `project` and hand the changes to `tables.Tables`, so the same
code decides what every table holds however the event reached it.
"""

from __future__ import annotations

from typing import Any, Final, cast

import msgspec
from msgspec import Struct

from tracklog.protocol import events as ev


class LoggedEvent(Struct, gc=False):
    """An event as the log holds it, with `data` decoded into its typed struct."""

    seq: int
    type: str
    run: str | None
    ts: float
    recorded: float
    data: ev.Data
    id: str | None = None


class Change(Struct, gc=False):
    """Base of row changes."""


class TouchRun(Change):
    """Any run-scoped event: create the run if new (status running), count the event."""

    run: str
    seq: int
    ts: float


class SetRunFields(Change):
    run: str
    fields: dict[str, Any]


class MergeConfig(Change):
    run: str
    config: dict[str, Any]


class ChangeTags(Change):
    run: str
    add: list[str]
    remove: list[str]


class SetTagValues(Change):
    """Tags with a value: added, or their value replaced."""

    run: str
    values: dict[str, str]


class ApplyExperiment(Change):
    """Create an experiment or change the fields the event gives (`experiment` events)."""

    seq: int
    ts: float
    experiment: ev.ExperimentData


class FinishRun(Change):
    run: str
    status: str
    error: str | None
    finished: float


class ResumeRun(Change):
    run: str


class AddPoints(Change):
    run: str
    ts: float
    values: dict[str, float]
    step: int | None
    epoch: int | None


class AddItem(Change):
    seq: int
    run: str
    ts: float
    item: ev.ItemData


class AddArtifact(Change):
    seq: int
    run: str
    ts: float
    artifact: ev.ArtifactData


class PutCache(Change):
    key: str
    value: bytes
    expires_at: float | None
    seq: int


class DropCache(Change):
    key: str | None


class AddDedupEntry(Change):
    seq: int
    run: str | None
    entry: ev.DedupRecordedData


class ClearDedup(Change):
    namespace: str
    kind: str | None


AnyChange = (
    TouchRun
    | SetRunFields
    | MergeConfig
    | ChangeTags
    | SetTagValues
    | ApplyExperiment
    | FinishRun
    | ResumeRun
    | AddPoints
    | AddItem
    | AddArtifact
    | PutCache
    | DropCache
    | AddDedupEntry
    | ClearDedup
)

_encode_value = msgspec.msgpack.Encoder().encode
_RUN_FIELDS: Final = ("name", "pipeline", "notes", "parent", "user", "host", "session", "experiment")


def metric_values(data: ev.MetricsData) -> dict[str, float]:
    """A logged metrics event's values, typed as the floats they are.

    On the wire a value may be one of the strings "NaN", "Infinity", "-Infinity", so the
    field is typed `float | NonFinite`; check_event turns those into floats in place before
    an event is logged, so every value read back from the log is a float. No copy: this
    is on the hot path of ingest."""
    return cast("dict[str, float]", data.values)


def project(event: LoggedEvent) -> list[AnyChange]:
    """The row changes one event causes, in the order they apply."""
    data = event.data
    changes: list[AnyChange] = []
    run = event.run
    if data.__class__ is ev.EmptyData:
        # `run.deleted` / `run.restored` only flip the mark: the run's status, counts and
        # last activity stay as they were, and a run that does not exist is not made.
        assert run is not None
        return [SetRunFields(run, {"deleted": 1 if event.type == "run.deleted" else 0})]
    if run is not None:
        changes.append(TouchRun(run, event.seq, event.ts))
    match data:
        case ev.MetricsData():
            assert run is not None
            changes.append(AddPoints(run, event.ts, metric_values(data), data.step, data.epoch))
        case ev.ItemData():
            assert run is not None
            changes.append(AddItem(event.seq, run, event.ts, data))
        case ev.RunStartedData():
            assert run is not None
            fields: dict[str, Any] = {
                name: value for name in _RUN_FIELDS if (value := getattr(data, name)) is not None
            }
            fields["started"] = event.ts
            changes.append(SetRunFields(run, fields))
            if data.config:
                changes.append(MergeConfig(run, data.config))
            if data.tags:
                changes.append(ChangeTags(run, list(data.tags), []))
            if data.tag_values:
                changes.append(SetTagValues(run, dict(data.tag_values)))
        case ev.RunUpdatedData():
            assert run is not None
            fields = {name: value for name in ("name", "notes") if (value := getattr(data, name)) is not None}
            if fields:
                changes.append(SetRunFields(run, fields))
            if data.config:
                changes.append(MergeConfig(run, data.config))
            if data.add_tags or data.remove_tags:
                changes.append(ChangeTags(run, list(data.add_tags or ()), list(data.remove_tags or ())))
            if data.tag_values:
                changes.append(SetTagValues(run, dict(data.tag_values)))
            if data.status == "running":
                changes.append(ResumeRun(run))
        case ev.RunFinishedData():
            assert run is not None
            changes.append(FinishRun(run, data.status, data.error, event.ts))
        case ev.ArtifactData():
            assert run is not None
            changes.append(AddArtifact(event.seq, run, event.ts, data))
        case ev.CachePutData():
            # Expiry counts from the daemon's clock, so a skewed client cannot make an
            # entry live forever or die at once.
            expires = None if data.ttl is None else event.recorded + data.ttl
            changes.append(PutCache(data.key, _encode_value(data.value), expires, event.seq))
        case ev.CacheInvalidatedData():
            changes.append(DropCache(data.key))
        case ev.DedupRecordedData():
            changes.append(AddDedupEntry(event.seq, run, data))
        case ev.DedupClearedData():
            changes.append(ClearDedup(data.namespace, data.kind))
        case ev.ExperimentData():
            changes.append(ApplyExperiment(event.seq, event.ts, data))
        case _:
            raise TypeError(f"no projection for {type(data).__name__}")
    return changes


# -- the full-text index ----------------------------------------------------------------

#: Characters of text one search document holds at most: enough to find it by.
MAX_SEARCH_TEXT: Final = 20_000


def _texts(value: Any, out: list[str], budget: list[int], depth: int = 0) -> None:
    """Collect the strings inside a free-form value (keys of maps too), up to a budget."""
    if budget[0] <= 0 or depth > 64:
        return
    if isinstance(value, str):
        out.append(value[: budget[0]])
        budget[0] -= len(out[-1])
    elif isinstance(value, dict):
        for key, item in value.items():
            _texts(key, out, budget, depth + 1)
            _texts(item, out, budget, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _texts(item, out, budget, depth + 1)


def item_search_document(item: ev.ItemData) -> tuple[str, str]:
    """(title, body) of an item's search document: its id and kind; its stage, text data, error."""
    title = " ".join(t for t in (item.kind, item.item) if t)
    body: list[str] = [t for t in (item.stage, item.status, item.path, item.model, item.error) if t]
    _texts(item.data, body, [MAX_SEARCH_TEXT])
    return title, " ".join(body)[:MAX_SEARCH_TEXT]


def artifact_search_document(artifact: ev.ArtifactData) -> tuple[str, str]:
    """(title, body) of an artifact's search document: its title (from metadata) and kind; its path."""
    meta = artifact.metadata or {}
    title = " ".join(str(t) for t in (meta.get("title"), meta.get("name"), artifact.kind) if t)
    body: list[str] = [artifact.path]
    _texts(meta, body, [MAX_SEARCH_TEXT])
    return title, " ".join(body)[:MAX_SEARCH_TEXT]


def run_search_document(
    name: str | None, notes: str | None, pipeline: str | None, tags: list[str]
) -> tuple[str, str]:
    """(title, body) of a run's search document: its name; its notes, pipeline and tags."""
    body = [t for t in (notes, pipeline) if t]
    body.extend(tags)
    return name or "", " ".join(body)[:MAX_SEARCH_TEXT]
