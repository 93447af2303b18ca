"""`tracklog purge --older-than DAYS`: runs deleted long enough ago are gone from the log,
the projections, the dedup entries and exports; every other event is kept as it was, with
its seq and id; and a purge killed at any moment leaves the old generation whole."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tracklog.daemon import ops_commands
from tracklog.daemon.dblock import exclusive
from tracklog.daemon.purge import DAY, purge
from tracklog.daemon.storage import open_backend
from tracklog.daemon.storage.sqlcommon.schema import PROJECTION_TABLES
from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog
from tracklog.protocol import errors
from tracklog.protocol import events as ev

from .helpers import fill

T0 = 1_700_000_000.0
#: Tables with a run column: where a purged run could be left behind.
#: The projection tables with a row per run (the cache and the experiments have none).
RUN_TABLES = [t for t in PROJECTION_TABLES if t not in ("cache", "experiments", "experiment_tags")]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def make(path: Path, clock: Clock) -> None:
    """run-0 deleted at T0 + 1h, run-1 deleted at T0 + 9 days, run-2 deleted and restored,
    run-3 untouched."""
    log = SqliteEventLog(path, clock=clock)
    log.catch_up()
    fill(log, runs=4, points=30)
    clock.now = T0 + 3600
    log.append_events([ev.RunDeleted(run="run-0"), ev.RunDeleted(run="run-2")])
    log.append_events([ev.RunRestored(run="run-2")])
    clock.now = T0 + 9 * DAY
    log.append_events([ev.RunDeleted(run="run-1")])
    clock.now = T0 + 9 * DAY + 10
    log.append_events([ev.Metrics(run="run-3", data=ev.MetricsData(values={"late": 1.0}))])
    log.close()


def export(path: Path) -> bytes:
    out = io.BytesIO()
    assert ops_commands.log_export(path, out, err=io.StringIO()) == 0
    return out.getvalue()


def without(exported: bytes, runs: set[str]) -> bytes:
    return b"".join(
        line for line in exported.splitlines(keepends=True) if json.loads(line)["run"] not in runs
    )


def rows_of(path: Path, run: str) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        counts = {
            t: conn.execute(f"SELECT count(*) FROM {t} WHERE run = ?", (run,)).fetchone()[0]
            for t in RUN_TABLES
        }
    return {t: n for t, n in counts.items() if n}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "tracklog.db"
    make(path, Clock())
    return path


def test_a_purge_removes_the_runs_deleted_long_enough_ago_and_keeps_everything_else(db: Path) -> None:
    before = export(db)
    reader = SqliteEventLog(db, readonly=True)
    head = reader.head
    reader.close()
    assert rows_of(db, "run-0").keys() >= {"runs", "items", "artifacts", "metric_chunks", "dedup_entries"}
    out = io.StringIO()
    done = purge(open_backend(db), 5, now=T0 + 10 * DAY, out=out)
    assert done.runs == ["run-0"] and done.events == before.count(b'"run":"run-0"')
    after = export(db)
    assert b'"run-0"' not in after
    assert after == without(before, {"run-0"})  # every other event as it was, seq and id kept
    assert rows_of(db, "run-0") == {}
    assert rows_of(db, "run-1") and rows_of(db, "run-2") and rows_of(db, "run-3")
    log = SqliteEventLog(db)
    try:
        assert log.head == head and log.verify(io.StringIO()) == 0
        assert log.append_events([ev.RunDeleted(run="run-3")]).first_seq == head + 1
    finally:
        log.close()
    assert not db.with_name(db.name + ".next").exists() and not db.with_name(db.name + ".previous").exists()
    # Later, with a longer past: run-1 goes too (run-3 was deleted just now), run-2 (restored) never.
    assert purge(open_backend(db), 0, now=T0 + 30 * DAY).runs == ["run-1"]
    assert rows_of(db, "run-2") and not rows_of(db, "run-1")


def test_the_head_stays_when_the_last_events_are_purged(tmp_path: Path) -> None:
    path = tmp_path / "tracklog.db"
    clock = Clock()
    log = SqliteEventLog(path, clock=clock)
    log.catch_up()
    log.append_events([ev.RunStarted(run="a"), ev.RunStarted(run="b"), ev.RunDeleted(run="b")])
    log.close()
    purge(open_backend(path), 0, now=T0 + 1)
    log = SqliteEventLog(path)
    try:
        assert [e.seq for e in log.read()] == [1] and log.head == 3
        assert log.append_events([ev.RunDeleted(run="a")]).first_seq == 4
    finally:
        log.close()


def test_a_dry_run_or_nothing_old_enough_changes_nothing_and_keep_old_keeps_it(db: Path) -> None:
    before = export(db)
    out = io.StringIO()
    assert ops_commands.purge(db, 5, dry_run=True, now=T0 + 10 * DAY, out=out) == 0
    assert "would purge 1 runs: run-0" in out.getvalue() and export(db) == before
    out = io.StringIO()
    assert ops_commands.purge(db, 100, now=T0 + 10 * DAY, out=out) == 0
    assert "nothing to purge" in out.getvalue() and export(db) == before
    out = io.StringIO()
    assert ops_commands.purge(db, 5, keep_old=True, now=T0 + 10 * DAY, out=out) == 0
    previous = db.with_name(db.name + ".previous")
    assert f"kept at {previous}" in out.getvalue()
    assert export(previous) == before and export(db) == without(before, {"run-0"})
    # The next purge removes what the last one kept aside.
    out = io.StringIO()
    assert ops_commands.purge(db, 100, now=T0 + 10 * DAY, out=out) == 0
    assert not previous.exists() and "removed" in out.getvalue()


def test_the_saved_dedup_indexes_go_aside_with_the_old_generation(db: Path) -> None:
    saved = Path(f"{db}.dedup")
    saved.mkdir()
    (saved / "index.json").write_text("{}")
    purge(open_backend(db), 5, now=T0 + 10 * DAY)
    assert not saved.exists() and not Path(f"{db}.previous.dedup").exists()


def test_a_purge_is_refused_while_a_daemon_holds_the_database(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = export(db)
    with exclusive(db):
        assert ops_commands.purge(db, 0, out=io.StringIO()) == 2
    assert "needs the daemon stopped" in capsys.readouterr().err and export(db) == before


def test_a_reader_still_open_on_the_database_stops_the_swap_and_changes_nothing(db: Path) -> None:
    before = export(db)
    reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    reader.execute("SELECT count(*) FROM events").fetchone()
    try:
        with pytest.raises(errors.StorageError, match="open in another process"):
            purge(open_backend(db), 5, now=T0 + 10 * DAY)
    finally:
        reader.close()
    assert export(db) == before
    assert purge(open_backend(db), 5, now=T0 + 10 * DAY).runs == ["run-0"]


@pytest.mark.parametrize("stage", ["copy", "swap"])
def test_a_purge_killed_mid_way_leaves_the_old_generation_whole_and_usable(db: Path, stage: str) -> None:
    before = export(db)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.ops._purge_paused", str(db), stage],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "paused\n", line + (proc.stderr.read() if proc.stderr else "")
    finally:
        proc.kill()  # SIGKILL: nothing cleaned up
        proc.communicate(timeout=60)
    assert export(db) == before
    log = SqliteEventLog(db)
    try:
        assert log.verify(io.StringIO()) == 0
        log.append_events([ev.RunStarted(run="after-the-crash")])
    finally:
        log.close()
    # The next purge clears what the killed one left and does the work.
    done = purge(open_backend(db), 0)
    assert done.runs == ["run-0", "run-1"]
    assert export(db) == without(export_with_new(before, db), {"run-0", "run-1"})
    assert not db.with_name(db.name + ".next").exists() and not db.with_name(db.name + ".previous").exists()


def export_with_new(before: bytes, db: Path) -> bytes:
    """The export from before, plus what was appended after the crash (read back)."""
    after = export(db)
    extra = [line for line in after.splitlines(keepends=True) if b"after-the-crash" in line]
    return before + b"".join(extra)
