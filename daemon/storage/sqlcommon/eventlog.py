"""The event log in an SQL database, written once for SQLite and PostgreSQL.

`SqlEventLog` holds what does not depend on the database: appends planned by
`ingest`, inserted with their projections (`Tables`) in the group's transaction, id
lookups, lost-run resumption, near-duplicate checks, range reads, the meta table, and
catching up or rebuilding the projections from the log. A backend subclasses it with its
connection (anything with sqlite3's `execute` / `executemany`, spelled by its `Dialect`),
its transactions and its errors (`db_errors`, translated to StorageError here).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Final

import msgspec
import structlog

from tracklog.protocol import errors
from tracklog.protocol.events import DATA_CLASSES, DedupClearedData, MetricsData
from tracklog.protocol.messages import Append, Check, StoredEvent

from ... import ingest, liveness
from ...projections import LoggedEvent
from ..eventlog import AppendResult, CheckResult, EventLog, LogRequest, WriteResult
from .dedup_entries import SqlDedupEntries
from .dialect import Connection, Dialect
from .schema import PROJECTION_TABLES, PROJECTION_VERSION
from .tables import Tables

log = structlog.get_logger("tracklog.store")

_ID_LOOKUP_CHUNK: Final = 500
#: The meta key of a head kept past the last event (`advance_head`).
HEAD_FLOOR: Final = "head_floor"
_DEDUP_TYPES: Final = frozenset({"dedup.recorded", "dedup.cleared"})
_REPLAY_BATCH: Final = 5_000

_encode = msgspec.msgpack.Encoder().encode
_decode_any = msgspec.msgpack.Decoder().decode
_DATA_DECODERS: Final = {name: msgspec.msgpack.Decoder(cls) for name, cls in DATA_CLASSES.items()}


def decode_data(type_: str, blob: bytes) -> Any:
    """A logged event's data as its typed struct."""
    return _DATA_DECODERS[type_].decode(blob)


class SqlEventLog(EventLog):
    """The log and its projections in one SQL database (tables in `schema.py`)."""

    #: The driver's exception classes: caught and turned into StorageError.
    db_errors: ClassVar[tuple[type[Exception], ...]] = ()
    #: Whether a catch-up or rebuild commits every few thousand events (SQLite), rather than
    #: running in the one transaction the backend opened around it.
    batch_transactions: ClassVar[bool] = True

    def __init__(self, conn: Connection, dialect: Dialect, clock: Callable[[], float] = time.time) -> None:
        self.conn = conn
        self.dialect = dialect
        self.clock = clock
        self.tables = Tables(conn, dialect)
        #: The dedup projection read through the write connection (between transactions).
        self.dedup_entries = SqlDedupEntries(conn, self.db_errors)
        self.disk_full: str | None = None
        self.disk_full_episodes = 0
        self.disk_full_refusals = 0
        #: While a group is applied: which runs it writes to are lost (read at its start).
        self._lost: set[str] = set()

    # -- hooks the backend supplies ---------------------------------------------------

    def _begin_write(self) -> None:
        """Open a write transaction (the one writer while it lasts)."""
        self.conn.execute("BEGIN IMMEDIATE")

    def _abort(self) -> None:
        """Roll back the open transaction, if there is one (must not raise)."""

    def _present_tables(self) -> set[str]:
        """The names of the tables the database has."""
        raise NotImplementedError

    # -- reads --------------------------------------------------------------------------

    @property
    def applied_seq(self) -> int:
        try:
            return int(self.meta("applied_seq") or 0)
        except self.db_errors as exc:
            raise errors.StorageError(f"cannot read {self}: {exc}") from exc

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
        except self.db_errors as exc:
            raise errors.StorageError(f"cannot read the log of {self}: {exc}") from exc

    def _read_head(self) -> int:
        """The last event's seq, or the head a purge kept (`advance_head`) if higher."""
        row = self.conn.execute("SELECT max(seq) FROM events").fetchone()
        return max(int(row[0] or 0), int(self.meta(HEAD_FLOOR) or 0))

    def meta(self, key: str) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, key: str, value: int) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- projections ----------------------------------------------------------------

    def catch_up(self) -> int:
        """Bring the projections level with the log; returns how many events were applied.

        A database from another projection version, or with a projection table
        missing, is rebuilt from scratch; one whose tables are behind is caught up.
        """
        try:
            version = self.meta("projection_version")
            present = self._present_tables()
            missing = [t for t in PROJECTION_TABLES if t not in present]
            if version is None or int(version) != PROJECTION_VERSION or missing:
                if version is not None or self.head:
                    # An upgrade (or a table lost): said once, since it takes as long as
                    # `tracklog rebuild` and the daemon listens only after it.
                    log.warning(
                        "rebuilding every projection table from the log",
                        db=str(self),
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
        except self.db_errors as exc:
            raise errors.StorageError(f"catch-up failed: {exc}") from exc

    def rebuild(self, to_seq: int | None = None) -> int:
        """Drop every projection table and replay the log (up to `to_seq`) into new ones."""
        try:
            self.tables.reset()
            self.dedup.reset()
            if self.batch_transactions:
                self._begin_write()
            for table in PROJECTION_TABLES:
                self.conn.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in self.dialect.projection_ddl():
                self.conn.execute(statement)
            self._set_meta("projection_version", PROJECTION_VERSION)
            self._set_meta("applied_seq", 0)
            if self.batch_transactions:
                self.conn.execute("COMMIT")
            return self._replay(0, self.head if to_seq is None else min(to_seq, self.head))
        except self.db_errors as exc:
            self._rollback()
            raise errors.StorageError(f"rebuild failed: {exc}") from exc

    def _replay(self, after: int, to_seq: int) -> int:
        applied = 0
        position = after
        for rows in log_batches(self.conn, after, to_seq):
            if self.batch_transactions:
                self._begin_write()
            try:
                for seq, id_, type_, run, ts, recorded, blob in rows:
                    self.tables.apply_event(
                        LoggedEvent(seq, type_, run, ts, recorded, decode_data(type_, blob), id_)
                    )
                self.tables.flush()
                self._set_meta("applied_seq", rows[-1][0])
                if self.batch_transactions:
                    self.conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            applied += len(rows)
            position = rows[-1][0]
        if position < to_seq:
            # The head is past the last event (a purge removed the last ones): the
            # projections are level with it all the same.
            if self.batch_transactions:
                self._begin_write()
            self._set_meta("applied_seq", to_seq)
            if self.batch_transactions:
                self.conn.execute("COMMIT")
        return applied

    def _rollback(self) -> None:
        self._abort()
        self.tables.reset()
        self.dedup.rollback()

    # -- appends ----------------------------------------------------------------

    def _prepare_group(self, requests: Sequence[LogRequest]) -> None:
        if not self.dedup.loaded and any(r.__class__ is Check for r in requests):
            self.load_dedup()

    def _begin_group(self) -> None:
        self._begin_write()

    def _commit_group(self) -> None:
        self.tables.flush()
        self._set_meta("applied_seq", self.head)
        self.conn.execute("COMMIT")

    def _rollback_group(self) -> None:
        self._rollback()

    # -- stored events: imports, migrations, purges ------------------------------------

    def append_stored(self, events: Sequence[StoredEvent]) -> int:
        """As `EventLog.append_stored`. The seqs are checked against the head read inside the
        write transaction (on PostgreSQL, under the log's lock: another daemon may have
        appended since), and the data is stored as given, so the log holds exactly what was
        read."""
        if not events:
            return 0
        rows, blobs = self._stored_rows(events)
        try:
            if int(self.meta("applied_seq") or 0) != self.head or self.meta("projection_version") is None:
                self.catch_up()  # project onto tables level with the log, never onto stale ones
        except self.db_errors as exc:
            raise errors.StorageError(f"cannot append stored events to {self}: {exc}") from exc
        head = self.head
        try:
            self._begin_write()
            if rows[0][0] <= self.head:
                raise errors.StorageError(
                    f"seq {rows[0][0]}: stored events must come in rising seqs past the head ({self.head})"
                )
            self._insert_events(
                [(r[0], r[1], r[2], r[3], r[4], r[5], blob) for r, blob in zip(rows, blobs, strict=True)]
            )
            self.head = rows[-1][0]
            self._project(rows)
            self.tables.flush()
            self._set_meta("applied_seq", self.head)
            self.conn.execute("COMMIT")
        except self.db_errors as exc:
            self._rollback()
            self.head = head
            conflict = self._id_conflict(events)
            raise errors.StorageError(conflict or f"cannot append stored events to {self}: {exc}") from exc
        except BaseException:
            self._rollback()
            self.head = head
            raise
        self._group_committed()
        if self.dedup.loaded and any(r[2] in _DEDUP_TYPES for r in rows):
            self.dedup.reset()  # the indexes load again from the table at the next check
        return len(rows)

    def _stored_rows(self, events: Sequence[StoredEvent]) -> tuple[list[ingest.Row], list[bytes]]:
        """Stored events as rows with typed data (for the projections) and their blobs as
        given; StorageError naming the first bad seq (one not past the head this log last
        saw or not rising, an unknown type, data its type does not accept)."""
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
        """Which stored event's id the log (or the batch itself) already holds, said (None
        when none does, or the log cannot be read: the caller's error stands then)."""
        try:
            known = self._known_ids([e.id for e in events if e.id is not None])
        except self.db_errors:
            return None
        finally:
            self._abort()  # the lookup's implicit transaction, if the driver opened one
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
        """As `EventLog.advance_head`: kept in meta as `head_floor`, set under the write
        transaction (on PostgreSQL, the log's lock), never lowered."""
        if seq <= self.head:
            return
        try:
            if int(self.meta("applied_seq") or 0) != self.head:
                self.catch_up()
            self._begin_write()
            if seq > self.head:
                self._set_meta(HEAD_FLOOR, seq)
                self._set_meta("applied_seq", seq)
            self.conn.execute("COMMIT")
        except self.db_errors as exc:
            self._rollback()
            raise errors.StorageError(f"cannot set the head of {self}: {exc}") from exc
        self.head = max(self.head, seq)
        self._group_committed()

    # -- near-duplicate checks --------------------------------------------------

    def load_dedup(self) -> int:
        """Build the in-memory dedup indexes from the dedup_entries table (outside a transaction)."""
        try:
            return self.dedup.load(self.dedup_entries)
        except self.db_errors as exc:
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

    def _apply_requests(self, requests: Sequence[LogRequest], publish: bool) -> list[WriteResult]:
        """Read once which of the group's runs are lost (one query, not one per append: a
        round trip counts on a server), then follow their status through the group's rows."""
        runs: set[str] = set()
        for request in requests:
            if request.__class__ is Append:
                runs |= liveness.resumable_runs(request.events)
        self._lost = self._lost_among(runs)
        try:
            return super()._apply_requests(requests, publish)
        finally:
            self._lost = set()

    def _lost_among(self, runs: set[str]) -> set[str]:
        """Which of these runs the runs table has as lost."""
        lost: set[str] = set()
        names = sorted(runs)
        for start in range(0, len(names), _ID_LOOKUP_CHUNK):
            chunk = names[start : start + _ID_LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            lost.update(
                r
                for (r,) in self.conn.execute(
                    f"SELECT run FROM runs WHERE status = '{liveness.LOST}' AND run IN ({marks})", chunk
                )
            )
        return lost

    def _resume_lost_runs(self, append: Append, publish: bool) -> list[StoredEvent]:
        """Append `run.updated {status: running}` for each lost run this append writes to."""
        lost = self._lost.intersection(liveness.resumable_runs(append.events))
        if not lost:
            return []
        return self._append_new(Append(events=liveness.resume_events(lost)), publish).events

    def _append_new(self, append: Append, publish: bool) -> AppendResult:
        """Insert the append's rows presuming its ids new; should one not be (a resend),
        plan again against the ids the log has."""
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
        """Insert rows whose ids are presumed new; False (with nothing inserted) if one of
        them is in the log already or twice among them. Looks the ids up first; SQLite
        lets its unique index find them instead."""
        ids = [row[1] for row in rows if row[1] is not None]
        if ids and (len(set(ids)) != len(ids) or self._known_ids(ids)):
            return False
        self._write(rows)
        return True

    def _write(self, rows: list[ingest.Row]) -> None:
        """Insert rows already planned against the known ids."""
        if not rows:
            return
        encode = _encode
        self._insert_events(
            [(seq, id_, type_, run, ts, rec, encode(data)) for seq, id_, type_, run, ts, rec, data in rows]
        )
        self.head = rows[-1][0]

    def _insert_events(self, rows: list[tuple[Any, ...]]) -> None:
        """Insert encoded rows into events (the backend's fastest way to add many)."""
        self.conn.executemany(
            "INSERT INTO events(seq, id, type, run, ts, recorded, data) VALUES (?, ?, ?, ?, ?, ?, ?)", rows
        )

    def _project(self, rows: list[ingest.Row]) -> None:
        """Apply the projections of appended rows (and keep the dedup indexes level)."""
        apply_event = self.tables.apply_event
        add_metrics = self.tables.add_metrics
        dedup_loaded = self.dedup.loaded
        for seq, event_id, type_, run, ts, recorded, data in rows:
            # `__class__ is`, not isinstance: one check per event, and data types are final.
            if data.__class__ is MetricsData and run is not None:
                add_metrics(run, seq, ts, data)
            else:
                apply_event(LoggedEvent(seq, type_, run, ts, recorded, data, event_id))
                if dedup_loaded and isinstance(data, DedupClearedData):
                    self.dedup.clear(data.namespace, data.kind)
                if run is not None:  # a run marked lost, or back, within the group
                    before = liveness.LOST if run in self._lost else liveness.RUNNING
                    if liveness.status_after(before, type_, data) == liveness.LOST:
                        self._lost.add(run)
                    else:
                        self._lost.discard(run)

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


def log_batches(conn: Connection, after: int, to_seq: int) -> Iterator[list[Any]]:
    """The log's rows (seq, id, type, run, ts, recorded, data as stored) with
    after < seq <= to_seq, in seq order, a few thousand at a time."""
    position = after
    while position < to_seq:
        rows = conn.execute(
            "SELECT seq, id, type, run, ts, recorded, data FROM events WHERE seq > ? AND seq <= ?"
            " ORDER BY seq LIMIT ?",
            (position, to_seq, _REPLAY_BATCH),
        ).fetchall()
        if not rows:
            return
        yield rows
        position = rows[-1][0]


def read_events(
    conn: Connection,
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
