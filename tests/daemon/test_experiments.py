"""Experiments and tags with values: from events through the writer to the tables, the
`runs`, `run` and `experiments` queries, the filter grammar, and a rebuild to the same rows."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tracklog.daemon import projections as p
from tracklog.daemon.queries import answer
from tracklog.daemon.storage import SqliteBackend
from tracklog.daemon.storage.eventlog import AppendResult
from tracklog.daemon.storage.readmodel import open_read_model
from tracklog.daemon.writer import Writer
from tracklog.protocol import events as ev
from tracklog.protocol.messages import Append, Query

WAIT = 30.0


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[Writer]:
    w = Writer(SqliteBackend(tmp_path / "x.db"))
    await w.start()
    try:
        yield w
    finally:
        await w.stop()


async def append(writer: Writer, *events: dict[str, Any]) -> AppendResult:
    decoded = msgspec.convert(list(events), list[ev.AnyEvent])
    result = await asyncio.wait_for(await writer.submit(Append(events=decoded)), WAIT)  # type: ignore[arg-type]
    assert isinstance(result, AppendResult), result
    assert result.ack.accepted == len(events) and not result.ack.rejected, result.ack
    return result


def ask(db: Path, **query: Any) -> list[Any]:
    model = open_read_model(str(db))
    try:
        return answer(model, Query(**query)).rows
    finally:
        model.close()


def test_an_experiment_event_projects_to_apply_experiment_and_is_not_run_scoped() -> None:
    data = ev.ExperimentData(experiment="1", name="base", tags={"team": "nlp"})
    event = p.LoggedEvent(seq=3, type="experiment", run=None, ts=10.0, recorded=10.0, data=data)
    assert p.project(event) == [p.ApplyExperiment(3, 10.0, data)]
    checked = ev.check_event(ev.Experiment(run="r", data=data))
    assert checked.run is None


def test_run_started_with_an_experiment_and_tag_values_sets_them() -> None:
    data = ev.RunStartedData(experiment="1", tags=["a"], tag_values={"k": "v"})
    event = p.LoggedEvent(seq=1, type="run.started", run="r", ts=5.0, recorded=5.0, data=data)
    changes = p.project(event)
    assert p.SetRunFields("r", {"experiment": "1", "started": 5.0}) in changes
    assert p.ChangeTags("r", ["a"], []) in changes
    assert p.SetTagValues("r", {"k": "v"}) in changes


def test_a_tag_value_with_a_control_character_in_its_name_is_refused() -> None:
    with pytest.raises(ev.InvalidEvent, match="tag_values"):
        ev.check_event(ev.RunUpdated(run="r", data=ev.RunUpdatedData(tag_values={"a\x01": "v"})))


async def test_experiments_runs_and_tag_values_reach_every_query(writer: Writer, tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    await append(
        writer,
        {"type": "experiment", "ts": 1.0, "data": {"experiment": "1", "name": "base", "tags": {"a": "1"}}},
        {"type": "experiment", "ts": 2.0, "data": {"experiment": "2", "artifact_location": "/x"}},
        {"type": "run.started", "run": "r1", "data": {"experiment": "1", "tag_values": {"k": "v"}}},
        {"type": "run.started", "run": "r2", "data": {"experiment": "2", "tags": ["plain"]}},
        {"type": "run.started", "run": "r3", "data": {"name": "loose"}},
    )
    await append(
        writer,
        {"type": "experiment", "ts": 3.0, "data": {"experiment": "1", "name": "renamed", "tags": {"b": "2"}}},
        {"type": "experiment", "ts": 4.0, "data": {"experiment": "2", "lifecycle": "deleted"}},
        {"type": "run.updated", "run": "r1", "data": {"tag_values": {"k": "w", "m": "x"}, "remove_tags": []}},
        {"type": "run.updated", "run": "r2", "data": {"tag_values": {"plain": "now"}}},
    )
    one, two = ask(db, q="experiments", deleted=True)
    assert one["id"] == "1" and one["name"] == "renamed" and one["lifecycle"] == "active"
    assert one["tags"] == {"a": "1", "b": "2"} and one["runs"] == 1
    assert one["created"] == 1.0 and one["updated"] == 3.0
    assert two["name"] == "2" and two["lifecycle"] == "deleted" and two["artifact_location"] == "/x"
    assert [e["id"] for e in ask(db, q="experiments")] == ["1"]  # deleted ones only when asked
    assert [e["id"] for e in ask(db, q="experiments", names=["renamed"], deleted=True)] == ["1"]
    assert [e["id"] for e in ask(db, q="experiments", experiments=["2"], deleted=True)] == ["2"]

    (run,) = ask(db, q="run", run="r1")
    assert (
        run["experiment"] == "1" and run["tags"] == ["k", "m"] and run["tag_values"] == {"k": "w", "m": "x"}
    )
    runs = {r["id"]: r for r in ask(db, q="runs")}
    assert runs["r2"]["tags"] == ["plain"] and runs["r2"]["tag_values"] == {"plain": "now"}
    assert runs["r3"]["experiment"] is None and runs["r3"]["tag_values"] == {}
    assert [r["id"] for r in ask(db, q="runs", filter="experiment_name = 'renamed'")] == ["r1"]
    assert [r["id"] for r in ask(db, q="runs", filter="tags.k = 'w'")] == ["r1"]
    assert [r["id"] for r in ask(db, q="runs", filter="experiment = null")] == ["r3"]

    await append(writer, {"type": "run.updated", "run": "r1", "data": {"remove_tags": ["k"]}})
    assert ask(db, q="run", run="r1")[0]["tag_values"] == {"m": "x"}
    # A rebuild from the log gives the same rows (verify compares experiments and tags too).
    out = io.StringIO()
    log = SqliteBackend(db).open_log()
    try:
        assert log.verify(out) == 0, out.getvalue()
    finally:
        log.close()
