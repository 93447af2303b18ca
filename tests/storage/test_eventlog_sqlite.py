"""The event log contract, held against the SQLite backend."""

from __future__ import annotations

from pathlib import Path

from tracklog.daemon.storage.eventlog import EventLog
from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog
from tracklog.protocol.messages import Append, StoredEvent

from .eventlog_suite import NOW, EventLogContract, metrics


class TestSqliteEventLog(EventLogContract):
    def open_log(self, tmp_path: Path) -> EventLog:
        return SqliteEventLog(tmp_path / "log.db", clock=lambda: NOW)

    def test_a_group_reads_which_of_its_runs_are_lost_once_not_once_per_append(self, tmp_path: Path) -> None:
        log = SqliteEventLog(tmp_path / "log.db", clock=lambda: NOW)
        try:
            log.catch_up()
            statements: list[str] = []
            log.conn.set_trace_callback(statements.append)
            log.append_group([Append(events=[metrics(f"r{i}", 0)]) for i in range(5)])
            assert sum("FROM runs WHERE status" in s for s in statements) == 1
        finally:
            log.close()

def test_an_advanced_head_survives_a_reopen_and_a_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    log = SqliteEventLog(path, clock=lambda: NOW)
    log.catch_up()
    log.append_events([])
    log.advance_head(5)
    log.close()
    again = SqliteEventLog(path, clock=lambda: NOW)
    try:
        assert again.catch_up() == 0 and (again.head, again.applied_seq) == (5, 5)
        again.rebuild()
        assert again.applied_seq == 5
    finally:
        again.close()


def test_a_replay_of_a_log_with_an_advanced_head_holds_the_head_as_of_its_seq(tmp_path: Path) -> None:
    log = SqliteEventLog(tmp_path / "log.db", clock=lambda: NOW)
    log.catch_up()
    log.append_stored([StoredEvent(1, "run.deleted", {}, NOW, NOW, None, "r")])
    log.advance_head(9)
    try:
        assert log.replay(4, str(tmp_path / "as-of-4.db")) == 1
    finally:
        log.close()
    replayed = SqliteEventLog(tmp_path / "as-of-4.db")
    try:
        assert (replayed.head, replayed.applied_seq) == (4, 4)
    finally:
        replayed.close()
