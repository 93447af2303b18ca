"""The event log's interface: what the writer, the commands and the dedup loader need
of a storage backend, whatever holds the events.

An `EventLog` appends groups of requests with their projections in one transaction
(all of a group or none of it), reads ranges of the log, knows its head and how far its
projections are applied, and can rebuild the projections from the log and check them
against a rebuild. Implementations: `sqlite.eventlog.SqliteEventLog` (the daemon's) and
`memory.MemoryEventLog` (fast tests); `tests/storage/eventlog_suite.py` holds every
implementation to the same behaviour. Backend errors are translated to
`errors.StorageError` (or `errors.DiskFull` results) inside the implementation.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO, assert_never

import msgspec
import structlog

from tracklog.protocol import errors
from tracklog.protocol.events import AnyEvent
from tracklog.protocol.messages import Ack, Append, Check, Checked, StoredEvent

from .. import dedup as dd

if TYPE_CHECKING:
    from ..dedup_persist import DedupRuntime

log = structlog.get_logger("tracklog.store")

DISK_FULL_MESSAGE: Final = "the daemon's disk is full: nothing was committed; send it again later"
UNAVAILABLE_MESSAGE: Final = "the daemon cannot reach its database now: send it again later"


class AppendResult(msgspec.Struct):
    """An append's ack, and its events in stored form (when the caller asked to publish)."""

    ack: Ack
    events: list[StoredEvent]
    #: The runs the append wrote to (set by the writer for frames it decoded itself).
    runs: frozenset[str] = frozenset()


class CheckResult(msgspec.Struct):
    """A check's answer, and the `dedup.recorded` events it wrote (for subscribers)."""

    checked: Checked
    events: list[StoredEvent]


#: What a log commits in groups: appends, and checks (which may append).
LogRequest = Append | Check
WriteResult = AppendResult | CheckResult | errors.ProtocolError


#: A dedup entry as the indexes load it: (seq, space, value as MessagePack, run, item).
DedupRow = tuple[int, str | None, bytes, str | None, str | None]


class DedupEntries(ABC):
    """The dedup projection (every recorded check not cleared), read by the in-memory
    indexes when they load and catch up. One consistent state while in use."""

    @abstractmethod
    def units(self) -> list[tuple[str, str]]:
        """Every (namespace, kind) with entries, in order."""

    @abstractmethod
    def rows(self, namespace: str, kind: str, after: int = 0, upto: int | None = None) -> Iterator[DedupRow]:
        """A unit's entries with after < seq <= upto, in seq order."""

    @abstractmethod
    def seqs(self, namespace: str, kind: str, upto: int) -> list[int]:
        """The seqs of a unit's entries up to `upto`, in order (no values read)."""

    @abstractmethod
    def entry(self, seq: int) -> tuple[str | None, bytes] | None:
        """The (space, value) of the entry recorded at `seq`, or None."""


class EventLog(ABC):
    """The log and its projections, behind append / read / rebuild / verify.

    Used from one thread at a time (the writer's, or a command's).
    """

    #: The seq of the last event in the log (0 when empty).
    head: int
    #: The near-duplicate indexes, in memory, kept level with the dedup projection.
    dedup: dd.DedupIndexes
    #: Why appends are refused while the disk is full (None when it is not).
    disk_full: str | None = None
    disk_full_episodes: int = 0
    disk_full_refusals: int = 0

    @property
    @abstractmethod
    def applied_seq(self) -> int:
        """The last seq whose projections are applied."""

    def append_group(self, requests: Sequence[LogRequest], publish: bool = False) -> list[WriteResult]:
        """Commit many requests in one transaction (group commit); one result each, in order.

        If the group fails as a whole, it is rolled back and each request is retried in a
        transaction of its own, so one request that cannot be committed fails alone. A full
        disk fails them all with `disk_full` (no retry: nothing would fit), logged once per
        episode; the first commit that appends again ends the episode. With `publish`,
        results carry their events in stored form. Backends supply the transaction through
        `_begin_group`, `_commit_group` and `_rollback_group`.
        """
        head = self.head
        self._prepare_group(requests)
        try:
            self._begin_group()
            results = self._apply_requests(requests, publish)
            self._commit_group()
        except Exception as exc:
            self._rollback_group()
            self.head = head
            if self._is_disk_full(exc):
                self._disk_full_refused(exc, len(requests))
                return [errors.DiskFull(DISK_FULL_MESSAGE, r.ref) for r in requests]
            if self._is_unavailable(exc):
                # Retrying each request alone would fail alike: all are `overloaded`, which
                # clients send again (with their ids: one that did commit is a duplicate).
                log.warning("the database is unavailable; the group is refused", error=str(exc))
                return [errors.Overloaded(UNAVAILABLE_MESSAGE, r.ref) for r in requests]
            if len(requests) == 1:
                what = "append" if requests[0].__class__ is Append else "check"
                log.error("commit failed", what=what, error=f"{type(exc).__name__}: {exc}", exc_info=exc)
                return [errors.InternalError(f"the {what} could not be committed", requests[0].ref)]
            out: list[WriteResult] = []
            for request in requests:
                out.extend(self.append_group([request], publish))
            return out
        # Committed: from here on nothing may raise, or the caller would commit it twice.
        self._group_committed()
        if self.disk_full is not None and self.head > head:
            log.info("disk space is back: appends are committed again", db=str(self))
            self.disk_full = None
        return results

    def _prepare_group(self, requests: Sequence[LogRequest]) -> None:  # noqa: B027 (a hook)
        """Before the transaction: whatever the group needs ready (loaded dedup indexes, say)."""

    @abstractmethod
    def _begin_group(self) -> None:
        """Open the group's transaction."""

    @abstractmethod
    def _commit_group(self) -> None:
        """Write what the requests gathered and commit the transaction (raises if it cannot)."""

    @abstractmethod
    def _rollback_group(self) -> None:
        """Undo the open transaction and everything cached since it began (must not raise)."""

    def _group_committed(self) -> None:
        """After the commit: make what the group changed in memory final (must not raise)."""
        self.dedup.commit()

    def _is_disk_full(self, exc: Exception) -> bool:
        """Whether the group failed because the storage is full (then nothing is retried)."""
        return False

    def _is_unavailable(self, exc: Exception) -> bool:
        """Whether the group failed because the database cannot be reached (a lost
        connection; then nothing is retried: the caller's clients send again later)."""
        return False

    def _disk_full_refused(self, exc: Exception, requests: int) -> None:
        """Count requests refused for a full disk; log the start of an episode once."""
        self.disk_full_refusals += requests
        if self.disk_full is None:
            self.disk_full = f"the disk holding {self} is full: appends are refused until space returns"
            self.disk_full_episodes += 1
            log.error("disk full: appends are refused until space returns", db=str(self), error=str(exc))

    def _apply_requests(self, requests: Sequence[LogRequest], publish: bool) -> list[WriteResult]:
        """Inside a backend's transaction: each request applied in order, one result each."""
        results: list[WriteResult] = []
        for request in requests:
            match request:
                case Append():
                    results.append(self._append_one(request, publish))
                case Check():
                    results.append(self._check_one(request, publish))
                case _:
                    assert_never(request)
        return results

    @abstractmethod
    def _append_one(self, append: Append, publish: bool) -> AppendResult:
        """Within the open transaction: one append's events, projected."""

    @abstractmethod
    def _check_one(self, check: Check, publish: bool) -> CheckResult | errors.ProtocolError:
        """Within the open transaction: one check answered (and recorded if asked)."""

    @abstractmethod
    def read(
        self,
        after: int = 0,
        limit: int = 1000,
        run: str | None = None,
        types: Sequence[str] | None = None,
        to_seq: int | None = None,
    ) -> list[StoredEvent]:
        """Events with after < seq <= to_seq (of one run, of some types), oldest first."""

    def append_stored(self, events: Sequence[StoredEvent]) -> int:
        """Append events in stored form as they are, with their projections, in one
        transaction (imports, migrations, purges); returns how many were appended.

        Each keeps its seq, id, ts, recorded and data. Seqs must rise strictly from past
        the head; gaps are allowed (a purged log has them, and so has a copy of it). An
        event id already in the log, an unknown type or data its type does not accept
        fails the whole call with StorageError naming the seq, and nothing is appended.

        Not abstract, so that a backend without it still serves; every backend of
        tests/storage/eventlog_suite.py must have it.
        """
        raise errors.StorageError(f"{type(self).__name__}: appending stored events is not supported")

    def advance_head(self, seq: int) -> None:
        """Make the head at least `seq` though no event holds it, durably: the next
        append takes seq + 1. A purge that removed the last events keeps their seqs
        used, so a subscriber that saw one never misses the event that would reuse it."""
        if seq > self.head:
            raise errors.StorageError(f"{type(self).__name__}: advancing the head is not supported")

    def stream(
        self,
        after: int = 0,
        to_seq: int | None = None,
        run: str | None = None,
        batch: int = 5000,
        types: Sequence[str] | None = None,
    ) -> Iterator[StoredEvent]:
        """Events with after < seq <= to_seq (of one run, of some types), oldest first, read a batch at a
        time so that a log of any size streams in constant memory.

        Reads in separate short reads: consistent up to `to_seq` because events at or
        below the head never change while a daemon appends (fix `to_seq` at the head
        first). Subclasses may read through a snapshot instead.
        """
        position = after
        while True:
            events = self.read(after=position, limit=batch, run=run, types=types, to_seq=to_seq)
            if not events:
                return
            yield from events
            position = events[-1].seq

    @abstractmethod
    def catch_up(self) -> int:
        """Bring the projections level with the log; returns how many events were applied."""

    @abstractmethod
    def rebuild(self, to_seq: int | None = None) -> int:
        """Drop every projection and replay the log (up to `to_seq`) into new ones."""

    @abstractmethod
    def verify(self, out: TextIO) -> int:
        """Compare the live projections with a rebuild from the log (leaving the live ones
        as they are), print the differences to `out`; returns their count."""

    @abstractmethod
    def replay(self, to_seq: int, target: str) -> int:
        """Write a new database at `target` holding the log up to `to_seq` and the state as
        of that seq; returns how many events it holds."""

    @abstractmethod
    def load_dedup(self) -> int:
        """Build the in-memory dedup indexes from the dedup projection; returns entries read."""

    def dedup_loader(
        self, executor: ThreadPoolExecutor, loop: asyncio.AbstractEventLoop, files: Path | None
    ) -> DedupRuntime | None:
        """What loads the dedup indexes in the background after start (and saves the embedding
        ones); None when `load_dedup` is quick enough to run at the first check."""
        return None

    @abstractmethod
    def close(self) -> None:
        """Release the log (an SQLite log checkpoints its WAL)."""

    def append_events(self, events: list[AnyEvent]) -> Ack:
        """Append events outside the server (tests, tools): one append, committed."""
        result = self.append_group([Append(events=events)])[0]
        if isinstance(result, errors.ProtocolError):
            raise result
        if not isinstance(result, AppendResult):
            raise errors.StorageError("an append was answered as a check")
        return result.ack
