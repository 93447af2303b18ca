"""The event log in SQLite: appends with their projections in one transaction, and reads.

`SqliteEventLog` is used from one thread only (the writer's, or a command's): it owns the
write connection. sqlite3 errors are turned into StorageError here and go no further.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any, Final, TextIO

import msgspec
import structlog

from tracklog.protocol import errors
from tracklog.protocol.events import (
    DATA_CLASSES,
    DedupClearedData,
    MetricsData,
)
from tracklog.protocol.messages import (
    Append,
    Check,
    StoredEvent,
)

from ... import dedup as dd
from ... import ingest, liveness
from ...dedup_persist import DedupRuntime
from ...projections import LoggedEvent
from ..eventlog import DISK_FULL_MESSAGE, AppendResult, CheckResult, EventLog, LogRequest, WriteResult
from . import verify as verification
from .connect import Durability, connect, ddl_statements, is_disk_full
from .dedup_entries import SqliteDedupEntries
from .schema import LOG_DDL, PROJECTION_DDL, PROJECTION_TABLES, PROJECTION_VERSION
from .tables import Tables

log = structlog.get_logger("tracklog.store")

_ID_LOOKUP_CHUNK: Final = 500
#: The meta key of a head kept past the last event (`advance_head`).
HEAD_FLOOR: Final = "head_floor"
_DEDUP_TYPES: Final = frozenset({"dedup.recorded", "dedup.cleared"})
#: The page cache of a log opened read-only, in KiB.
_READER_CACHE_KIB: Final = 8192
_REPLAY_BATCH: Final = 5_000

_encode = msgspec.msgpack.Encoder().encode
_decode_any = msgspec.msgpack.Decoder().decode
_DATA_DECODERS: Final = {name: msgspec.msgpack.Decoder(cls) for name, cls in DATA_CLASSES.items()}


def decode_data(type_: str, blob: bytes) -> Any:
    """A logged event's data as its typed struct."""
    return _DATA_DECODERS[type_].decode(blob)


class SqliteEventLog(EventLog):
    """The log and its projections in one SQLite database (tables in `schema.py`)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        durability: Durability = "normal",
        clock: Callable[[], float] = time.time,
        readonly: bool = False,
    ) -> None:
        self.path = Path(path)
        #: Opened read-only (`open_reader`): reads while a daemon writes, never a write.
        self.readonly = readonly
        self.conn = connect(path, durability, readonly=readonly)
        self.clock = clock
        self.tables = Tables(self.conn)
        #: The dedup projection read through the write connection (between transactions).
        self.dedup_entries = SqliteDedupEntries(self.conn)
        #: The near-duplicate indexes, in memory; loaded by `load_dedup` (or the first check).
        self.dedup = dd.DedupIndexes(None if str(path) == ":memory:" else Path(os.fspath(path) + ".dedup"))
        #: Why appends are refused while the disk is full (None when it is not).
        self.disk_full: str | None = None
        self.disk_full_episodes = 0
        self.disk_full_refusals = 0
        try:
            if readonly:
                # A reader streams the log once (exports, a migration's source): a small
                # page cache, so its memory does not grow with the log up to the writer's.
                self.conn.execute(f"PRAGMA cache_size = -{_READER_CACHE_KIB}")
            else:
                self.conn.executescript(LOG_DDL)
            self.head = self._read_head()
        except sqlite3.Error as exc:
            raise errors.StorageError(f"cannot prepare {path}: {exc}") from exc

    def close(self) -> None:
        if self.readonly:
            self.conn.close()
            return
        with contextlib.suppress(sqlite3.Error):  # a log that cannot checkpoint still closes
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.close()

    @property
    def applied_seq(self) -> int:
        try:
            return int(self.meta("applied_seq") or 0)
        except sqlite3.Error as exc:
            raise errors.StorageError(f"cannot read {self.path}: {exc}") from exc

    def read(
        self,
        after: int = 0,
        limit: int = 1000,
        run: str | None = None,
        types: Sequence[str] | None = None,
        to_seq: int | None = None,
    ) -> list[StoredEvent]:
        try:
            return read_events(self.conn, after, limit, run, types, to_seq)
        except sqlite3.Error as exc:
            raise errors.StorageError(f"cannot read the log of {self.path}: {exc}") from exc

    def verify(self, out: TextIO) -> int:
        """Rebuild a snapshot of this database into scratch tables and compare them with a
        second snapshot's live tables (a running daemon may be writing: both come from one
        consistent copy)."""
        try:
            return verification.verify(self.path, out)
        except sqlite3.Error as exc:
            raise errors.StorageError(f"verify failed: {exc}") from exc

    def replay(self, to_seq: int, target: str) -> int:
        try:
            verification.snapshot(self.path, Path(target))
            with closing(sqlite3.connect(target)) as conn:
                conn.execute("DELETE FROM events WHERE seq > ?", (to_seq,))
                # A head a purge kept past the last event holds only up to to_seq too.
                conn.execute("UPDATE meta SET value = min(value, ?) WHERE key = ?", (to_seq, HEAD_FLOOR))
                conn.commit()
            replayed = SqliteEventLog(target)
            try:
                applied = replayed.rebuild()
                replayed.conn.execute("VACUUM")
            finally:
                replayed.close()
        except sqlite3.Error as exc:
            raise errors.StorageError(f"replay failed: {exc}") from exc
        return applied

    @contextlib.contextmanager
    def dedup_snapshot(self) -> Iterator[SqliteDedupEntries]:
        """The dedup projection as of now, on a read-only connection of its own (for the
        loader thread: one read transaction, so one consistent state)."""
        conn = connect(self.path, readonly=True)
        try:
            conn.execute("BEGIN")
            yield SqliteDedupEntries(conn)
        except sqlite3.Error as exc:
            raise errors.StorageError(f"cannot read dedup_entries: {exc}") from exc
        finally:
            conn.close()

    def dedup_loader(
        self, executor: ThreadPoolExecutor, loop: asyncio.AbstractEventLoop, files: Path | None
    ) -> DedupRuntime:
        return DedupRuntime(self, executor, loop, files)

    def _read_head(self) -> int:
        """The last event's seq, or the head a purge kept (`advance_head`) if higher."""
        row = self.conn.execute("SELECT max(seq) FROM events").fetchone()
        return max(int(row[0] or 0), int(self.meta(HEAD_FLOOR) or 0))

    def meta(self, key: str) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, key: str, value: Any) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- start-up ---------------------------------------------------------------

    def catch_up(self) -> int:
        """Bring the projections level with the log; returns how many events were applied.

        A database from another projection version, or with a projection table
        missing, is rebuilt from scratch; one whose tables are behind is caught up.
        """
        try:
            version = self.meta("projection_version")
            present = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            # The FTS5 index `search` is not compared by verify, but it is a projection too.
            missing = [t for t in (*PROJECTION_TABLES, "search") if t not in present]
            if version != PROJECTION_VERSION or missing:
                if version is not None or self.head:
                    # An upgrade (or a table lost): said once, since it takes as long as
                    # `tracklog rebuild` and the daemon listens only after it.
                    log.warning(
                        "rebuilding every projection table from the log",
                        db=str(self.path),
                        projection_version=version,
                        expected=PROJECTION_VERSION,
                        missing=missing or None,
                        events=self.head,
                    )
                return self.rebuild()
            applied = int(self.meta("applied_seq") or 0)
            if applied >= self.head:
                return 0
            return self._replay(applied, self.head)
        except sqlite3.Error as exc:
            raise errors.StorageError(f"catch-up failed: {exc}") from exc

    def rebuild(self, to_seq: int | None = None) -> int:
        """Drop every projection table and replay the log (up to `to_seq`) into new ones."""
        try:
            self.tables.reset()
            self.dedup.reset()
            self.conn.execute("BEGIN IMMEDIATE")
            for table in PROJECTION_TABLES:
                self.conn.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in ddl_statements(PROJECTION_DDL):
                self.conn.execute(statement)
            self._set_meta("projection_version", PROJECTION_VERSION)
            self._set_meta("applied_seq", 0)
            self.conn.execute("COMMIT")
            return self._replay(0, self.head if to_seq is None else min(to_seq, self.head))
        except sqlite3.Error as exc:
            self._rollback()
            raise errors.StorageError(f"rebuild failed: {exc}") from exc

    def _replay(self, after: int, to_seq: int) -> int:
        applied = 0
        position = after
        while position < to_seq:
            rows = self.conn.execute(
                "SELECT seq, id, type, run, ts, recorded, data FROM events WHERE seq > ? AND seq <= ?"
                " ORDER BY seq LIMIT ?",
                (position, to_seq, _REPLAY_BATCH),
            ).fetchall()
            if not rows:
                # The head is past the last event (a purge removed the last ones): the
                # projections are level with it all the same.
                self.conn.execute("BEGIN IMMEDIATE")
                self._set_meta("applied_seq", to_seq)
                self.conn.execute("COMMIT")
                break
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for seq, id_, type_, run, ts, recorded, blob in rows:
                    self.tables.apply_event(
                        LoggedEvent(seq, type_, run, ts, recorded, decode_data(type_, blob), id_)
                    )
                self.tables.flush()
                position = rows[-1][0]
                self._set_meta("applied_seq", position)
                self.conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            applied += len(rows)
        return applied

    def _rollback(self) -> None:
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        self.tables.reset()
        self.dedup.rollback()

    # -- appends ----------------------------------------------------------------

    def append_group(self, appends: Sequence[LogRequest], publish: bool = False) -> list[WriteResult]:
        """Commit many appends (and checks) in one transaction (group commit); one result each.

        If the group fails as a whole, each append is retried in a transaction of its
        own, so one bad append cannot fail the others. A full disk fails them all with
        `disk_full` (no retry: nothing would fit), logged once per episode; the first
        commit that appends again ends the episode. Raises only if nothing was committed.
        """
        head = self.head
        if not self.dedup.loaded and any(a.__class__ is Check for a in appends):
            self.load_dedup()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            results = self._apply_requests(appends, publish)
            self.tables.flush()
            self._set_meta("applied_seq", self.head)
            self.conn.execute("COMMIT")
        except Exception as exc:
            self._rollback()
            self.head = head
            if is_disk_full(exc):
                self._disk_full_refused(exc, len(appends))
                return [errors.DiskFull(DISK_FULL_MESSAGE, a.ref) for a in appends]
            if len(appends) == 1:
                what = "append" if appends[0].__class__ is Append else "check"
                log.error("commit failed", what=what, error=f"{type(exc).__name__}: {exc}", exc_info=exc)
                return [errors.InternalError(f"the {what} could not be committed", appends[0].ref)]
            out: list[WriteResult] = []
            for append in appends:
                out.extend(self.append_group([append], publish))
            return out
        # Committed: from here on nothing may raise, or the caller would commit it twice.
        self.dedup.commit()
        if self.disk_full is not None and self.head > head:
            log.info("disk space is back: appends are committed again", db=str(self.path))
            self.disk_full = None
        return results

    def _disk_full_refused(self, exc: Exception, requests: int) -> None:
        """Count requests refused for a full disk; log the start of an episode once."""
        self.disk_full_refusals += requests
        if self.disk_full is None:
            self.disk_full = f"the disk holding {self.path} is full: appends are refused until space returns"
            self.disk_full_episodes += 1
            log.error("disk full: appends are refused until space returns", db=str(self.path), error=str(exc))

    # -- stored events ----------------------------------------------------------

    def append_stored(self, events: Sequence[StoredEvent]) -> int:
        if not events:
            return 0
        rows, blobs = self._stored_rows(events)
        if int(self.meta("applied_seq") or 0) != self.head or self.meta("projection_version") is None:
            self.catch_up()  # project onto tables level with the log, never onto stale ones
        head = self.head
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(
                "INSERT INTO events(seq, id, type, run, ts, recorded, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(r[0], r[1], r[2], r[3], r[4], r[5], blob) for r, blob in zip(rows, blobs, strict=True)],
            )
            self.head = rows[-1][0]
            self._project(rows)
            self.tables.flush()
            self._set_meta("applied_seq", self.head)
            self.conn.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            self._rollback()
            self.head = head
            raise errors.StorageError(
                self._id_conflict(events) or f"cannot append stored events: {exc}"
            ) from exc
        except sqlite3.Error as exc:
            self._rollback()
            self.head = head
            raise errors.StorageError(f"cannot append stored events to {self.path}: {exc}") from exc
        except BaseException:
            self._rollback()
            self.head = head
            raise
        self.dedup.commit()
        if self.dedup.loaded and any(r[2] in _DEDUP_TYPES for r in rows):
            self.dedup.reset()  # the indexes load again from the table at the next check
        return len(rows)

    def _stored_rows(self, events: Sequence[StoredEvent]) -> tuple[list[ingest.Row], list[bytes]]:
        """Stored events as rows with typed data (for the projections) and their blobs as
        given (so the log holds exactly what was read); StorageError naming a bad seq."""
        rows: list[ingest.Row] = []
        blobs: list[bytes] = []
        last = self.head
        for event in events:
            if event.seq <= last:
                raise errors.StorageError(
                    f"seq {event.seq}: stored events must come in rising seqs past the head ({last})"
                )
            blob = _encode(event.data)
            try:
                data = decode_data(event.type, blob)
            except KeyError:
                raise errors.StorageError(f"seq {event.seq}: unknown event type {event.type!r}") from None
            except msgspec.ValidationError as exc:
                raise errors.StorageError(f"seq {event.seq}: {event.type} data: {exc}") from None
            rows.append((event.seq, event.id, event.type, event.run, event.ts, event.recorded, data))
            blobs.append(blob)
            last = event.seq
        return rows, blobs

    def _id_conflict(self, events: Sequence[StoredEvent]) -> str | None:
        """Which stored event's id the log (or the batch itself) already holds, said."""
        ids = [e.id for e in events if e.id is not None]
        known = self._known_ids(ids)
        seen: dict[str, int] = {}
        for event in events:
            if event.id is None:
                continue
            other = known.get(event.id, seen.get(event.id))
            if other is not None:
                return f"seq {event.seq}: id {event.id!r} is in the log already, at seq {other}"
            seen[event.id] = event.seq
        return None

    def advance_head(self, seq: int) -> None:
        if seq <= self.head:
            return
        if int(self.meta("applied_seq") or 0) != self.head:
            self.catch_up()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            self._set_meta(HEAD_FLOOR, seq)
            self._set_meta("applied_seq", seq)
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise errors.StorageError(f"cannot set the head of {self.path}: {exc}") from exc
        self.head = seq

    # -- near-duplicate checks --------------------------------------------------

    def load_dedup(self) -> int:
        """Build the in-memory dedup indexes from the dedup_entries table (outside a transaction)."""
        try:
            return self.dedup.load(self.dedup_entries)
        except sqlite3.Error as exc:
            raise errors.StorageError(f"cannot read dedup_entries: {exc}") from exc

    def _check_one(self, check: Check, publish: bool) -> CheckResult | errors.ProtocolError:
        """Answer a check (recording it when asked and new): one atomic step on the writer."""
        self.dedup.ensure(
            self.dedup_entries, check.namespace, check.kind
        )  # a check that did not wait for its index
        plan = ingest.plan_check(check, self.dedup, self.head + 1, self.clock(), publish)
        if isinstance(plan, errors.ProtocolError):
            return plan
        self._write(plan.rows)
        self._project(plan.rows)
        return CheckResult(plan.checked, plan.events)

    def _append_one(self, append: Append, publish: bool) -> AppendResult:
        """An append, preceded (in the same transaction) by the resumption of its lost runs."""
        resumed = self._resume_lost_runs(append, publish)
        result = self._append_new(append, publish)
        if resumed:
            result.events[:0] = resumed
        return result

    def _resume_lost_runs(self, append: Append, publish: bool) -> list[StoredEvent]:
        """Append `run.updated {status: running}` for each lost run this append writes to."""
        runs = liveness.resumable_runs(append.events)
        if not runs:
            return []
        marks = ",".join("?" * len(runs))
        lost = [
            r
            for (r,) in self.conn.execute(
                f"SELECT run FROM runs WHERE status = '{liveness.LOST}' AND run IN ({marks})", list(runs)
            )
        ]
        if not lost:
            return []
        return self._append_new(Append(events=liveness.resume_events(lost)), publish).events

    def _append_new(self, append: Append, publish: bool) -> AppendResult:
        """Insert the append's rows presuming its ids new; should the unique index find one
        that is not (a resend), take them out again and plan against the ids the log has.

        This spares a lookup of every id before inserting: the unique index already does it.
        """
        now = self.clock()
        first = self.head + 1
        plan = ingest.plan_fresh(append, first, now, publish)
        if plan.rows and not self._insert_new(plan.rows):
            known = self._known_ids([e.id for e in append.events if e.id is not None])
            plan = ingest.plan_append(append, first, now, known, publish)
            self._write(plan.rows)
        self._project(plan.rows)
        return AppendResult(plan.ack, plan.events)

    def _insert_new(self, rows: list[ingest.Row]) -> bool:
        """Insert rows whose ids are presumed new; False (with nothing left inserted) if the
        log held one of them already."""
        encode = _encode
        encoded = [
            (seq, id_, type_, run, ts, rec, encode(data)) for seq, id_, type_, run, ts, rec, data in rows
        ]
        conn = self.conn
        before = conn.total_changes
        conn.executemany(
            "INSERT OR IGNORE INTO events(seq, id, type, run, ts, recorded, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            encoded,
        )
        if conn.total_changes - before != len(rows):
            conn.execute("DELETE FROM events WHERE seq >= ?", (rows[0][0],))
            return False
        self.head = rows[-1][0]
        return True

    def _write(self, rows: list[ingest.Row]) -> None:
        """Insert rows already planned against the known ids."""
        if not rows:
            return
        encode = _encode
        self.conn.executemany(
            "INSERT INTO events(seq, id, type, run, ts, recorded, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(seq, id_, type_, run, ts, rec, encode(data)) for seq, id_, type_, run, ts, rec, data in rows],
        )
        self.head = rows[-1][0]

    def _project(self, rows: list[ingest.Row]) -> None:
        """Apply the projections of appended rows (and keep the dedup indexes level)."""
        apply_event = self.tables.apply_event
        add_metrics = self.tables.add_metrics
        dedup_loaded = self.dedup.loaded
        for seq, event_id, type_, run, ts, recorded, data in rows:
            if isinstance(data, MetricsData) and run is not None:
                add_metrics(run, seq, ts, data)
            else:
                apply_event(LoggedEvent(seq, type_, run, ts, recorded, data, event_id))
                if dedup_loaded and isinstance(data, DedupClearedData):
                    self.dedup.clear(data.namespace, data.kind)

    def _known_ids(self, ids: list[str]) -> dict[str, int]:
        """Seqs of the ids already in the log (including earlier in this transaction)."""
        found: dict[str, int] = {}
        for start in range(0, len(ids), _ID_LOOKUP_CHUNK):
            chunk = ids[start : start + _ID_LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(
                self.conn.execute(f"SELECT id, seq FROM events WHERE id IN ({marks})", chunk).fetchall()
            )
        return found


def read_events(
    conn: sqlite3.Connection,
    from_seq: int = 0,
    limit: int = 1000,
    run: str | None = None,
    types: Sequence[str] | None = None,
    to_seq: int | None = None,
) -> list[StoredEvent]:
    """Events in stored form, with seq greater than from_seq, oldest first."""
    where = ["seq > ?"]
    args: list[Any] = [from_seq]
    if to_seq is not None:
        where.append("seq <= ?")
        args.append(to_seq)
    if run is not None:
        where.append("run = ?")
        args.append(run)
    if types:
        where.append(f"type IN ({','.join('?' * len(types))})")
        args.extend(types)
    args.append(limit)
    sql = (
        f"SELECT seq, id, type, run, ts, recorded, data FROM events WHERE {' AND '.join(where)}"
        " ORDER BY seq LIMIT ?"
    )
    return [
        StoredEvent(seq, type_, _decode_any(blob), recorded, ts, id_, run_)
        for seq, id_, type_, run_, ts, recorded, blob in conn.execute(sql, args)
    ]
