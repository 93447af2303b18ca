"""The writer: one task, one thread, one write connection, group commit.

Appends from every connection queue here. While a transaction commits on the writer's
thread, new appends gather in the queue; the next transaction takes all of them. So
there is never lock contention, and the cost of a commit is shared by everything that
arrived while the previous one ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, assert_never, cast

import msgspec
import structlog

from tracklog.protocol import errors
from tracklog.protocol.messages import Ack, Append, Check, Codec, StoredEvent

from .dedup_persist import DedupRuntime
from .histogram import LatencyHistogram
from .ingest import AppendRequest, CheckRequest, RawAppendRequest, WriteRequest, weight
from .storage import Backend
from .storage.eventlog import AppendResult, CheckResult, EventLog, LogRequest, WriteResult

log = structlog.get_logger("tracklog.writer")

#: Events in one group commit, at most: bounds the latency of the appends in it.
MAX_GROUP_EVENTS: Final = 50_000
#: Appends waiting for the writer before connections stop reading (backpressure).
MAX_QUEUED_APPENDS: Final = 1_000
#: A request waiting this long for its commit means the writer is stuck: /healthz fails.
#: (A full queue of the largest appends commits in well under this.)
STUCK_AFTER_SECONDS: Final = 60.0

CommitListener = Callable[[list[StoredEvent]], None]
#: What an append's (or a check's) future resolves to: the writer answers each request
#: kind only with its own result or an error (see `_commit`), so the narrowing holds.
_AppendAnswer = asyncio.Future[AppendResult | errors.ProtocolError]
_CheckAnswer = asyncio.Future[CheckResult | errors.ProtocolError]


class WriterStats:
    def __init__(self) -> None:
        self.events = 0
        self.appends = 0
        self.commits = 0
        self.duplicates = 0
        self.rejected = 0
        self.commit_seconds = 0.0
        #: Seconds from an append's submit to its commit (what a client waits for its ack).
        self.ack_latency = LatencyHistogram()


class Writer:
    """Owns the event log; everything that writes goes through `submit`."""

    def __init__(self, backend: Backend, codec: Codec | None = None) -> None:
        self.backend = backend
        self.codec = codec or Codec()
        self.head = 0
        self.stats = WriterStats()
        self.listeners: list[CommitListener] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracklog-writer")
        self._queue: asyncio.Queue[tuple[WriteRequest, asyncio.Future[WriteResult]]] = asyncio.Queue(
            MAX_QUEUED_APPENDS
        )
        self._store: EventLog | None = None
        self._task: asyncio.Task[None] | None = None
        #: When each request not yet answered was submitted, oldest first (dicts keep order).
        self._submitted: dict[asyncio.Future[Any], float] = {}
        #: Exceptions the writer caught around a request or a group (each one a bug).
        self.failures = 0
        #: Seconds a request may wait before the writer counts as stuck.
        self.stuck_after = STUCK_AFTER_SECONDS
        #: Loads the dedup indexes after start and saves the embedding ones (dedup_persist).
        self.dedup: DedupRuntime | None = None

    async def start(self) -> int:
        """Open the log and catch its projections up; returns how many events were replayed."""
        loop = asyncio.get_running_loop()
        self._store = await loop.run_in_executor(self._executor, self.backend.open_log)
        replayed = await loop.run_in_executor(self._executor, self._store.catch_up)
        # The dedup indexes load in the background; a check waits only for its own (see `dedup_ready`).
        self.dedup = self._store.dedup_loader(self._executor, loop, self.backend.files_dir)
        if self.dedup is not None:
            await loop.run_in_executor(self._executor, self.dedup.begin)
            self.dedup.start()
        self.head = self._store.head
        self._task = asyncio.create_task(self._run(), name="tracklog-writer")
        return replayed

    async def submit(self, append: Append) -> asyncio.Future[AppendResult | errors.ProtocolError]:
        """Queue an append; the future resolves once it is committed (or failed)."""
        return cast(_AppendAnswer, await self._enqueue(AppendRequest(append)))

    async def submit_frame(self, frame: bytes | str) -> asyncio.Future[AppendResult | errors.ProtocolError]:
        """Queue an `append` frame still undecoded: the writer's thread decodes and checks
        it with the rest of its group, so the event loop only moves bytes and one thread,
        not two, does the CPU work of ingest (two would mostly take turns at the GIL)."""
        return cast(_AppendAnswer, await self._enqueue(RawAppendRequest(frame)))

    async def submit_check(self, check: Check) -> asyncio.Future[CheckResult | errors.ProtocolError]:
        """Queue a check behind the appends before it; it is answered (and recorded) in their order."""
        return cast(_CheckAnswer, await self._enqueue(CheckRequest(check)))

    async def _enqueue(self, request: WriteRequest) -> asyncio.Future[WriteResult]:
        """Queue a request for the writer; a writer that is not running answers `internal` at once
        (rather than letting requests pile up where nothing takes them)."""
        future: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        if self._task is not None and self._task.done():
            future.set_result(errors.InternalError("the daemon's writer is not running", _ref_of(request)))
            return future
        self._submitted[future] = time.perf_counter()
        await self._queue.put((request, future))
        return future

    def dedup_ready(self, check: Check) -> asyncio.Event | None:
        """What to wait for before queueing this check: its index still loading; else None."""
        return None if self.dedup is None else self.dedup.ready(check)

    # -- health -------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Whether the writer's task runs (it ends only when stopped)."""
        return self._task is not None and not self._task.done()

    def oldest_request_seconds(self) -> float:
        """How long the oldest request not yet answered has waited (0 when there is none)."""
        for submitted in self._submitted.values():
            return max(0.0, time.perf_counter() - submitted)
        return 0.0

    @property
    def unanswered(self) -> int:
        """Requests submitted and not yet answered (queued or being written)."""
        return len(self._submitted)

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def disk_full(self) -> str | None:
        """Why appends are refused for a full disk, or None."""
        return self._store.disk_full if self._store is not None else None

    def disk_full_counts(self) -> tuple[int, int]:
        """Times the disk became full, and requests refused for it."""
        store = self._store
        return (store.disk_full_episodes, store.disk_full_refusals) if store is not None else (0, 0)

    def problem(self) -> tuple[str, str] | None:
        """What keeps the writer from committing, as (status, reason), or None when it can."""
        if self._task is None:
            return "starting", "the writer has not started"
        if not self.alive:
            return "writer_down", "the writer is not running: no append can be committed"
        waited = self.oldest_request_seconds()
        if waited > self.stuck_after:
            return "writer_stuck", f"the oldest queued request has waited {waited:.0f} s for its commit"
        disk_full = self.disk_full
        if disk_full is not None:
            return "disk_full", disk_full
        return None

    async def drain(self) -> None:
        """Wait until everything queued so far is committed (or, should the writer not be
        running, answered `internal`: stopping never hangs on a dead writer)."""
        task = self._task
        if task is None or task.done():
            self._fail_queued()
            return
        joined = asyncio.ensure_future(self._queue.join())
        await asyncio.wait({joined, task}, return_when=asyncio.FIRST_COMPLETED)
        if not joined.done():
            joined.cancel()
            self._fail_queued()

    def _fail_queued(self) -> None:
        """Answer every queued request `internal`: there is no writer to commit them."""
        while not self._queue.empty():
            request, future = self._queue.get_nowait()
            if not future.done():
                future.set_result(
                    errors.InternalError("the daemon's writer is not running", _ref_of(request))
                )
            self._submitted.pop(future, None)
            self._queue.task_done()

    async def stop(self) -> None:
        """Commit what is queued, then close the store (checkpointing the WAL)."""
        await self.drain()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.dedup is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.dedup.close)
        if self._store is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._store.close)
            self._store = None
        self._executor.shutdown(wait=True)

    def _commit(self, store: EventLog, requests: list[WriteRequest], publish: bool) -> list[WriteResult]:
        """On the writer's thread: decode raw frames, then commit the group in one transaction.

        Decoding is per request: one that fails in any way gets its own error. Raises only
        if the store did (and then nothing was committed: the caller may retry).
        """
        results: list[WriteResult | None] = [None] * len(requests)
        todo: list[LogRequest] = []
        where: list[int] = []
        runs: dict[int, frozenset[str]] = {}
        for index, request in enumerate(requests):
            match request:
                case AppendRequest(append):
                    todo.append(append)
                case CheckRequest(check):
                    todo.append(check)
                case RawAppendRequest(frame):
                    decoded = self._decode_append(frame)
                    if not isinstance(decoded, Append):
                        results[index] = decoded
                        continue
                    if not decoded.events:
                        results[index] = AppendResult(
                            Ack(accepted=0, rejected=decoded.rejected, ref=decoded.ref), []
                        )
                        continue
                    runs[index] = frozenset(e.run for e in decoded.events if e.run is not None)
                    todo.append(decoded)
                case _:
                    assert_never(request)
            where.append(index)
        if todo:
            committed = store.append_group(todo, publish)
            if len(committed) != len(todo):  # a bug; answer what can be, never raise after a commit
                self.failures += 1
                log.error(
                    "the store answered a group with the wrong number of results",
                    requests=len(todo),
                    results=len(committed),
                )
            for position, index in enumerate(where):
                if position < len(committed):
                    result = committed[position]
                    if index in runs and isinstance(result, AppendResult):
                        result.runs = runs[index]
                else:
                    result = errors.InternalError("the request got no answer", todo[position].ref)
                results[index] = result
            if self.dedup is not None:
                self.dedup.after_commit()
        return [
            errors.InternalError("the request got no answer", _ref_of(requests[i])) if r is None else r
            for i, r in enumerate(results)
        ]

    def _decode_append(self, frame: bytes | str) -> Append | AppendResult | errors.ProtocolError:
        """An `append` frame decoded and checked, or the error to answer it with."""
        try:
            msg = self.codec.decode(frame)
        except errors.ProtocolError as exc:
            return exc
        except Exception as exc:  # the codec raises only ProtocolError; should it not:
            self.failures += 1
            log.exception("decoding an append failed", error=f"{type(exc).__name__}: {exc}")
            return errors.InternalError("the append could not be decoded", None)
        if not isinstance(msg, Append):  # the loop saw "append"; the codec did not
            return errors.BadMessage("op: expected append", getattr(msg, "ref", None))
        return msg

    async def _run(self) -> None:
        """Take groups off the queue and commit them, forever: no exception of one request
        or one group stops the loop; every request taken gets an answer."""
        queue = self._queue
        while True:
            batch = [await queue.get()]
            try:
                size = _weight(batch[0][0])
                while size < MAX_GROUP_EVENTS and not queue.empty():
                    item = queue.get_nowait()
                    batch.append(item)
                    size += _weight(item[0])
                await self._commit_batch(batch)
            except Exception as exc:
                self.failures += 1
                log.exception("the writer failed on a group", error=f"{type(exc).__name__}: {exc}")
            finally:
                for request, future in batch:
                    if not future.done():
                        future.set_result(
                            errors.InternalError("the request failed in the writer", _ref_of(request))
                        )
                    self._submitted.pop(future, None)
                    queue.task_done()

    async def _commit_batch(self, batch: list[tuple[WriteRequest, asyncio.Future[WriteResult]]]) -> None:
        loop = asyncio.get_running_loop()
        assert self._store is not None
        store = self._store
        requests = [request for request, _ in batch]
        started = time.perf_counter()
        publish = bool(self.listeners)
        results: list[WriteResult]
        try:
            results = await loop.run_in_executor(self._executor, self._commit, store, requests, publish)
        except Exception as exc:
            # Nothing of the group was committed: retry it request by request, so only
            # the request that fails gets an error.
            self.failures += 1
            log.exception("group commit failed; retrying its requests one by one", error=str(exc))
            results = []
            for request in requests:
                try:
                    results.extend(
                        await loop.run_in_executor(self._executor, self._commit, store, [request], publish)
                    )
                except Exception as one_exc:
                    log.exception(
                        "a request failed in the writer", error=f"{type(one_exc).__name__}: {one_exc}"
                    )
                    results.append(
                        errors.InternalError("the request could not be committed", _ref_of(request))
                    )
        elapsed = time.perf_counter() - started
        self.head = store.head
        committed: list[StoredEvent] = []
        stats = self.stats
        stats.commits += 1
        stats.commit_seconds += elapsed
        now = time.perf_counter()
        for (_, future), result in zip(batch, results, strict=True):
            if isinstance(result, CheckResult):
                committed.extend(result.events)
            elif isinstance(result, AppendResult):
                committed.extend(result.events)
                stats.appends += 1
                stats.events += result.ack.accepted
                stats.duplicates += len(result.ack.duplicates)
                stats.rejected += len(result.ack.rejected)
            if not future.done():
                future.set_result(result)
            submitted = self._submitted.pop(future, None)
            if submitted is not None and not isinstance(result, CheckResult):
                stats.ack_latency.observe(now - submitted)
        if committed:
            for listener in self.listeners:
                try:
                    listener(committed)
                except Exception:
                    log.exception("commit listener failed")


def _ref_of(request: WriteRequest) -> int | None:
    """The ref of a queued request, for its error (a raw frame's is read from the frame)."""
    match request:
        case AppendRequest(append):
            return append.ref
        case CheckRequest(check):
            return check.ref
        case RawAppendRequest(frame):
            return _raw_ref(frame)
        case _:
            assert_never(request)


class _RefOnly(msgspec.Struct):
    """Only the `ref` of a frame (the other fields are skipped, not decoded)."""

    ref: Any = None


_json_ref = msgspec.json.Decoder(_RefOnly)
_mp_ref = msgspec.msgpack.Decoder(_RefOnly)


def _raw_ref(frame: bytes | str) -> int | None:
    try:
        ref = _json_ref.decode(frame).ref if isinstance(frame, str) else _mp_ref.decode(frame).ref
    except Exception:  # not even an object: no ref to echo
        return None
    return ref if isinstance(ref, int) and not isinstance(ref, bool) else None


#: How much of a group's event budget a request takes (a module name: tests wrap it).
_weight = weight
