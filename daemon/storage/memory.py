"""The event log held in memory: the same behaviour as the SQLite log, for fast tests.

Events are a list in seq order (seq n at index n - 1 until a purge or a copy of a purged
log leaves gaps; reads find their place by bisection), ids a dict; the projection kept here is what
the log itself needs and what `verify` can compare: every run's status (for lost-run
resumption) and the row changes `projections.project` gives for each event. A group is
all or nothing: on an error the lists, dicts and dedup indexes go back to where the group
began, and the requests are retried one by one, as in SQLite.

The read model's tables are not kept here: `MemoryReadModel` (memory_readmodel.py)
projects the committed events itself. A rebuild leaves the dedup indexes as they are
(they already hold what the log recorded).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence
from typing import TextIO

import msgspec

from tracklog.protocol import errors
from tracklog.protocol.events import DATA_CLASSES, DedupClearedData
from tracklog.protocol.messages import Append, Check, StoredEvent

from .. import dedup as dd
from .. import ingest, liveness
from ..projections import AnyChange, LoggedEvent, project
from .eventlog import AppendResult, CheckResult, EventLog

_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder().decode


class MemoryEventLog(EventLog):
    """A log and its projection in Python lists and dicts; gone with the process."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.head = 0
        self.rows: list[ingest.Row] = []
        self.ids: dict[str, int] = {}
        self.run_status: dict[str, str] = {}
        self.changes: list[AnyChange] = []
        self._applied = 0
        self.dedup = dd.DedupIndexes(None)
        self.dedup.loaded = True  # nothing to load: the indexes hold all the log recorded
        #: Where the open group began: (rows, head, changes, run statuses).
        self._mark: tuple[int, int, int, dict[str, str]] = (0, 0, 0, {})

    @property
    def applied_seq(self) -> int:
        return self._applied

    # -- appends --------------------------------------------------------------------

    def __str__(self) -> str:
        return "memory:"

    def _begin_group(self) -> None:
        self._mark = (len(self.rows), self.head, len(self.changes), dict(self.run_status))

    def _commit_group(self) -> None:
        self._applied = self.head

    def _rollback_group(self) -> None:
        self._roll_back(*self._mark)

    def _roll_back(self, rows: int, head: int, changes: int, run_status: dict[str, str]) -> None:
        for row in self.rows[rows:]:
            if row[1] is not None:
                self.ids.pop(row[1], None)
        del self.rows[rows:]
        del self.changes[changes:]
        self.head = head
        self.run_status = run_status
        self.dedup.rollback()

    def _append_one(self, append: Append, publish: bool) -> AppendResult:
        resumed: list[StoredEvent] = []
        lost = [r for r in liveness.resumable_runs(append.events) if self.run_status.get(r) == liveness.LOST]
        if lost:
            resumed = self._append_new(Append(events=liveness.resume_events(lost)), publish).events
        result = self._append_new(append, publish)
        if resumed:
            result.events[:0] = resumed
        return result

    def _append_new(self, append: Append, publish: bool) -> AppendResult:
        now = self.clock()
        first = self.head + 1
        ids = [e.id for e in append.events if e.id is not None]
        if len(set(ids)) == len(ids) and not any(i in self.ids for i in ids):
            plan = ingest.plan_fresh(append, first, now, publish)
        else:
            known = {i: self.ids[i] for i in ids if i in self.ids}
            plan = ingest.plan_append(append, first, now, known, publish)
        self._write(plan.rows)
        return AppendResult(plan.ack, plan.events)

    def _check_one(self, check: Check, publish: bool) -> CheckResult | errors.ProtocolError:
        plan = ingest.plan_check(check, self.dedup, self.head + 1, self.clock(), publish)
        if isinstance(plan, errors.ProtocolError):
            return plan
        self._write(plan.rows)
        return CheckResult(plan.checked, plan.events)

    def _write(self, rows: list[ingest.Row]) -> None:
        for row in rows:
            seq, event_id, data = row[0], row[1], row[6]
            if seq <= self.head:
                raise errors.StorageError(f"seq {seq} does not follow the head {self.head}")
            if event_id is not None:
                if event_id in self.ids:
                    raise errors.StorageError(f"id {event_id!r} is in the log already")
                self.ids[event_id] = seq
            self.rows.append(row)
            self.head = seq
            self._project(row)
            if isinstance(data, DedupClearedData):
                self.dedup.clear(data.namespace, data.kind)

    def append_stored(self, events: Sequence[StoredEvent]) -> int:
        rows: list[ingest.Row] = []
        last = self.head
        seen: set[str] = set()
        for event in events:
            if event.seq <= last:
                raise errors.StorageError(
                    f"seq {event.seq}: stored events must come in rising seqs past the head ({last})"
                )
            if event.id is not None and (event.id in self.ids or event.id in seen):
                where = self.ids.get(event.id)
                raise errors.StorageError(
                    f"seq {event.seq}: id {event.id!r} is in the log already"
                    + (f", at seq {where}" if where is not None else "")
                )
            cls = DATA_CLASSES.get(event.type)
            if cls is None:
                raise errors.StorageError(f"seq {event.seq}: unknown event type {event.type!r}")
            try:
                data = msgspec.convert(event.data, cls)
            except msgspec.ValidationError as exc:
                raise errors.StorageError(f"seq {event.seq}: {event.type} data: {exc}") from None
            rows.append((event.seq, event.id, event.type, event.run, event.ts, event.recorded, data))
            if event.id is not None:
                seen.add(event.id)
            last = event.seq
        mark = (len(self.rows), self.head, len(self.changes), dict(self.run_status))
        try:
            self._write(rows)
        except BaseException:
            self._roll_back(*mark)
            raise
        self._applied = self.head
        self.dedup.commit()
        return len(rows)

    def advance_head(self, seq: int) -> None:
        if seq > self.head:
            self.head = self._applied = seq

    def _project(self, row: ingest.Row) -> None:
        seq, event_id, type_, run, ts, recorded, data = row
        self.changes.extend(project(LoggedEvent(seq, type_, run, ts, recorded, data, event_id)))
        if run is not None:
            self.run_status[run] = liveness.status_after(self.run_status.get(run), type_, data)

    # -- reads ----------------------------------------------------------------------

    def read(
        self,
        after: int = 0,
        limit: int = 1000,
        run: str | None = None,
        types: Sequence[str] | None = None,
        to_seq: int | None = None,
    ) -> list[StoredEvent]:
        last = self.head if to_seq is None else min(to_seq, self.head)
        wanted = set(types) if types else None
        out: list[StoredEvent] = []
        start = bisect.bisect_right(self.rows, after, key=lambda row: row[0])
        for seq, event_id, type_, run_, ts, recorded, data in self.rows[start:]:
            if seq > last:
                break
            if (run is not None and run_ != run) or (wanted is not None and type_ not in wanted):
                continue
            # The stored form, as the SQLite log reads it back: its MessagePack decoded
            # (bytes stay bytes, NaN stays a float).
            out.append(StoredEvent(seq, type_, _unpack(_pack(data)), recorded, ts, event_id, run_))
            if len(out) >= limit:
                break
        return out

    # -- projections ----------------------------------------------------------------

    def catch_up(self) -> int:
        return 0  # applied with every append: never behind

    def _rebuilt(self, to_seq: int) -> tuple[list[AnyChange], dict[str, str]]:
        changes: list[AnyChange] = []
        status: dict[str, str] = {}
        for seq, event_id, type_, run, ts, recorded, data in self.rows:
            if seq > to_seq:
                break
            changes.extend(project(LoggedEvent(seq, type_, run, ts, recorded, data, event_id)))
            if run is not None:
                status[run] = liveness.status_after(status.get(run), type_, data)
        return changes, status

    def rebuild(self, to_seq: int | None = None) -> int:
        upto = self.head if to_seq is None else min(to_seq, self.head)
        self.changes, self.run_status = self._rebuilt(upto)
        self._applied = upto
        return upto

    def verify(self, out: TextIO) -> int:
        changes, status = self._rebuilt(self.head)
        diffs = 0
        if self._applied != self.head:
            print(f"live projection is at seq {self._applied}, the log at {self.head}", file=out)
            diffs += 1
        if changes != self.changes:
            print("the live row changes differ from a rebuild's", file=out)
            diffs += 1
        for run in sorted(set(status) | set(self.run_status)):
            if status.get(run) != self.run_status.get(run):
                print(f"run {run}: live={self.run_status.get(run)} rebuilt={status.get(run)}", file=out)
                diffs += 1
        return diffs

    def replay(self, to_seq: int, target: str) -> int:
        raise errors.StorageError(f"an in-memory log cannot be replayed into {target}")

    def load_dedup(self) -> int:
        return 0

    def close(self) -> None:
        pass
