"""The ReadModel behaviours on PostgreSQL (a real server: tests/pg.py), and what only the
PostgreSQL read model does: `sql` under a reader role in a read-only transaction with a
timeout, `schema` from information_schema, snapshots that agree with applied_seq, and
reconnecting after the server drops the connection."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tracklog.daemon.queries import answer
from tracklog.daemon.storage.postgres.eventlog import PgEventLog
from tracklog.daemon.storage.postgres.readmodel import PgReadModel
from tracklog.daemon.storage.readmodel import ReadModel, open_read_model
from tracklog.protocol import errors
from tracklog.protocol.messages import Query

from ..pg import PgServer
from .readmodel_suite import EVENTS, RECORDED, ReadModelSuite
from .test_readmodel_sqlite import fill


def build_postgres(url: str, events: list[dict[str, Any]]) -> None:
    """The database at url holding events, appended one per group through PgEventLog."""
    fill(PgEventLog(url, clock=lambda: RECORDED), events)


class TestPgReadModel(ReadModelSuite):
    @pytest.fixture(autouse=True)
    def _server(self, pg_server: PgServer) -> Iterator[None]:
        self.server = pg_server
        self.databases: list[str] = []
        yield
        for url in self.databases:
            pg_server.drop_database(url)

    def build(self, events: list[dict[str, Any]]) -> ReadModel:
        url = self.server.create_database()
        self.databases.append(url)
        build_postgres(url, events)
        return open_read_model(url)


@pytest.fixture
def pg_model(pg_url: str) -> Iterator[PgReadModel]:
    build_postgres(pg_url, EVENTS)
    model = open_read_model(pg_url)
    assert isinstance(model, PgReadModel)
    try:
        yield model
    finally:
        model.close()


def sql(model: PgReadModel, statement: str, **fields: Any) -> dict[str, Any]:
    (row,) = answer(model, Query(q="sql", sql=statement, **fields)).rows
    return dict(row)


def test_sql_reads_the_tables(pg_model: PgReadModel) -> None:
    assert sql(pg_model, "SELECT count(*) AS n FROM runs") == {"columns": ["n"], "rows": [[3]], "more": False}
    assert sql(pg_model, "SELECT run FROM runs ORDER BY run;", limit=2) == {
        "columns": ["run"],
        "rows": [["aaa111"], ["aab222"]],
        "more": True,
    }
    assert sql(pg_model, "SELECT name LIKE 'al%' AS a FROM runs WHERE run = 'aaa111'")["rows"] == [[True]]


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM runs",
        "UPDATE runs SET name = 'x'",
        "WITH gone AS (DELETE FROM runs RETURNING run) SELECT * FROM gone",
        "SELECT 1; DELETE FROM runs",
        "RESET ROLE",
        "SET ROLE postgres",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT * FROM pg_ls_dir('.')",
        "SELECT set_config('role', 'postgres', false)",
        "SELECT set_config('statement_timeout', '0', true), pg_sleep(0)",
        "SELECT lo_import('/etc/passwd')",
        "COPY runs TO '/tmp/x'",
        "CREATE TABLE x (a int)",
        "SELECT * FROM runs FOR UPDATE",
    ],
)
def test_sql_refuses_writes_files_and_role_changes(pg_model: PgReadModel, statement: str) -> None:
    with pytest.raises(errors.BadQuery, match=r"^sql: "):
        sql(pg_model, statement)
    # The model is left as it was: the next statement reads, as the daemon's role again.
    assert sql(pg_model, "SELECT count(*) FROM runs")["rows"] == [[3]]
    assert pg_model.conn.execute("SELECT current_user").fetchone()[0] == "postgres"
    (runs,) = pg_model.conn.execute("SELECT count(*) FROM runs").fetchone()
    assert runs == 3


def test_sql_is_interrupted_by_its_timeout(pg_model: PgReadModel, monkeypatch: pytest.MonkeyPatch) -> None:
    from tracklog.daemon.storage.postgres import queries

    monkeypatch.setattr(queries, "SQL_TIME_LIMIT", 0.2)
    with pytest.raises(errors.BadQuery, match=r"interrupted after 0\.2 s"):
        sql(pg_model, "SELECT pg_sleep(5)")


def test_sql_session_locks_are_released_after_the_statement(pg_model: PgReadModel, pg_url: str) -> None:
    sql(pg_model, "SELECT pg_advisory_lock(42)")
    other = open_read_model(pg_url)
    assert isinstance(other, PgReadModel)
    try:
        assert other.conn.execute("SELECT pg_try_advisory_lock(42)").fetchone()[0] is True
    finally:
        other.close()


def test_sql_gives_json_and_other_types_as_the_wire_carries_them(pg_model: PgReadModel) -> None:
    (row,) = sql(pg_model, "SELECT '{\"a\": 1}'::jsonb AS j, 1.5::numeric AS n, now() > now() AS b")["rows"]
    assert row == ['{"a":1}', 1.5, False]


def test_schema_lists_tables_with_columns_and_the_ddl(pg_model: PgReadModel) -> None:
    (row,) = answer(pg_model, Query(q="schema")).rows
    assert {"name": "run", "type": "TEXT", "notnull": True, "pk": 1} in row["tables"]["runs"]
    assert {"name": "tag", "type": "TEXT", "notnull": True, "pk": 2} in row["tables"]["run_tags"]
    assert any(ddl.startswith("CREATE TABLE runs (run TEXT NOT NULL") for ddl in row["ddl"])
    assert any("search_docs_text" in ddl and "gin" in ddl for ddl in row["ddl"])


def test_a_snapshot_sees_one_state_while_another_daemon_writes(pg_model: PgReadModel, pg_url: str) -> None:
    with pg_model.snapshot():
        before = pg_model.applied_seq()
        build_postgres(pg_url, [{"type": "run.started", "run": "ddd444", "ts": 1.0, "data": {"name": "d"}}])
        rows, total = pg_model.runs(Query(q="runs", deleted=True))
        assert pg_model.applied_seq() == before and total == 3 == len(rows)
    assert answer(pg_model, Query(q="runs")).seq == before + 1


def test_a_dropped_connection_fails_one_question_then_reconnects(pg_model: PgReadModel, pg_url: str) -> None:
    pid = pg_model.conn.raw.info.backend_pid
    killer = open_read_model(pg_url)
    assert isinstance(killer, PgReadModel)
    try:
        killer.conn.execute("SELECT pg_terminate_backend(?)", (pid,))
    finally:
        killer.close()
    with pytest.raises(errors.InternalError):
        answer(pg_model, Query(q="runs"))
    assert [r["id"] for r in answer(pg_model, Query(q="runs")).rows] == ["aaa111", "aab222"]


def test_a_value_postgresql_cannot_hold_is_bad_query(pg_model: PgReadModel) -> None:
    with pytest.raises(errors.BadQuery):
        answer(pg_model, Query(q="runs", filter="name = 'a\u0000b'"))


def test_a_transaction_a_failure_left_open_does_not_spoil_the_next_question(pg_model: PgReadModel) -> None:
    pg_model.conn.execute("BEGIN")
    with pytest.raises(Exception, match="division by zero"):
        pg_model.conn.execute("SELECT 1 / 0")
    assert [r["id"] for r in answer(pg_model, Query(q="runs")).rows] == ["aaa111", "aab222"]
