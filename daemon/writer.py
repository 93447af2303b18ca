"""The writer: one task, one thread, one write connection, group commit.

Appends from every connection queue here. While a transaction commits on the writer's
thread, new appends gather in the queue; the next transaction takes all of them. So
there is never lock contention, and the cost of a commit is shared by everything that
arrived while the previous one ran.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import structlog

from tracklog.protocol import errors
from tracklog.protocol.messages import Ack, Codec, Append, Check, StoredEvent

from .dedup_persist import DedupRuntime, files_dir
from .histogram import LatencyHistogram
from .store import AppendResult, CheckResult, Durability, LogStore, WriteRequest

log = structlog.get_logger("tracklog.writer")

#: Events in one group commit, at most: bounds the latency of the appends in it.
MAX_GROUP_EVENTS: Final = 50_000
#: Appends waiting for the writer before connections stop reading (backpressure).
MAX_QUEUED_APPENDS: Final = 1_000

CommitListener = Callable[[list[StoredEvent]], None]


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
    """Owns the LogStore; everything that writes goes through `submit`."""

    def __init__(self, path: str, durability: Durability = "normal", codec: Codec | None = None) -> None:
        self.path = path
        self.codec = codec or Codec()
        self.durability: Durability = durability
        self.head = 0
        self.stats = WriterStats()
        self.listeners: list[CommitListener] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracklog-writer")
        self._queue: asyncio.Queue[tuple[Append, asyncio.Future[AppendResult | errors.ProtocolError]]] = (
            asyncio.Queue(MAX_QUEUED_APPENDS)
        )
        self._store: LogStore | None = None
        self._task: asyncio.Task[None] | None = None
        self._submitted: dict[asyncio.Future[AppendResult | errors.ProtocolError], float] = {}
        #: Loads the dedup indexes after start and saves the embedding ones (dedup_persist).
        self.dedup: DedupRuntime | None = None

    async def start(self) -> int:
        """Open the store and catch its projections up; returns how many events were replayed."""
        loop = asyncio.get_running_loop()
        self._store = await loop.run_in_executor(self._executor, LogStore, self.path, self.durability)
        replayed = await loop.run_in_executor(self._executor, self._store.catch_up)
        # The dedup indexes load in the background; a check waits only for its own (see `dedup_ready`).
        self.dedup = DedupRuntime(self._store, self._executor, loop, files_dir(self.path))
        await loop.run_in_executor(self._executor, self.dedup.begin)
        self.dedup.start()
        self.head = self._store.head
        self._task = asyncio.create_task(self._run(), name="tracklog-writer")
        return replayed

    async def submit(self, append: Append) -> asyncio.Future[AppendResult | errors.ProtocolError]:
        """Queue an append; the future resolves once it is committed (or failed)."""
        future: asyncio.Future[AppendResult | errors.ProtocolError] = asyncio.get_running_loop().create_future()
        self._submitted[future] = time.perf_counter()
        await self._queue.put((append, future))
        return future

    async def submit_frame(self, frame: bytes | str) -> asyncio.Future[AppendResult | errors.ProtocolError]:
        """Queue an `append` frame still undecoded: the writer's thread decodes and checks
        it with the rest of its group, so the event loop only moves bytes and one thread,
        not two, does the CPU work of ingest (two would mostly take turns at the GIL)."""
        future: asyncio.Future[AppendResult | errors.ProtocolError] = asyncio.get_running_loop().create_future()
        self._submitted[future] = time.perf_counter()
        await self._queue.put((RawAppend(frame), future))  # type: ignore[arg-type]
        return future

    async def submit_check(self, check: Check) -> asyncio.Future[CheckResult | errors.ProtocolError]:
        """Queue a check behind the appends before it; it is answered (and recorded) in their order."""
        future: asyncio.Future[CheckResult | errors.ProtocolError] = asyncio.get_running_loop().create_future()
        await self._queue.put((check, future))  # type: ignore[arg-type]  # the store takes both kinds
        return future

    def dedup_ready(self, check: Check) -> asyncio.Event | None:
        """What to wait for before queueing this check: its index still loading; else None."""
        return None if self.dedup is None else self.dedup.ready(check)

    async def drain(self) -> None:
        """Wait until everything queued so far is committed."""
        await self._queue.join()

    async def stop(self) -> None:
        """Commit what is queued, then close the store (checkpointing the WAL)."""
        await self.drain()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self.dedup is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.dedup.close)
        if self._store is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._store.close)
            self._store = None
        self._executor.shutdown(wait=True)

    def _commit(self, store: LogStore, requests: list[Any]) -> list[Any]:
        """On the writer's thread: decode raw frames, then commit the group in one transaction."""
        results: list[Any] = [None] * len(requests)
        todo: list[Any] = []
        where: list[int] = []
        runs: dict[int, frozenset[str]] = {}
        for index, request in enumerate(requests):
            if request.__class__ is RawAppend:
                try:
                    msg = self.codec.decode(request.frame)
                except errors.ProtocolError as exc:
                    results[index] = exc
                    continue
                if not isinstance(msg, Append):  # the loop saw "append"; the codec did not
                    results[index] = errors.BadMessage("op: expected append", getattr(msg, "ref", None))
                    continue
                if not msg.events:
                    results[index] = AppendResult(
                        Ack(accepted=0, rejected=msg.rejected, ref=msg.ref), []
                    )
                    continue
                runs[index] = frozenset(e.run for e in msg.events if e.run is not None)
                request = msg
            todo.append(request)
            where.append(index)
        if todo:
            for index, result in zip(where, store.append_group(todo), strict=True):
                if index in runs and isinstance(result, AppendResult):
                    result.runs = runs[index]
                results[index] = result
            if self.dedup is not None:
                self.dedup.after_commit()
        return results

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        assert self._store is not None
        store = self._store
        while True:
            batch = [await queue.get()]
            size = _weight(batch[0][0])
            while size < MAX_GROUP_EVENTS and not queue.empty():
                item = queue.get_nowait()
                batch.append(item)
                size += _weight(item[0])
            started = time.perf_counter()
            store.publish = bool(self.listeners)
            try:
                results = await loop.run_in_executor(self._executor, self._commit, store, [a for a, _ in batch])
            except Exception as exc:  # the store never raises, but a bug must not kill the writer
                log.exception("group commit failed", error=str(exc))
                results = [errors.InternalError("commit failed", a.ref) for a, _ in batch]
            elapsed = time.perf_counter() - started
            self.head = store.head
            committed: list[StoredEvent] = []
            stats = self.stats
            stats.commits += 1
            stats.commit_seconds += elapsed
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
                if submitted is not None:
                    stats.ack_latency.observe(time.perf_counter() - submitted)
                queue.task_done()
            if committed:
                for listener in self.listeners:
                    try:
                        listener(committed)
                    except Exception:
                        log.exception("commit listener failed")


class RawAppend:
    """An `append` frame to be decoded on the writer's thread."""

    __slots__ = ("frame",)

    def __init__(self, frame: bytes | str) -> None:
        self.frame = frame


#: Bytes of frame counted as one event when sizing a group (a metrics event in a frame
#: takes 60 to 120 bytes).
_BYTES_PER_EVENT: Final = 80


def _weight(request: WriteRequest) -> int:
    """How much of a group's event budget a request takes (a check: one per input)."""
    if request.__class__ is RawAppend:
        return len(request.frame) // _BYTES_PER_EVENT + 1  # type: ignore[union-attr]
    if request.__class__ is Check:
        return len(request.inputs or ()) + 1  # type: ignore[union-attr]
    return len(request.events)  # type: ignore[union-attr]
