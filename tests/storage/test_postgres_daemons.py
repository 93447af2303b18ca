"""Several daemons on one PostgreSQL database: two `PgEventLog`s on one database stand for
two daemons (each has its own connection and its own memory). Seqs stay gapless across
them, ids are idempotent across them, and dedup check-and-record is atomic across them.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import pytest

from tracklog.daemon.storage.eventlog import CheckResult
from tracklog.daemon.storage.postgres.eventlog import PgEventLog
from tracklog.protocol import events as ev
from tracklog.protocol.messages import Check, Duplicate

from .at_once import all_at_once
from .eventlog_suite import NOW, metrics


@pytest.fixture
def two(pg_url: str) -> Iterator[tuple[PgEventLog, PgEventLog]]:
    a = PgEventLog(pg_url, clock=lambda: NOW)
    a.catch_up()
    b = PgEventLog(pg_url, clock=lambda: NOW)
    b.catch_up()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_two_logs_appending_at_once_keep_seqs_gapless_and_every_event_once(
    two: tuple[PgEventLog, PgEventLog],
) -> None:
    a, b = two
    groups, size = 30, 20

    def appender(name: str, log: PgEventLog) -> Callable[[], None]:
        def append_all() -> None:
            for g in range(groups):
                log.append_events([metrics(name, g * size + i, f"{name}-{g}-{i}") for i in range(size)])

        return append_all

    all_at_once(appender("a", a), appender("b", b))
    events = a.read(limit=10_000)
    assert [e.seq for e in events] == list(range(1, 2 * groups * size + 1))
    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids) == 2 * groups * size
    assert b.read(limit=10_000) == events
    # Both logs' projections of the same runs were batched in memory: still equal to a rebuild.
    out = io.StringIO()
    assert a.verify(out) == 0, out.getvalue()


def test_an_id_resent_through_the_other_log_is_a_duplicate_naming_the_first_seq(
    two: tuple[PgEventLog, PgEventLog],
) -> None:
    a, b = two
    a.append_events([metrics("r", 0), metrics("r", 1, "x")])
    ack = b.append_events([metrics("r", 1, "x"), metrics("r", 2, "y")])
    assert ack.duplicates == [Duplicate(0, 2)] and (ack.first_seq, ack.last_seq) == (3, 3)
    again = a.append_events([metrics("r", 2, "y")])
    assert again.duplicates == [Duplicate(0, 3)] and again.accepted == 0
    assert [e.id for e in a.read()] == [None, "x", "y"]


def test_series_written_in_turn_through_both_logs_project_as_one(two: tuple[PgEventLog, PgEventLog]) -> None:
    a, b = two
    for turn in range(6):
        log = (a, b)[turn % 2]
        log.append_events([metrics("r", turn * 10 + i) for i in range(10)])
        log.append_events([ev.RunUpdated(run="r", data=ev.RunUpdatedData(add_tags=[f"t{turn}"]))])
    out = io.StringIO()
    assert b.verify(out) == 0, out.getvalue()


def test_of_two_logs_checking_the_same_text_at_once_exactly_one_records_it(
    two: tuple[PgEventLog, PgEventLog],
) -> None:
    a, b = two
    for log in (a, b):  # indexes loaded before the race (as a serving daemon's are)
        log.append_group([Check(namespace="docs", kind="hash", text="warm-up")])
    for round_ in range(5):
        text = f"the same text, round {round_}"

        def check(log: PgEventLog, text: str = text) -> CheckResult:
            (result,) = log.append_group([Check(namespace="docs", kind="hash", text=text, record=True)])
            assert isinstance(result, CheckResult)
            return result

        first, second = all_at_once(lambda: check(a), lambda: check(b))
        recorded = [r for r in (first, second) if r.checked.recorded is not None]
        found = [r for r in (first, second) if r.checked.duplicate]
        assert len(recorded) == 1 and len(found) == 1, (first, second)
        match = found[0].checked.match
        assert match is not None and match.seq == recorded[0].checked.recorded
    assert [e.type for e in a.read()].count("dedup.recorded") == 6


def test_a_check_sees_what_the_other_log_recorded_after_its_index_loaded(
    two: tuple[PgEventLog, PgEventLog],
) -> None:
    a, b = two
    b.append_group([Check(namespace="docs", kind="simhash", text="something else entirely")])
    assert b.dedup.loaded
    (recorded,) = a.append_group([Check(namespace="docs", kind="simhash", text="the quick brown fox")])
    assert isinstance(recorded, CheckResult) and recorded.checked.recorded is not None
    (seen,) = b.append_group([Check(namespace="docs", kind="simhash", text="the quick brown fox")])
    assert isinstance(seen, CheckResult) and seen.checked.duplicate
    assert seen.checked.match is not None and seen.checked.match.seq == recorded.checked.recorded
    a.append_events([ev.DedupCleared(data=ev.DedupClearedData(namespace="docs"))])
    (after_clear,) = b.append_group([Check(namespace="docs", kind="simhash", text="the quick brown fox")])
    assert isinstance(after_clear, CheckResult) and not after_clear.checked.duplicate


def test_indexes_loaded_at_a_first_check_hold_each_entry_of_the_other_log_once(
    two: tuple[PgEventLog, PgEventLog],
) -> None:
    a, b = two
    a.append_group([Check(namespace="docs", kind="simhash", text="recorded through the first log")])
    assert not b.dedup.loaded
    (result,) = b.append_group([Check(namespace="docs", kind="simhash", text="another text", record=False)])
    assert isinstance(result, CheckResult) and not result.checked.duplicate
    assert b.dedup.count() == 1


def test_two_logs_opening_an_empty_database_at_once_make_the_schema_once(pg_url: str) -> None:
    def open_and_catch_up() -> PgEventLog:
        log = PgEventLog(pg_url, clock=lambda: NOW)
        log.catch_up()
        return log

    a, b = all_at_once(open_and_catch_up, open_and_catch_up)
    try:
        a.append_events([metrics("r", 0)])
        assert b.append_events([metrics("r", 1)]).first_seq == 2
        assert (a.applied_seq, b.applied_seq) == (2, 2)
    finally:
        a.close()
        b.close()
