"""The event log in PostgreSQL, for one daemon or several on one database.

The appends, reads and projections are SQLite's code (`sqlcommon.eventlog.SqlEventLog`),
spelled for PostgreSQL by its dialect. What is PostgreSQL's own is how several daemons
share one log:

- Every write transaction (a group commit, a catch-up, a rebuild) first takes one
  transaction-level advisory lock, `pg_advisory_xact_lock(LOG_LOCK)`, held until it
  commits: the group commits of all daemons happen one after the other, so `seq` (the
  head read under the lock, plus one) is gapless and strictly increasing in commit
  order. A sequence would leave gaps on rollback and hand out numbers out of commit order.
- Under the lock the daemon reads the head. If another daemon committed since this one
  last did, what this one holds in memory is brought level first: the projection
  batching (open metric chunks, run counters) is dropped to be read again from the
  tables, and the in-memory dedup indexes take in the `dedup.recorded` / `dedup.cleared`
  events the others logged. Then ids are looked up and checks answered: a resend through
  another daemon is a duplicate naming the original seq, and of two daemons checking the
  same near-duplicate at once exactly one records it.
- DDL (creating the schema, rebuilding the projections) runs under the same lock, in
  one transaction: PostgreSQL's DDL is transactional, so a second daemon starting at the
  same moment waits and then finds the tables made.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Final, TextIO

import psycopg
import structlog

from tracklog.protocol import errors
from tracklog.protocol.events import DedupClearedData, DedupRecordedData
from tracklog.protocol.messages import Ack, Append

from ... import dedup as dd
from ...liveness import LostMark
from ...projections import LoggedEvent
from ..eventlog import AppendResult, LogRequest, WriteResult
from ..sqlcommon.dedup_entries import SqlDedupEntries
from ..sqlcommon.dialect import POSTGRES
from ..sqlcommon.eventlog import HEAD_FLOOR, SqlEventLog, decode_data, log_batches
from ..sqlcommon.schema import LOG_DDL
from ..sqlcommon.tables import Tables
from ..sqlcommon.verify import compare_tables
from . import leases
from .connect import PgConnection, PgSettings, connect, is_disk_full, redact

log = structlog.get_logger("tracklog.store")

#: The advisory lock every write transaction on the log takes (any number: ours alone).
LOG_LOCK: Final = 0x747261636B6C6F67  # "tracklog"
#: The schema a verify rebuilds into (inside a transaction that is rolled back).
VERIFY_SCHEMA: Final = "tracklog_verify"
EVENT_COLUMNS: Final = ("seq", "id", "type", "run", "ts", "recorded", "data")
#: The PostgreSQL types of the events columns, for COPY in binary.
EVENT_TYPES: Final = ("int8", "text", "text", "text", "float8", "float8", "bytea")
#: The channel every commit that appends notifies (payload: the new head), in its
#: transaction: delivered to the listening daemons when it commits.
CHANNEL: Final = "tracklog_log"
#: Seconds a run's lease taken in a group commit counts as fresh enough not to renew it
#: in the next ones (the daemon's periodic renewal keeps it alive meanwhile).
LEASE_IN_GROUP_SECONDS: Final = 1.0


def new_daemon_id() -> str:
    """A name for this daemon among those sharing the database: host, pid and a nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class PgEventLog(SqlEventLog):
    """The log and its projections in one PostgreSQL database, shared with other daemons."""

    db_errors: ClassVar[tuple[type[Exception], ...]] = (psycopg.Error,)
    batch_transactions: ClassVar[bool] = False
    conn: PgConnection

    def __init__(
        self, url: str, clock: Callable[[], float] = time.time, daemon_id: str | None = None
    ) -> None:
        self.url = url
        #: This daemon's name in the writer leases.
        self.daemon_id = daemon_id or new_daemon_id()
        #: Runs written in the open group, and when this log last leased each (monotonic).
        self._group_runs: set[str] = set()
        self._leased_at: dict[str, float] = {}
        self._group_head = 0
        self.settings = PgSettings.from_url(url)
        super().__init__(PgConnection(connect(self.settings)), POSTGRES, clock)
        self.dedup = dd.DedupIndexes(None)
        #: The head this daemon's in-memory state (batching, dedup indexes) reflects.
        self._seen = 0
        try:
            self.conn.execute("BEGIN")
            self.conn.execute("SELECT pg_advisory_xact_lock(?)", (LOG_LOCK,))
            for statement in POSTGRES.ddl(LOG_DDL):
                self.conn.execute(statement)
            self.conn.execute(leases.LEASES_DDL)
            self.head = self._seen = self._read_head()
            self.conn.execute("COMMIT")
        except psycopg.Error as exc:
            self.conn.close()
            raise errors.StorageError(f"cannot prepare {self}: {exc}") from exc

    def __str__(self) -> str:
        return redact(self.url)

    def close(self) -> None:
        self._abort()
        self.conn.close()

    # -- transactions -------------------------------------------------------------

    def _begin_write(self) -> None:
        self.conn.execute("BEGIN")
        self.conn.execute("SELECT pg_advisory_xact_lock(?)", (LOG_LOCK,))
        self._level()

    def _abort(self) -> None:
        with contextlib.suppress(psycopg.Error):
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """A write transaction under the log's lock, committed at the end (or joined, when
        one is open already: a catch-up that rebuilds)."""
        if self.conn.in_transaction:
            yield
            return
        self._begin_write()
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._seen = self.head

    # -- several daemons: notifications, leases, reconnects ------------------------------

    def append_group(self, requests: Sequence[LogRequest], publish: bool = False) -> list[WriteResult]:
        """As the base's, on a connection opened again first if the last one was lost (a
        restart of PostgreSQL): while none can be, every request is `overloaded`."""
        raw = self.conn.raw
        if (raw.closed or raw.broken) and not self._reconnect():
            return [errors.Overloaded("the daemon cannot reach its database now", r.ref) for r in requests]
        return super().append_group(requests, publish)

    def _reconnect(self) -> bool:
        """A new connection in place of a lost one; False (and the old one kept) if none."""
        try:
            raw = connect(self.settings)
        except errors.StorageError as exc:
            log.warning("cannot reconnect to the database", error=str(exc))
            return False
        with contextlib.suppress(psycopg.Error):
            self.conn.close()
        self.conn = PgConnection(raw)
        self.tables = Tables(self.conn, POSTGRES)
        self.dedup_entries = SqlDedupEntries(self.conn, self.db_errors)
        self._leased_at.clear()
        log.info("reconnected to the database", db=str(self))
        return True

    def _is_unavailable(self, exc: Exception) -> bool:
        raw = self.conn.raw
        return isinstance(exc, psycopg.OperationalError) and (raw.closed or raw.broken)

    def _begin_group(self) -> None:
        self._group_runs.clear()
        super()._begin_group()
        self._group_head = self.head

    def _append_one(self, append: Append, publish: bool) -> AppendResult:
        """As the base's; a daemon's lost mark keeps only the runs no other daemon serves
        (and none written earlier in this group: their lease is taken as it commits)."""
        if isinstance(append, LostMark):
            runs = {e.run for e in append.events if e.run is not None} - self._group_runs
            markable = leases.markable(self.conn, runs, append.daemon, append.lost_after)
            kept = [e for e in append.events if e.run in markable]
            if not kept:
                return AppendResult(Ack(accepted=0, ref=append.ref), [])
            append = Append(events=kept, ref=append.ref)
        else:
            self._group_runs.update(e.run for e in append.events if e.run is not None)
        return super()._append_one(append, publish)

    def _commit_group(self) -> None:
        """Take this daemon's leases on the runs written, and notify the other daemons of
        the new head, in the group's transaction (the notification goes out on commit)."""
        now = time.monotonic()
        due = [r for r in self._group_runs if now - self._leased_at.get(r, -1e9) > LEASE_IN_GROUP_SECONDS]
        if due:
            leases.renew(self.conn, self.daemon_id, due)
            for run in due:
                self._leased_at[run] = now
        if self.head > self._group_head:
            self.conn.execute("SELECT pg_notify(?, ?)", (CHANNEL, str(self.head)))
        super()._commit_group()

    def _rollback_group(self) -> None:
        super()._rollback_group()
        self._leased_at.clear()  # leases taken in the group were undone with it

    def _level(self) -> None:
        """Under the lock: read the head, and bring this daemon's memory level with what
        other daemons committed since it last wrote."""
        head = self._read_head()
        if head != self._seen:
            self.tables.reset()
            if head < self._seen:  # the log was replaced under us: read everything again
                self.dedup.reset()
            elif self.dedup.loaded:
                self._level_dedup(self._seen, head)
            self.dedup.commit()  # committed by others: never undone by our rollback
            self._seen = head
        self.head = head

    def _level_dedup(self, after: int, upto: int) -> None:
        """Take the dedup events other daemons logged in (after, upto] into the indexes."""
        rows = self.conn.execute(
            "SELECT seq, run, type, data FROM events WHERE seq > ? AND seq <= ?"
            " AND type IN ('dedup.recorded', 'dedup.cleared') ORDER BY seq",
            (after, upto),
        )
        for seq, run, type_, blob in rows:
            data = decode_data(type_, blob)
            if isinstance(data, DedupRecordedData):
                if (data.namespace, data.kind) not in self.dedup.pending:  # a loading unit reads its rows
                    self.dedup.record(
                        data.namespace, data.kind, data.value, data.space, (seq, run, data.item)
                    )
            elif isinstance(data, DedupClearedData):
                self.dedup.clear(data.namespace, data.kind)

    def load_dedup(self) -> int:
        """As SQLite's, under the log's lock: the indexes then hold the table as of the head
        this daemon has seen, and what others record later is taken in by `_level`, once."""
        if self.conn.in_transaction:
            return super().load_dedup()
        try:
            with self._transaction():
                return super().load_dedup()
        except psycopg.Error as exc:
            raise errors.StorageError(f"cannot read dedup_entries: {exc}") from exc

    def _insert_events(self, rows: list[tuple[Any, ...]]) -> None:
        self.conn.copy_rows("events", EVENT_COLUMNS, EVENT_TYPES, rows)

    def _group_committed(self) -> None:
        super()._group_committed()
        self._seen = self.head

    def _is_disk_full(self, exc: Exception) -> bool:
        return is_disk_full(exc)

    def _present_tables(self) -> set[str]:
        return {
            name
            for (name,) in self.conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        }

    # -- projections ----------------------------------------------------------------

    def catch_up(self) -> int:
        """As SQLite's, in one transaction under the log's lock (another daemon starting at
        the same moment waits, then finds the projections level)."""
        try:
            with self._transaction():
                return super().catch_up()
        except psycopg.Error as exc:
            raise errors.StorageError(f"catch-up failed: {exc}") from exc

    def rebuild(self, to_seq: int | None = None) -> int:
        try:
            with self._transaction():
                return super().rebuild(to_seq)
        except psycopg.Error as exc:
            raise errors.StorageError(f"rebuild failed: {exc}") from exc

    def verify(self, out: TextIO) -> int:
        """Rebuild the projections from the log into a scratch schema and compare them with
        the live tables, all in one REPEATABLE READ transaction on a connection of its own
        (one consistent state while daemons write; rolled back, so nothing is left)."""
        conn = PgConnection(connect(self.settings))
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            live_schema = one(conn, "SELECT current_schema()")
            # The head, as `_read_head` has it: past the last event when a purge kept it so.
            head = int(
                one(
                    conn,
                    "SELECT greatest((SELECT coalesce(max(seq), 0) FROM events),"
                    f" (SELECT coalesce(max(value), 0) FROM meta WHERE key = '{HEAD_FLOOR}'))",
                )
            )
            applied = conn.execute("SELECT value FROM meta WHERE key = 'applied_seq'").fetchone()
            if applied is None or int(applied[0] or 0) != head:
                print(f"live tables are at seq {applied and applied[0]}, the log at {head}", file=out)
                return 1
            conn.execute(f"CREATE SCHEMA {VERIFY_SCHEMA}")
            conn.execute(f"SET LOCAL search_path TO {VERIFY_SCHEMA}, {live_schema}")
            for statement in POSTGRES.projection_ddl():
                conn.execute(statement)
            replay_into(conn, Tables(conn, POSTGRES), 0, head)
            diffs = compare_tables(conn, conn, out, live_schema=live_schema, rebuilt_schema=VERIFY_SCHEMA)
        except psycopg.Error as exc:
            raise errors.StorageError(f"verify failed: {exc}") from exc
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.execute("ROLLBACK")
            conn.close()
        if diffs:
            print(f"verify: {diffs} differences between the live tables and a rebuild from the log", file=out)
        else:
            print(f"verify: the live tables equal a rebuild from the log ({head} events)", file=out)
        return diffs

    def replay(self, to_seq: int, target: str) -> int:
        """Copy the log up to `to_seq` into the empty database `target` (any backend URL)
        and build its projections there."""
        from .. import open_backend

        backend = open_backend(target)
        if backend.exists():
            raise errors.StorageError(f"{target}: there is a database there already")
        replayed = backend.open_log()
        if not isinstance(replayed, SqlEventLog):
            replayed.close()
            raise errors.StorageError(f"{target}: cannot replay into this backend")
        try:
            copy_events(self.conn, replayed, to_seq)
            # A head a purge kept past the last event holds only up to to_seq in the copy.
            floor = min(to_seq, int(self.meta(HEAD_FLOOR) or 0))
            if floor > replayed.head:
                replayed._begin_write()
                replayed._set_meta(HEAD_FLOOR, floor)
                replayed.conn.execute("COMMIT")
                replayed.head = floor
            return replayed.rebuild()
        except psycopg.Error as exc:
            raise errors.StorageError(f"replay failed: {exc}") from exc
        finally:
            replayed.close()


def one(conn: PgConnection, sql: str) -> Any:
    """The one value a statement returns."""
    row = conn.execute(sql).fetchone()
    if row is None:
        raise errors.StorageError(f"no row from {sql}")
    return row[0]


def replay_into(conn: PgConnection, tables: Tables, after: int, to_seq: int) -> int:
    """Apply the log's events with after < seq <= to_seq to `tables` (inside the caller's
    transaction); returns how many."""
    applied = 0
    for rows in log_batches(conn, after, to_seq):
        for seq, id_, type_, run, ts, recorded, blob in rows:
            tables.apply_event(LoggedEvent(seq, type_, run, ts, recorded, decode_data(type_, blob), id_))
        tables.flush()
        applied += len(rows)
    return applied


def copy_events(source: PgConnection, target: SqlEventLog, to_seq: int) -> int:
    """Copy the log's rows up to `to_seq`, as stored, into another SQL log's events table."""
    copied = 0
    for rows in log_batches(source, 0, to_seq):
        target._begin_write()
        target._insert_events([tuple(row) for row in rows])
        target.conn.execute("COMMIT")
        target.head = rows[-1][0]
        copied += len(rows)
    return copied
