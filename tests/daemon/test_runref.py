"""Run references (an id, a unique id prefix, a name) and deleting / restoring runs, on a
real store: every run-taking query resolves the same way, and a deletion keeps status."""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tracklog.daemon import commands
from tracklog.daemon.queries import answer
from tracklog.daemon.storage.eventlog import AppendResult
from tracklog.daemon.storage.sqlite.connect import connect
from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog
from tracklog.daemon.storage.sqlite.readmodel import SqliteReadModel
from tracklog.protocol import errors
from tracklog.protocol.messages import Append, Codec, Query

CODEC = Codec()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteEventLog]:
    s = SqliteEventLog(tmp_path / "t.db", clock=lambda: 1_000_000_000.0)
    s.catch_up()
    try:
        yield s
    finally:
        s.close()


def append(store: SqliteEventLog, events: Sequence[dict[str, Any]]) -> None:
    msg = CODEC.decode(json.dumps({"op": "append", "events": list(events)}))
    assert isinstance(msg, Append) and not msg.rejected
    for result in store.append_group([msg]):
        assert isinstance(result, AppendResult), result


def ask(store: SqliteEventLog, q: str, **args: Any) -> list[Any]:
    conn: sqlite3.Connection = connect(store.path, readonly=True)
    try:
        return list(answer(SqliteReadModel(conn), Query(q=q, **args)).rows)
    finally:
        conn.close()


def started(run: str, name: str | None = None, **data: Any) -> dict[str, Any]:
    return {"type": "run.started", "run": run, "data": {"name": name, **data} if name else data}


@pytest.fixture
def runs(store: SqliteEventLog) -> SqliteEventLog:
    append(
        store,
        [
            started("0190aaaa-0001", "baseline"),
            {"type": "metrics", "run": "0190aaaa-0001", "data": {"values": {"loss": 0.5}}},
            started("0190aaaa-0002", "tuned"),
            {"type": "metrics", "run": "0190aaaa-0002", "data": {"values": {"loss": 0.3}}},
            started("0190bbbb-0003", "baseline"),
            {"type": "metrics", "run": "0190bbbb-0003", "data": {"values": {"loss": 0.4}}},
            {"type": "item", "run": "0190bbbb-0003", "data": {"item": "i-1"}},
        ],
    )
    return store


# -- references ---------------------------------------------------------------------------


def test_a_unique_id_prefix_names_its_run_in_every_run_taking_query(runs: SqliteEventLog) -> None:
    assert ask(runs, "run", run="0190b")[0]["id"] == "0190bbbb-0003"
    assert ask(runs, "metrics", run="0190aaaa-0002")[0]["run"] == "0190aaaa-0002"
    assert ask(runs, "metrics", run="0190b")[0]["run"] == "0190bbbb-0003"
    assert [i["item"] for i in ask(runs, "items", run="0190bb")] == ["i-1"]
    assert ask(runs, "artifacts", run="0190bbbb") == []
    assert {r["run"] for r in ask(runs, "compare", runs=["0190b", "tuned"])} == {
        "0190bbbb-0003",
        "0190aaaa-0002",
    }


def test_a_name_names_the_latest_run_with_it_and_says_how_many_share_it(runs: SqliteEventLog) -> None:
    assert ask(runs, "run", run="baseline")[0]["id"] == "0190bbbb-0003"
    [resolved] = ask(runs, "resolve", run="baseline")
    assert resolved == {
        "ref": "baseline",
        "id": "0190bbbb-0003",
        "name": "baseline",
        "deleted": False,
        "by": "name",
        "same_name": 2,
    }
    assert ask(runs, "resolve", run="0190aaaa-0001")[0]["by"] == "id"
    assert ask(runs, "resolve", run="0190b")[0]["by"] == "prefix"


def test_an_ambiguous_prefix_is_bad_query_listing_the_candidates(runs: SqliteEventLog) -> None:
    with pytest.raises(errors.BadQuery, match="'0190a' is ambiguous") as caught:
        ask(runs, "metrics", run="0190a")
    assert "0190aaaa-0001 (baseline)" in caught.value.message
    assert "0190aaaa-0002 (tuned)" in caught.value.message


def test_an_unknown_reference_is_not_found(runs: SqliteEventLog) -> None:
    with pytest.raises(errors.NotFound, match="no run 'zzz'"):
        ask(runs, "run", run="zzz")
    with pytest.raises(errors.NotFound, match="no run 'zzz'"):
        ask(runs, "items", run="zzz")


def test_a_name_that_is_also_a_prefix_of_another_id_is_ambiguous(store: SqliteEventLog) -> None:
    append(store, [started("abc-1"), started("zzz-9", "abc")])
    with pytest.raises(errors.BadQuery, match=r"ambiguous.*abc-1"):
        ask(store, "run", run="abc")


# -- delete and restore --------------------------------------------------------------------


def test_a_deleted_run_is_left_out_of_queries_unless_asked_for(runs: SqliteEventLog) -> None:
    append(runs, [{"type": "run.deleted", "run": "0190aaaa-0002"}])
    assert [r["id"] for r in ask(runs, "runs")] == ["0190aaaa-0001", "0190bbbb-0003"]
    assert len(ask(runs, "runs", deleted=True)) == 3
    assert ask(runs, "best", metric="loss")[0]["run"] == "0190bbbb-0003"
    assert ask(runs, "best", metric="loss", deleted=True)[0]["run"] == "0190aaaa-0002"
    assert [r["run"] for r in ask(runs, "search", text="tuned")] == []
    assert [r["run"] for r in ask(runs, "search", text="tuned", deleted=True)] == ["0190aaaa-0002"]
    assert ask(runs, "stats")[0]["runs"] == 2
    assert ask(runs, "stats", deleted=True)[0]["runs"] == 3
    with pytest.raises(errors.NotFound, match="is deleted; ask with deleted=true"):
        ask(runs, "compare", runs=["tuned", "baseline"])
    assert len(ask(runs, "compare", runs=["tuned", "baseline"], deleted=True)) == 2
    assert ask(runs, "run", run="tuned")[0]["deleted"] is True  # still shown when named


def test_deleting_and_restoring_a_lost_run_keeps_it_lost_with_its_counts(runs: SqliteEventLog) -> None:
    run = "0190aaaa-0001"
    append(runs, [{"type": "run.finished", "run": run, "data": {"status": "lost"}}])
    before = ask(runs, "run", run=run)[0]
    append(runs, [{"type": "run.deleted", "run": run}])
    append(runs, [{"type": "run.restored", "run": run}])
    after = ask(runs, "run", run=run)[0]
    assert after["status"] == "lost"
    assert {k: v for k, v in after.items() if k != "deleted"} == {
        k: v for k, v in before.items() if k != "deleted"
    }
    types = [e.type for e in ask(runs, "events", run=run)]
    assert types[-2:] == ["run.deleted", "run.restored"]  # no run.updated {status: running} slipped in


def test_deleting_an_unknown_run_makes_no_run(store: SqliteEventLog) -> None:
    append(store, [{"type": "run.deleted", "run": "ghost"}])
    assert ask(store, "runs", deleted=True) == []


def test_rebuild_after_deletes_and_restores_verifies_equal(runs: SqliteEventLog) -> None:
    append(
        runs,
        [{"type": "run.deleted", "run": "0190aaaa-0001"}, {"type": "run.deleted", "run": "0190bbbb-0003"}],
    )
    append(runs, [{"type": "run.restored", "run": "0190bbbb-0003"}])
    out = io.StringIO()
    assert commands.verify(runs.path, out) == 0, out.getvalue()
