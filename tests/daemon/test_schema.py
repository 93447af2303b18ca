"""The DDL is run statement by statement inside the rebuild's transaction."""

from __future__ import annotations

import sqlite3

from tracklog.daemon.storage.sqlcommon.schema import PROJECTION_DDL, PROJECTION_TABLES
from tracklog.daemon.storage.sqlite.connect import ddl_statements


def test_a_semicolon_inside_a_comment_does_not_cut_a_statement() -> None:
    script = (
        "-- first; with a semicolon\nCREATE TABLE a (x INTEGER);\n"
        "-- and; another\nCREATE INDEX a_x ON a(x);\n"
    )
    statements = ddl_statements(script)
    assert len(statements) == 2
    conn = sqlite3.connect(":memory:")
    for statement in statements:
        conn.execute(statement)
    assert conn.execute("SELECT name FROM sqlite_master ORDER BY name").fetchall() == [("a",), ("a_x",)]
    conn.close()


def test_the_projection_ddl_creates_every_projection_table() -> None:
    conn = sqlite3.connect(":memory:")
    for statement in ddl_statements(PROJECTION_DDL):
        conn.execute(statement)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert set(PROJECTION_TABLES) <= names


def test_a_database_missing_only_the_full_text_index_is_rebuilt_at_start(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog
    from tracklog.protocol.events import RunStarted, RunStartedData

    store = SqliteEventLog(tmp_path / "t.db")
    store.catch_up()
    store.append_events([RunStarted(run="r", data=RunStartedData(name="findable words"))])
    store.conn.execute("DROP TABLE search")
    assert store.catch_up() == 1
    assert store.conn.execute("SELECT count(*) FROM search WHERE search MATCH 'findable'").fetchone()[0] == 1
    store.close()
