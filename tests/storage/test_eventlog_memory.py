"""The event log contract, held against the in-memory backend."""

from __future__ import annotations

from pathlib import Path

from tracklog.daemon.storage import open_backend
from tracklog.daemon.storage.eventlog import EventLog
from tracklog.daemon.storage.memory import MemoryEventLog

from .eventlog_suite import NOW, EventLogContract


class TestMemoryEventLog(EventLogContract):
    def open_log(self, tmp_path: Path) -> EventLog:
        return MemoryEventLog(clock=lambda: NOW)


def test_the_factory_opens_an_empty_memory_log_each_time() -> None:
    backend = open_backend("memory:")
    log = backend.open_log()
    log.append_events([])
    assert isinstance(log, MemoryEventLog) and log.head == 0 and not backend.exists()
