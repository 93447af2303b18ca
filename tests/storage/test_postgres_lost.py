"""Runs of a daemon that died, on a shared PostgreSQL database: `PgEventLog`s stand for
daemons, and a daemon that was killed is one whose leases are no longer renewed. Rather
than wait for them to go stale, a test ages them in the table (the database's clock is
what leases are judged by), so nothing here depends on how fast the machine is; the
daemons' own scan, with its thread and a real `kill -9`, is in
tests/integration/test_postgres_multi.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import psycopg
import pytest

from tracklog.daemon.liveness import LostMark, lost_event
from tracklog.daemon.storage.eventlog import AppendResult
from tracklog.daemon.storage.postgres import leases
from tracklog.daemon.storage.postgres.eventlog import PgEventLog
from tracklog.daemon.storage.postgres.follow import LogWatcher
from tracklog.protocol import events as ev
from tracklog.protocol.messages import Append

from .at_once import all_at_once
from .eventlog_suite import NOW, metrics

#: Seconds a thread or a condition may take before the test gives up (never a wait for timing).
JOIN_TIMEOUT = 120
#: The daemons' `lost_after` here: far longer than any test takes, so only the leases a
#: test ages are stale.
LOST_AFTER = 60.0


@pytest.fixture
def logs(pg_url: str) -> Iterator[Callable[[], PgEventLog]]:
    """Open logs on the test's database (each a daemon), closed after the test."""
    opened: list[PgEventLog] = []

    def open_log() -> PgEventLog:
        log = PgEventLog(pg_url, clock=lambda: NOW)
        log.catch_up()
        opened.append(log)
        return log

    try:
        yield open_log
    finally:
        for log in opened:
            log.close()


def age_leases(url: str, daemon: str, seconds: float = 2 * LOST_AFTER) -> None:
    """Make `daemon`'s leases `seconds` older: as if it died that long ago."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE writer_leases SET renewed = renewed - %s WHERE daemon = %s", (seconds, daemon))


def lease_rows(url: str) -> set[tuple[str, str]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {(run, daemon) for run, daemon in conn.execute("SELECT run, daemon FROM writer_leases")}


def start(log: PgEventLog, run: str) -> None:
    log.append_events([ev.RunStarted(run=run, data=ev.RunStartedData()), metrics(run, 0)])


def mark(log: PgEventLog, *runs: str) -> int:
    """The scan's mark of these runs through `log` (every daemon's leases count): how many marked."""
    (result,) = log.append_group(
        [LostMark(events=[lost_event(r) for r in runs], daemon="", lost_after=LOST_AFTER)]
    )
    assert isinstance(result, AppendResult), result
    return result.ack.accepted


def status(log: PgEventLog, run: str) -> str:
    row = log.conn.execute("SELECT status FROM runs WHERE run = ?", (run,)).fetchone()
    assert row is not None
    return str(row[0])


def finished_events(log: PgEventLog, run: str) -> int:
    return sum(1 for e in log.read(limit=10_000) if e.type == "run.finished" and e.run == run)


def test_a_run_whose_daemon_stopped_renewing_is_unserved_and_marked_lost_once(
    logs: Callable[[], PgEventLog], pg_url: str
) -> None:
    dead, survivor = logs(), logs()
    start(dead, "r")
    assert leases.unserved(survivor.conn, LOST_AFTER) == []  # its lease is fresh
    age_leases(pg_url, dead.daemon_id)
    assert leases.unserved(survivor.conn, LOST_AFTER) == ["r"]
    assert mark(survivor, "r") == 1
    assert status(survivor, "r") == "lost"
    assert leases.unserved(survivor.conn, LOST_AFTER) == []  # ended: not found again
    assert mark(survivor, "r") == 0  # a mark found late is not appended again
    assert finished_events(survivor, "r") == 1


def test_of_three_daemons_marking_the_same_run_at_once_exactly_one_marks_it(
    logs: Callable[[], PgEventLog], pg_url: str
) -> None:
    dead, survivors = logs(), [logs(), logs(), logs()]
    for round_ in range(5):
        run = f"r{round_}"
        start(dead, run)
        age_leases(pg_url, dead.daemon_id)
        marked = all_at_once(*(lambda log=log, run=run: mark(log, run) for log in survivors))
        assert sorted(marked) == [0, 0, 1], marked
        assert finished_events(dead, run) == 1


def test_a_run_whose_writer_moved_to_a_surviving_daemon_is_not_marked(
    logs: Callable[[], PgEventLog], pg_url: str
) -> None:
    dead, serving, other = logs(), logs(), logs()
    start(dead, "moved")
    start(dead, "left")
    serving.append_events([metrics("moved", 1)])  # the writer reconnected to `serving`
    age_leases(pg_url, dead.daemon_id)
    assert leases.unserved(other.conn, LOST_AFTER) == ["left"]
    assert mark(other, "moved", "left") == 1  # a mark found before the move: refused for it
    assert (status(other, "moved"), status(other, "left")) == ("running", "lost")
    assert finished_events(other, "moved") == 0


def test_a_writer_reconnecting_after_the_mark_resumes_its_run(
    logs: Callable[[], PgEventLog], pg_url: str
) -> None:
    dead, survivor = logs(), logs()
    start(dead, "r")
    age_leases(pg_url, dead.daemon_id)
    assert mark(survivor, "r") == 1
    survivor.append_events([metrics("r", 1)])
    assert status(survivor, "r") == "running"
    types = [e.type for e in survivor.read() if e.run == "r"]
    assert types[-3:] == ["run.finished", "run.updated", "metrics"]
    assert leases.unserved(survivor.conn, LOST_AFTER) == []  # the survivor's lease is fresh


def test_a_mark_in_the_group_that_writes_to_the_run_is_not_appended(logs: Callable[[], PgEventLog]) -> None:
    survivor = logs()
    mark_ = LostMark(events=[lost_event("r")], daemon="", lost_after=LOST_AFTER)
    written, marked = survivor.append_group([Append(events=[metrics("r", 0)]), mark_])
    assert isinstance(written, AppendResult) and isinstance(marked, AppendResult)
    assert (written.ack.accepted, marked.ack.accepted) == (1, 0)
    assert status(survivor, "r") == "running"


def test_a_running_run_without_leases_is_not_scanned(logs: Callable[[], PgEventLog], pg_url: str) -> None:
    """Written through a daemon older than the leases, say: that daemon may still serve it."""
    old, survivor = logs(), logs()
    start(old, "r")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DELETE FROM writer_leases")
    assert leases.unserved(survivor.conn, 0.0) == []


def test_stale_leases_of_ended_runs_are_released_and_those_of_running_runs_kept(
    logs: Callable[[], PgEventLog], pg_url: str
) -> None:
    dead, survivor = logs(), logs()
    start(dead, "ended")
    start(dead, "running")
    dead.append_events([ev.RunFinished(run="ended", data=ev.RunFinishedData(status="completed"))])
    age_leases(pg_url, dead.daemon_id)
    leases.release_stale(survivor.conn, LOST_AFTER)
    assert lease_rows(pg_url) == {("running", dead.daemon_id)}  # the scan finds the run by it
    assert mark(survivor, "running") == 1
    leases.release_stale(survivor.conn, LOST_AFTER)
    assert lease_rows(pg_url) == set()


def test_the_log_watcher_hands_on_the_runs_whose_leases_went_stale(
    logs: Callable[[], PgEventLog], pg_url: str
) -> None:
    dead, survivor = logs(), logs()
    start(dead, "r")
    age_leases(pg_url, dead.daemon_id)
    found: list[list[str]] = []
    got = threading.Event()

    def unserved(runs: list[str]) -> None:
        found.append(runs)
        got.set()

    watcher = LogWatcher(
        pg_url,
        survivor.daemon_id,
        lambda: dead.head,
        lambda events: None,
        renew_seconds=0.05,
        lost_after=LOST_AFTER,
        unserved=unserved,
    )
    watcher.start()
    try:
        assert got.wait(JOIN_TIMEOUT), "the watcher never scanned"
    finally:
        watcher.stop()
    assert found[0] == ["r"]
