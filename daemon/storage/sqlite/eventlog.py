"""The event log in SQLite: appends with their projections in one transaction, and reads.

`LogStore` is used from one thread only (the writer's, or a command's): it owns the
write connection. sqlite3 errors are turned into StorageError here and go no further.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any, Final, TextIO

import msgspec
import structlog

from tracklog.protocol import errors
from tracklog.protocol.events import (
    DATA_CLASSES,
    DedupRecordedData,
    Metrics,
    RunDeleted,
    RunRestored,
    RunUpdated,
    RunUpdatedData,
    event_type,
)
from tracklog.protocol.messages import (
    Ack,
    Append,
    Check,
    Checked,
    CheckOutcome,
    Duplicate,
    Match,
    StoredEvent,
)

from ... import dedup as dd
from ...dedup_persist import DedupRuntime
from ...projections import LoggedEvent
from ..eventlog import DISK_FULL_MESSAGE, AppendResult, CheckResult, EventLog, LogRequest, WriteResult
from . import verify as verification
from .connect import Durability, connect, ddl_statements, is_disk_full
from .schema import LOG_DDL, PROJECTION_DDL, PROJECTION_TABLES, PROJECTION_VERSION
from .tables import Tables

log = structlog.get_logger("tracklog.store")

_ID_LOOKUP_CHUNK: Final = 500
_REPLAY_BATCH: Final = 5_000
#: Events that only mark a run deleted or not: they never resume a `lost` run.
_MARK_EVENTS: Final = (RunDeleted, RunRestored)

_encode = msgspec.msgpack.Encoder().encode
_decode_any = msgspec.msgpack.Decoder().decode
_DATA_DECODERS: Final = {name: msgspec.msgpack.Decoder(cls) for name, cls in DATA_CLASSES.items()}


def decode_data(type_: str, blob: bytes) -> Any:
    """A logged event's data as its typed struct."""
    return _DATA_DECODERS[type_].decode(blob)


_DEDUP_TYPES: Final = frozenset({"dedup.recorded", "dedup.cleared"})


class SqliteEventLog(EventLog):
    """The log and its projections in one SQLite database (tables in `schema.py`)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        durability: Durability = "normal",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.conn = connect(path, durability)
        self.clock = clock
        self.tables = Tables(self.conn)
        #: The near-duplicate indexes, in memory; loaded by `load_dedup` (or the first check).
        self.dedup = dd.DedupIndexes(None if str(path) == ":memory:" else Path(os.fspath(path) + ".dedup"))
        #: Whether the group being committed returns its events in stored form.
        self._publish = False
        #: Why appends are refused while the disk is full (None when it is not).
        self.disk_full: str | None = None
        self.disk_full_episodes = 0
        self.disk_full_refusals = 0
        try:
            self.conn.executescript(LOG_DDL)
            self.head = self._read_head()
        except sqlite3.Error as exc:
            raise errors.StorageError(f"cannot prepare {path}: {exc}") from exc

    def close(self) -> None:
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
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

    def dedup_loader(
        self, executor: ThreadPoolExecutor, loop: asyncio.AbstractEventLoop, files: Path | None
    ) -> DedupRuntime:
        return DedupRuntime(self, executor, loop, files)

    def _read_head(self) -> int:
        row = self.conn.execute("SELECT max(seq) FROM events").fetchone()
        return int(row[0] or 0)

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
        self._publish = publish
        if not self.dedup.loaded and any(a.__class__ is Check for a in appends):
            self.load_dedup()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            results: list[WriteResult] = [
                self._append_one(a) if a.__class__ is Append else self._check_one(a)  # type: ignore[arg-type]
                for a in appends
            ]
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

    # -- near-duplicate checks --------------------------------------------------

    def load_dedup(self) -> int:
        """Build the in-memory dedup indexes from the dedup_entries table (outside a transaction)."""
        try:
            return self.dedup.load(self.conn)
        except sqlite3.Error as exc:
            raise errors.StorageError(f"cannot read dedup_entries: {exc}") from exc

    def _check_one(self, check: Check) -> CheckResult | errors.ProtocolError:
        """Look each input up and, when asked and new, record it: one atomic step on the writer.

        A later input of the same check (or a later check in the same group) sees what an
        earlier one recorded, so of two racing checks of one text exactly one records.
        """
        kind = check.kind
        namespace = check.namespace
        self.dedup.ensure(self.conn, namespace, kind)  # a check that did not wait for its index to load
        space = check.space if kind == "embedding" else None
        if check.inputs is None:
            inputs = [(check.text, check.value, check.vector, check.item)]
        else:
            inputs = [(i.text, i.value, i.vector, i.item) for i in check.inputs]
        keys: list[Any] = []
        dim = self.dedup.dimension(namespace, space) if space is not None else None
        for position, (text, value, vector, _) in enumerate(inputs):
            where = "check" if check.inputs is None else f"check.inputs[{position}]"
            try:
                if kind == "hash":
                    keys.append(dd.sha256_key(text, value, has_value=value is not msgspec.UNSET))
                elif kind == "simhash":
                    keys.append(
                        dd.simhash(text if value is msgspec.UNSET else dd.canonical_json(value).decode())
                    )
                else:
                    arr = dd.as_unit_vector(vector)  # type: ignore[arg-type]
                    if dim is None:
                        dim = arr.shape[0]
                    elif arr.shape[0] != dim:
                        raise dd.InvalidCheck(
                            f"vector: expected {dim} dimensions for space '{space}', got {arr.shape[0]}"
                        )
                    keys.append(arr)
            except dd.InvalidCheck as exc:
                return errors.BadMessage(f"{where}.{exc}", check.ref)
        now = self.clock()
        run = check.run
        outcomes: list[CheckOutcome] = []
        rows: list[tuple[Any, ...]] = []
        stored: list[StoredEvent] = []
        for key, (_, _, vector, item) in zip(keys, inputs, strict=True):
            found = self.dedup.find(namespace, kind, key, check.threshold, space)
            if found is not None:
                match = Match(found.item, found.run, found.distance, found.seq)
                outcomes.append(CheckOutcome(True, match))
                continue
            if not check.record:
                outcomes.append(CheckOutcome(False, None))
                continue
            self.head += 1
            seq = self.head
            value = vector if kind == "embedding" else key
            data = DedupRecordedData(namespace=namespace, kind=kind, value=value, item=item, space=space)
            self.tables.apply_event(LoggedEvent(seq, "dedup.recorded", run, now, now, data, None))
            self.dedup.record(namespace, kind, key, space, (seq, run, item))
            rows.append((seq, None, "dedup.recorded", run, now, now, _encode(data)))
            if self._publish:
                stored.append(StoredEvent(seq, "dedup.recorded", data, now, now, None, run))
            outcomes.append(CheckOutcome(False, None, seq))
        if rows:
            self.conn.executemany(
                "INSERT INTO events(seq, id, type, run, ts, recorded, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        if check.inputs is None:
            one = outcomes[0]
            checked = Checked(
                duplicate=one.duplicate, match=one.match, seq=self.head, recorded=one.recorded, ref=check.ref
            )
        else:
            checked = Checked(
                duplicate=any(o.duplicate for o in outcomes),
                match=None,
                seq=self.head,
                results=outcomes,
                ref=check.ref,
            )
        return CheckResult(checked, stored)

    def _apply_dedup(self, type_: str, seq: int, run: str | None, data: Any) -> None:
        """Keep the loaded indexes level with a dedup event that came in an append."""
        if type_ == "dedup.cleared":
            self.dedup.clear(data.namespace, data.kind)

    def _append_one(self, append: Append) -> AppendResult:
        resumed = self._resume_lost_runs(append)
        result = self._append_new(append)
        if resumed:
            result.events[:0] = resumed
        return result

    def _resume_lost_runs(self, append: Append) -> list[StoredEvent]:
        """A run marked `lost` that gets events again is running again: append
        `run.updated {status: running}` for it just before them, in the same transaction."""
        # Deleting or restoring a run is not a writer coming back: its status stays.
        runs = {e.run for e in append.events if e.run is not None and e.__class__ not in _MARK_EVENTS}
        if not runs:
            return []
        marks = ",".join("?" * len(runs))
        lost = [
            r
            for (r,) in self.conn.execute(
                f"SELECT run FROM runs WHERE status = 'lost' AND run IN ({marks})", list(runs)
            )
        ]
        if not lost:
            return []
        resume = Append(
            events=[RunUpdated(run=r, data=RunUpdatedData(status="running")) for r in sorted(lost)]
        )
        return self._append_new(resume).events

    def _append_new(self, append: Append) -> AppendResult:
        now = self.clock()
        if append.events:
            fresh = self._append_fresh(append, now)
            if fresh is not None:
                return fresh
        return self._append_checked(append, now)

    def _append_fresh(self, append: Append, now: float) -> AppendResult | None:
        """The common case, an append whose ids are all new: insert first, skipping ids the
        log has, and if none was skipped apply the projections. Returns None (with nothing
        changed) when some id was there, for `_append_checked` to sort out.

        This spares a lookup of every id before inserting: the unique index already does it.
        """
        events = append.events
        conn = self.conn
        first = self.head + 1
        encode = _encode
        rows = [
            (
                first + position,
                event.id,
                "metrics" if event.__class__ is Metrics else event_type(event),
                event.run,
                now if event.ts is None else event.ts,
                now,
                encode(event.data),  # type: ignore[attr-defined]
            )
            for position, event in enumerate(events)
        ]
        before = conn.total_changes
        conn.executemany(
            "INSERT OR IGNORE INTO events(seq, id, type, run, ts, recorded, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        if conn.total_changes - before != len(rows):
            # An id was already in the log (a resend): take this append's rows out again.
            conn.execute("DELETE FROM events WHERE seq >= ?", (first,))
            return None
        apply_event = self.tables.apply_event
        add_metrics = self.tables.add_metrics
        publish = self._publish
        stored: list[StoredEvent] = []
        for row, event in zip(rows, events, strict=True):
            seq, event_id, type_, run, ts, _, _ = row
            data = event.data  # type: ignore[attr-defined]
            if type_ == "metrics":
                add_metrics(run, seq, ts, data)
            else:
                apply_event(LoggedEvent(seq, type_, run, ts, now, data, event_id))
                if type_ in _DEDUP_TYPES and self.dedup.loaded:
                    self._apply_dedup(type_, seq, run, data)
            if publish:
                stored.append(StoredEvent(seq, type_, data, now, ts, event_id, run))
        last = first + len(rows) - 1
        self.head = last
        ack = Ack(
            accepted=len(rows), first_seq=first, last_seq=last, rejected=append.rejected, ref=append.ref
        )
        return AppendResult(ack, stored)

    def _append_checked(self, append: Append, now: float) -> AppendResult:
        """An append some of whose ids may be in the log already: look them up first."""
        events = append.events
        indexes = append.indexes
        known = self._known_ids([e.id for e in events if e.id is not None])
        rows: list[tuple[Any, ...]] = []
        stored: list[StoredEvent] = []
        duplicates: list[Duplicate] = []
        first_seq = self.head + 1
        seq = self.head
        apply_event = self.tables.apply_event
        add_metrics = self.tables.add_metrics
        encode = _encode
        publish = self._publish
        for position, event in enumerate(events):
            index = position if indexes is None else indexes[position]
            event_id = event.id
            if event_id is not None:
                original = known.get(event_id)
                if original is not None:
                    duplicates.append(Duplicate(index, original))
                    continue
            seq += 1
            if event_id is not None:
                known[event_id] = seq
            ts = now if event.ts is None else event.ts
            data = event.data  # type: ignore[attr-defined]
            run = event.run
            if event.__class__ is Metrics:
                type_ = "metrics"
                add_metrics(run, seq, ts, data)  # type: ignore[arg-type]
            else:
                type_ = event_type(event)
                apply_event(LoggedEvent(seq, type_, run, ts, now, data, event_id))
                if type_ in _DEDUP_TYPES and self.dedup.loaded:
                    self._apply_dedup(type_, seq, run, data)
            rows.append((seq, event_id, type_, run, ts, now, encode(data)))
            if publish:
                stored.append(StoredEvent(seq, type_, data, now, ts, event_id, run))
        if rows:
            self.conn.executemany(
                "INSERT INTO events(seq, id, type, run, ts, recorded, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        self.head = seq
        accepted = len(rows)
        ack = Ack(
            accepted=accepted,
            first_seq=first_seq if accepted else None,
            last_seq=seq if accepted else None,
            duplicates=duplicates,
            rejected=append.rejected,
            ref=append.ref,
        )
        return AppendResult(ack, stored)

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
    sql = f"SELECT seq, id, type, run, ts, recorded, data FROM events WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
    return [
        StoredEvent(seq, type_, _decode_any(blob), recorded, ts, id_, run_)
        for seq, id_, type_, run_, ts, recorded, blob in conn.execute(sql, args)
    ]
