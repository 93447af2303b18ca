"""The event log contract, held against the PostgreSQL backend (a real server: tests/pg.py)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import msgspec
import psycopg.errors
import pytest

from tracklog.daemon.storage.eventlog import EventLog
from tracklog.daemon.storage.postgres.eventlog import PgEventLog
from tracklog.protocol import errors
from tracklog.protocol.messages import Append, StoredEvent

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


def test_stored_events_and_an_advanced_head_are_checked_against_the_head_read_under_the_lock(
    pg_url: str,
) -> None:
    """Another daemon appended since this log last looked: stored events at seqs it took are
    refused whole (the head is read under the log's lock, not this log's stale one), those
    past it go in, and a head advanced to below the real one stays where it is."""
    mine = PgEventLog(pg_url, clock=lambda: NOW)
    other = PgEventLog(pg_url, clock=lambda: NOW)
    try:
        mine.catch_up()
        other.append_events([metrics("r", 0), metrics("r", 1)])
        assert mine.head == 0  # not seen yet
        stored = StoredEvent(1, "metrics", {"values": {"a": 1.0}}, NOW, NOW, "s-1", "r")
        with pytest.raises(errors.StorageError, match=r"seq 1: .*past the head \(2\)"):
            mine.append_stored([stored])
        assert [e.seq for e in mine.read()] == [1, 2] and mine.verify(io.StringIO()) == 0
        assert mine.append_stored([msgspec.structs.replace(stored, seq=3)]) == 1
        other.advance_head(2)  # stale (other saw 2, the log is at 3): a no-op
        mine.advance_head(2)
        assert (mine.head, other.append_events([metrics("r", 2)]).first_seq) == (3, 4)
        other.advance_head(6)
        assert mine.append_events([metrics("r", 3)]).first_seq == 7
        assert mine.verify(io.StringIO()) == 0
    finally:
        mine.close()
        other.close()
