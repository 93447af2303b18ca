"""The `sql` query on a reader's connection: read-only, bounded, and the connection is
left as it was for the next query."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tracklog.daemon.queries import answer
from tracklog.daemon.storage.sqlite import sql as sqlquery
from tracklog.daemon.storage.sqlite.connect import connect
from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog
from tracklog.daemon.storage.sqlite.readmodel import SqliteReadModel
from tracklog.protocol import errors
from tracklog.protocol import events as ev
from tracklog.protocol.messages import Query


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    store = SqliteEventLog(tmp_path / "t.db")
    store.catch_up()
    store.append_events([ev.RunStarted(run=f"r-{i}", data=ev.RunStartedData(name=f"n{i}")) for i in range(5)])
    store.close()
    reader = connect(tmp_path / "t.db", readonly=True)
    try:
        yield reader
    finally:
        reader.close()


def sql(conn: sqlite3.Connection, statement: str, limit: int | None = None) -> dict[str, object]:
    [row] = answer(SqliteReadModel(conn), Query(q="sql", sql=statement, limit=limit)).rows
    return row


def test_rows_come_in_column_order_with_a_limit(conn: sqlite3.Connection) -> None:
    assert sql(conn, "SELECT name, run FROM runs ORDER BY run", limit=2) == {
        "columns": ["name", "run"],
        "rows": [["n0", "r-0"], ["n1", "r-1"]],
        "more": True,
    }
    assert sql(conn, "SELECT count(*) FROM runs")["more"] is False


def test_a_statement_past_the_time_limit_is_interrupted_and_the_connection_still_answers(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlquery, "SQL_TIME_LIMIT", 0.05)
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    with pytest.raises(errors.BadQuery, match="interrupted"):
        sql(conn, endless)
    with pytest.raises(errors.BadQuery, match="not authorized"):
        sql(conn, "DELETE FROM runs")
    # authorizer, progress handler and length limit are put back: other queries work as before
    assert len(answer(SqliteReadModel(conn), Query(q="runs")).rows) == 5
    assert conn.execute("SELECT length(zeroblob(20000000))").fetchone() == (20_000_000,)


def test_a_value_larger_than_the_cap_is_refused(conn: sqlite3.Connection) -> None:
    with pytest.raises(errors.BadQuery, match="too big"):
        sql(conn, "SELECT zeroblob(100000000)")
