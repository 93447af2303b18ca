"""The event log contract, held against the PostgreSQL backend (a real server: tests/pg.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg.errors
import pytest

from tracklog.daemon.storage.eventlog import EventLog
from tracklog.daemon.storage.postgres.eventlog import PgEventLog
from tracklog.protocol import errors
from tracklog.protocol.messages import Append

from .eventlog_suite import NOW, EventLogContract, metrics


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


def test_a_full_disk_refuses_the_whole_group_as_disk_full_until_space_returns(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = PgEventLog(pg_url, clock=lambda: NOW)
    try:
        log.catch_up()
        real = log._insert_events

        def full(rows: Any) -> None:
            raise psycopg.errors.DiskFull("could not extend file: No space left on device")

        monkeypatch.setattr(log, "_insert_events", full)
        group = [Append(events=[metrics("r", i)], ref=i) for i in range(3)]
        results = log.append_group(group)
        assert all(isinstance(r, errors.DiskFull) for r in results)
        assert log.disk_full is not None and (log.disk_full_episodes, log.disk_full_refusals) == (1, 3)
        assert (log.head, log.read()) == (0, [])
        monkeypatch.setattr(log, "_insert_events", real)
        assert log.append_events([metrics("r", 0)]).first_seq == 1
        assert log.disk_full is None
    finally:
        log.close()
