"""The event log contract, held against the SQLite backend."""

from __future__ import annotations

from pathlib import Path

from tracklog.daemon.storage.eventlog import EventLog
from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog
from tracklog.protocol.messages import Append

from .eventlog_suite import NOW, EventLogContract, metrics


class TestSqliteEventLog(EventLogContract):
    def open_log(self, tmp_path: Path) -> EventLog:
        return SqliteEventLog(tmp_path / "log.db", clock=lambda: NOW)

    def test_a_group_reads_which_of_its_runs_are_lost_once_not_once_per_append(self, tmp_path: Path) -> None:
        log = SqliteEventLog(tmp_path / "log.db", clock=lambda: NOW)
        try:
            log.catch_up()
            statements: list[str] = []
            log.conn.set_trace_callback(statements.append)
            log.append_group([Append(events=[metrics(f"r{i}", 0)]) for i in range(5)])
            assert sum("FROM runs WHERE status" in s for s in statements) == 1
        finally:
            log.close()
