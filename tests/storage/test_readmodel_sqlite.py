"""The ReadModel behaviours on SQLite, and what only the SQLite backend does: the `sql`
question, `sqlite:///` URLs, and sqlite3's errors kept inside the storage package."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tracklog.daemon.queries import answer
from tracklog.daemon.storage.eventlog import AppendResult, EventLog
from tracklog.daemon.storage.readmodel import ReadModel, open_read_model
from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog
from tracklog.daemon.storage.sqlite.readmodel import SqliteReadModel, sqlite_path
from tracklog.protocol import errors
from tracklog.protocol.messages import Append, Codec, Query

from .readmodel_suite import EVENTS, RECORDED, ReadModelSuite

CODEC = Codec()


def fill(store: EventLog, events: list[dict[str, Any]]) -> None:
    """Append events to a fresh log, one per group, as the daemon's writer does; then close it."""
    try:
        store.catch_up()
        for event in events:
            msg = CODEC.decode(json.dumps({"op": "append", "events": [event]}))
            assert isinstance(msg, Append) and not msg.rejected, msg
            for result in store.append_group([msg]):
                assert isinstance(result, AppendResult), result
    finally:
        store.close()


def build_sqlite(path: Path, events: list[dict[str, Any]]) -> None:
    """A database at path holding events, appended one per group through the daemon's SqliteEventLog."""
    fill(SqliteEventLog(path, clock=lambda: RECORDED), events)


class TestSqliteReadModel(ReadModelSuite):
    @pytest.fixture(autouse=True)
    def _directory(self, tmp_path: Path) -> None:
        self.directory = tmp_path
        self.built = 0

    def build(self, events: list[dict[str, Any]]) -> ReadModel:
        self.built += 1
        path = self.directory / f"store-{self.built}.db"
        build_sqlite(path, events)
        return open_read_model(f"sqlite:///{path}")


@pytest.fixture
def sqlite_model(tmp_path: Path) -> Any:
    path = tmp_path / "t.db"
    build_sqlite(path, EVENTS)
    model = SqliteReadModel.open(str(path))
    try:
        yield model
    finally:
        model.close()


def test_sqlite_urls_and_plain_paths_name_the_same_file() -> None:
    assert sqlite_path("sqlite:////var/lib/t.db") == "/var/lib/t.db"
    assert sqlite_path("sqlite:///var/lib/t.db") == "/var/lib/t.db"
    assert sqlite_path("relative/t.db") == "relative/t.db"


def test_sql_reads_and_refuses_writes(sqlite_model: SqliteReadModel) -> None:
    (row,) = answer(sqlite_model, Query(q="sql", sql="SELECT count(*) AS n FROM runs")).rows
    assert row == {"columns": ["n"], "rows": [[3]], "more": False}
    with pytest.raises(errors.BadQuery):
        answer(sqlite_model, Query(q="sql", sql="DELETE FROM runs"))


def test_a_database_failure_is_storage_error_not_sqlite3(
    sqlite_model: SqliteReadModel,
) -> None:
    sqlite_model.conn.close()
    with pytest.raises(errors.StorageError) as caught, sqlite_model.snapshot():
        pass
    assert not isinstance(caught.value, sqlite3.Error)
    with pytest.raises(errors.StorageError):
        sqlite_model.run_pipelines()


def test_a_storage_failure_is_internal_on_the_wire(sqlite_model: SqliteReadModel) -> None:
    sqlite_model.conn.close()
    with pytest.raises(errors.InternalError, match="query failed"):
        answer(sqlite_model, Query(q="runs", ref=7))


def test_a_query_too_large_for_sqlite_is_bad_query_with_its_ref(sqlite_model: SqliteReadModel) -> None:
    deep = "SELECT " + "(" * 1200 + "1" + ")" * 1200
    with pytest.raises(errors.BadQuery) as caught:
        answer(sqlite_model, Query(q="sql", sql=deep, ref=9))
    assert caught.value.ref == 9


def test_a_number_beyond_64_bits_from_a_filter_is_bad_query(sqlite_model: SqliteReadModel) -> None:
    with pytest.raises(errors.BadQuery) as caught, sqlite_model.snapshot("runs"):
        sqlite_model.conn.execute("SELECT ?", (2**70,))
    assert "out of range" in caught.value.message


def test_opening_a_missing_database_is_storage_error(tmp_path: Path) -> None:
    with pytest.raises(errors.StorageError):
        open_read_model(str(tmp_path / "absent" / "t.db"))


def test_schema_lists_tables_with_columns_and_the_ddl(sqlite_model: SqliteReadModel) -> None:
    (row,) = answer(sqlite_model, Query(q="schema")).rows
    assert {"name": "run", "type": "TEXT", "notnull": False, "pk": 1} in row["tables"]["runs"]
    assert any(ddl.startswith("CREATE TABLE runs") for ddl in row["ddl"])
