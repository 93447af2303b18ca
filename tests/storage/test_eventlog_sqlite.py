"""The event log contract, held against the SQLite backend."""

from __future__ import annotations

from pathlib import Path

from tracklog.daemon.storage.eventlog import EventLog
from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog

from .eventlog_suite import NOW, EventLogContract


class TestSqliteEventLog(EventLogContract):
    def open_log(self, tmp_path: Path) -> EventLog:
        return SqliteEventLog(tmp_path / "log.db", clock=lambda: NOW)
