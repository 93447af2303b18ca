"""`tracklog migrate SRC DST`: a copy between backends with seqs and ids kept, resumed
where the target's head is after checking the part both hold, then verified."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tracklog.daemon import ops_commands
from tracklog.daemon.logops import Conflict, migrate
from tracklog.daemon.storage.memory import MemoryEventLog
from tracklog.protocol.messages import StoredEvent

from .helpers import blobs, export_bytes, fill, sqlite_log


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "source.db"
    log = sqlite_log(path)
    fill(log, runs=4)
    log.close()
    return path


def test_sqlite_to_sqlite_keeps_every_event_and_verifies(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.db"
    out = io.StringIO()
    assert ops_commands.migrate(source, f"sqlite:///{target}", out=out) == 0, out.getvalue()
    assert "the live tables equal a rebuild from the log" in out.getvalue()
    assert blobs(target) == blobs(source)
    # Run again: nothing to copy, everything checked.
    out = io.StringIO()
    assert ops_commands.migrate(source, target, out=out) == 0
    assert "copied 0 events" in out.getvalue() and blobs(target) == blobs(source)


def test_sqlite_to_memory_gives_the_same_export(source: Path) -> None:
    log = sqlite_log(source)
    memory = MemoryEventLog()
    done = migrate(log, memory)
    assert done.appended == log.head and memory.head == log.head
    assert export_bytes(memory) == export_bytes(log)
    assert memory.verify(io.StringIO()) == 0
    log.close()


def test_an_interrupted_migration_resumes_where_the_target_stopped(source: Path, tmp_path: Path) -> None:
    class Interrupted(Exception):
        pass

    def stop_after_three(head: int) -> None:
        batches.append(head)
        if len(batches) == 3:
            raise Interrupted

    batches: list[int] = []
    log = sqlite_log(source)
    target_path = tmp_path / "target.db"
    target = sqlite_log(target_path)
    with pytest.raises(Interrupted):
        migrate(log, target, progress=stop_after_three, batch=17)
    assert target.head == batches[-1] == 51
    target.close()
    resumed = sqlite_log(target_path)
    done = migrate(log, resumed, batch=17)
    assert (done.matched, done.appended, done.head) == (51, log.head - 51, log.head)
    assert resumed.verify(io.StringIO()) == 0
    resumed.close()
    log.close()
    assert blobs(target_path) == blobs(source)


def test_a_target_holding_another_log_is_refused_naming_the_seq(source: Path, tmp_path: Path) -> None:
    target_path = tmp_path / "target.db"
    target = sqlite_log(target_path)
    log = sqlite_log(source)
    migrate(log, target)
    first = log.read(limit=3)
    other = sqlite_log(tmp_path / "other.db")
    other.append_stored([*first[:2], StoredEvent(3, "run.deleted", {}, 1.0, 1.0, None, "x")])
    with pytest.raises(Conflict, match="seq 3: the target holds a different event there"):
        migrate(log, other)
    # A target that lacks an event the source holds at or below its head (or holds one
    # the source lacks) is another log too.
    gappy = MemoryEventLog()
    gappy.append_stored([first[0], first[2]])
    with pytest.raises(Conflict, match="seq 2: the target has no event there"):
        migrate(log, gappy)
    for opened in (target, log, other):
        opened.close()


def test_a_purged_source_is_copied_with_its_gaps_and_its_head(tmp_path: Path) -> None:
    source = MemoryEventLog()
    source.append_stored(
        [
            StoredEvent(1, "run.started", {"name": "a"}, 1.0, 1.0, "a", "r"),
            StoredEvent(4, "run.finished", {"status": "completed"}, 2.0, 2.0, "b", "r"),
        ]
    )
    source.advance_head(9)
    target = sqlite_log(tmp_path / "target.db")
    migrate(source, target)
    assert [e.seq for e in target.read()] == [1, 4] and target.head == 9
    assert migrate(source, target).appended == 0
    target.close()


def test_a_migration_into_a_served_database_is_refused(source: Path, tmp_path: Path) -> None:
    from tracklog.daemon.dblock import exclusive

    target = tmp_path / "target.db"
    with exclusive(target):
        assert ops_commands.migrate(source, target, out=io.StringIO()) == 2
    assert not target.exists()


def test_a_migration_to_memory_is_a_dry_run_that_copies_projects_and_verifies(source: Path) -> None:
    out = io.StringIO()
    assert ops_commands.migrate(source, "memory:", out=out) == 0, out.getvalue()
    assert "copied" in out.getvalue() and "memory: is at seq" in out.getvalue()
