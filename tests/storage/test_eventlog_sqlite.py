"""The event log contract, held against the SQLite backend."""

from __future__ import annotations

from pathlib import Path

from tracklog.daemon.storage.eventlog import EventLog
from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog

from .eventlog_suite import NOW, EventLogContract


class TestSqliteEventLog(EventLogContract):
    def open_log(self, tmp_path: Path) -> EventLog:
        return SqliteEventLog(tmp_path / "log.db", clock=lambda: NOW)


def test_an_advanced_head_survives_a_reopen_and_a_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    log = SqliteEventLog(path, clock=lambda: NOW)
    log.catch_up()
    log.append_events([])
    log.advance_head(5)
    log.close()
    again = SqliteEventLog(path, clock=lambda: NOW)
    try:
        assert again.catch_up() == 0 and (again.head, again.applied_seq) == (5, 5)
        again.rebuild()
        assert again.applied_seq == 5
    finally:
        again.close()
