"""The event log contract, held against the PostgreSQL backend (a real server: tests/pg.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tracklog.daemon.storage.eventlog import EventLog
from tracklog.daemon.storage.postgres.eventlog import PgEventLog

from .eventlog_suite import NOW, EventLogContract


class TestPgEventLog(EventLogContract):
    @pytest.fixture
    def log(self, pg_url: str) -> Iterator[EventLog]:
        opened = PgEventLog(pg_url, clock=lambda: NOW)
        opened.catch_up()
        try:
            yield opened
        finally:
            opened.close()

    def open_log(self, tmp_path: Any) -> EventLog:
        raise AssertionError("opened by the log fixture, on the test's own database")
