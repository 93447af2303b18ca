"""The operations on PostgreSQL: `tracklog migrate` between SQLite and PostgreSQL both ways
(every event exactly as stored, seqs and ids kept, idempotent, resumable, verified),
`log export` from and `log import` into PostgreSQL, and `purge` refused there."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tracklog.daemon import commands, ops_commands
from tracklog.daemon.logfile import encode_line
from tracklog.daemon.logops import migrate
from tracklog.daemon.storage.eventlog import EventLog
from tracklog.daemon.storage.postgres.eventlog import PgEventLog
from tracklog.protocol import events as ev
from tracklog.protocol.messages import StoredEvent

from .helpers import blobs, fill, sqlite_log


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "source.db"
    log = sqlite_log(path)
    fill(log, runs=4)
    log.close()
    return path


def pg_rows(url: str) -> list[tuple[object, ...]]:
    """Every stored event of a PostgreSQL database as its raw row, data bytes included."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT seq, id, type, run, ts, recorded, data FROM events ORDER BY seq")
        return [tuple(row) for row in rows]


def export_of(db: str | Path) -> bytes:
    out = io.BytesIO()
    err = io.StringIO()
    assert ops_commands.log_export(db, out, err=err) == 0, err.getvalue()
    return out.getvalue()


def pg_head(url: str) -> int:
    log = PgEventLog(url)
    try:
        return log.head
    finally:
        log.close()


def test_sqlite_to_postgresql_and_back_keeps_every_event_exactly_and_runs_again_as_a_no_op(
    source: Path, pg_url: str, tmp_path: Path
) -> None:
    out = io.StringIO()
    assert ops_commands.migrate(source, pg_url, out=out) == 0, out.getvalue()
    assert "the live tables equal a rebuild from the log" in out.getvalue()
    assert pg_rows(pg_url) == blobs(source)  # seq, id, type, run, ts, recorded, data bytes
    back = tmp_path / "back.db"
    out = io.StringIO()
    assert ops_commands.migrate(pg_url, back, out=out) == 0, out.getvalue()
    assert "the live tables equal a rebuild from the log" in out.getvalue()
    assert blobs(back) == blobs(source)
    assert export_of(pg_url) == export_of(back) == export_of(source)
    # Again, both ways: everything checked, nothing copied, nothing changed.
    for src, dst in ((source, pg_url), (pg_url, back)):
        out = io.StringIO()
        assert ops_commands.migrate(src, dst, out=out) == 0, out.getvalue()
        assert "copied 0 events" in out.getvalue()
    assert pg_rows(pg_url) == blobs(back) == blobs(source)
    assert commands.verify(pg_url, io.StringIO()) == 0


def open_pg(url: str) -> EventLog:
    log = PgEventLog(url)
    log.catch_up()
    return log


@pytest.mark.parametrize("direction", ["to postgresql", "from postgresql"])
def test_an_interrupted_migration_resumes_where_the_target_stopped(
    direction: str, source: Path, pg_url: str, tmp_path: Path
) -> None:
    class Interrupted(Exception):
        pass

    def stop_after_three(head: int) -> None:
        batches.append(head)
        if len(batches) == 3:
            raise Interrupted

    target_path = tmp_path / "target.db"
    open_source: Callable[[], EventLog]
    open_target: Callable[[], EventLog]
    if direction == "to postgresql":
        open_source, open_target = lambda: sqlite_log(source), lambda: open_pg(pg_url)
    else:
        assert ops_commands.migrate(source, pg_url, out=io.StringIO()) == 0
        open_source, open_target = lambda: open_pg(pg_url), lambda: sqlite_log(target_path)
    batches: list[int] = []
    log = open_source()
    target = open_target()
    with pytest.raises(Interrupted):
        migrate(log, target, progress=stop_after_three, batch=17)
    assert target.head == batches[-1] == 51
    target.close()
    resumed = open_target()
    done = migrate(log, resumed, batch=17)
    assert (done.matched, done.appended, done.head) == (51, log.head - 51, log.head)
    assert resumed.verify(io.StringIO()) == 0
    resumed.close()
    log.close()
    copied = pg_rows(pg_url) if direction == "to postgresql" else blobs(target_path)
    assert copied == blobs(source)


def test_a_purged_log_keeps_its_gaps_and_its_head_through_postgresql(pg_url: str, tmp_path: Path) -> None:
    purged = sqlite_log(tmp_path / "purged.db")
    purged.append_stored(
        [
            StoredEvent(1, "run.started", {"name": "a"}, 1.0, 1.0, "a", "r"),
            StoredEvent(4, "run.finished", {"status": "completed"}, 2.0, 2.0, "b", "r"),
        ]
    )
    purged.advance_head(9)
    purged.close()
    assert ops_commands.migrate(tmp_path / "purged.db", pg_url, out=io.StringIO()) == 0
    assert [row[0] for row in pg_rows(pg_url)] == [1, 4] and pg_head(pg_url) == 9
    assert commands.verify(pg_url, io.StringIO()) == 0
    back = tmp_path / "back.db"
    assert ops_commands.migrate(pg_url, back, out=io.StringIO()) == 0
    again = sqlite_log(back)
    try:
        assert (again.head, [e.seq for e in again.read()]) == (9, [1, 4])
        assert again.append_events([ev.RunDeleted(run="r")]).first_seq == 10
    finally:
        again.close()
    # A replay of the PostgreSQL log as of seq 6 holds its head as of 6.
    log = PgEventLog(pg_url)
    try:
        assert log.replay(6, str(tmp_path / "as-of-6.db")) == 2
    finally:
        log.close()
    replayed = sqlite_log(tmp_path / "as-of-6.db")
    try:
        assert (replayed.head, replayed.applied_seq) == (6, 6)
    finally:
        replayed.close()


def test_log_export_from_postgresql_and_log_import_into_postgresql(source: Path, pg_url: str) -> None:
    exported = export_of(source)
    err = io.StringIO()
    assert ops_commands.log_import(pg_url, exported.splitlines(keepends=True), err=err) == 0, err.getvalue()
    assert pg_rows(pg_url) == blobs(source)
    assert export_of(pg_url) == exported
    assert commands.verify(pg_url, io.StringIO()) == 0
    # Imported again: every event found there, none appended.
    err = io.StringIO()
    assert ops_commands.log_import(pg_url, exported.splitlines(keepends=True), err=err) == 0
    assert "imported 0 events" in err.getvalue()
    # A file that disagrees with the log at a seq it holds is refused, naming the seq.
    log = PgEventLog(pg_url)
    try:
        other = log.read(limit=2)[1]
    finally:
        log.close()
    wrong = encode_line(
        StoredEvent(2, other.type, other.data, other.recorded + 1, other.ts, other.id, other.run)
    )
    err = io.StringIO()
    assert ops_commands.log_import(pg_url, [wrong], err=err) == 1
    assert "seq 2" in err.getvalue()
    assert pg_rows(pg_url) == blobs(source)


def test_a_purge_on_postgresql_is_refused_before_anything_is_read_or_changed(
    source: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ops_commands.migrate(source, pg_url, out=io.StringIO()) == 0
    before = pg_rows(pg_url)
    assert ops_commands.purge(pg_url, 0, out=io.StringIO()) == 1
    message = capsys.readouterr().err
    assert (
        "purge is not supported on this backend yet" in message and "nothing was read or changed" in message
    )
    assert pg_rows(pg_url) == before
    assert ops_commands.purge(pg_url, 0, dry_run=True, out=io.StringIO()) == 1
