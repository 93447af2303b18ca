"""`AsyncTracker`: the same client for asyncio pipelines.

`await run.log_metric(...)` only queues, as in the threaded API: the same background
sender thread does the I/O, so the event loop never waits for the daemon. `flush` and
`close` wait in a worker thread, so they do not block the loop either.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Generator, Iterable, Mapping
from types import TracebackType
from typing import Any

from .sender import RejectedEvent
from .subscribe import AsyncSubscription
from .tracker import FinishStatus, ItemStatus, Run, Tracker


class AsyncRun:
    """A run for asyncio code. `async with tracker.start_run(...) as run:` finishes it on exit;
    `run = await tracker.start_run(...)` works too."""

    __slots__ = ("_run",)

    def __init__(self, run: Run) -> None:
        self._run = run

    @property
    def id(self) -> str:
        return self._run.id

    @property
    def finished(self) -> bool:
        return self._run.finished

    @property
    def sync(self) -> Run:
        """The plain `Run`, for calls from code that is not async (it is just as non-blocking)."""
        return self._run

    def __repr__(self) -> str:
        return f"<tracklog.AsyncRun {self.id!r}>"

    def __await__(self) -> Generator[Any, None, AsyncRun]:
        return self._self().__await__()

    async def _self(self) -> AsyncRun:
        return self

    async def log_metric(
        self, name: str, value: float, step: int | None = None, epoch: int | None = None
    ) -> None:
        self._run.log_metric(name, value, step, epoch)

    async def log_metrics(
        self, values: Mapping[str, float], step: int | None = None, epoch: int | None = None
    ) -> None:
        self._run.log_metrics(values, step, epoch)

    async def log_item(
        self,
        item: str | None = None,
        *,
        kind: str | None = None,
        stage: str | None = None,
        iteration: int | None = None,
        status: ItemStatus = "ok",
        data: Any = None,
        path: str | os.PathLike[str] | None = None,
        model: str | None = None,
        backend: str | None = None,
        duration: float | None = None,
        error: str | None = None,
    ) -> None:
        self._run.log_item(
            item,
            kind=kind,
            stage=stage,
            iteration=iteration,
            status=status,
            data=data,
            path=path,
            model=model,
            backend=backend,
            duration=duration,
            error=error,
        )

    async def log_artifact(
        self,
        kind: str,
        path: str | os.PathLike[str],
        *,
        size: int | None = None,
        digest: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self._run.log_artifact(kind, path, size=size, digest=digest, metadata=metadata)

    async def update(
        self,
        *,
        name: str | None = None,
        notes: str | None = None,
        add_tags: Iterable[str] | None = None,
        remove_tags: Iterable[str] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self._run.update(name=name, notes=notes, add_tags=add_tags, remove_tags=remove_tags, config=config)

    async def finish(self, status: FinishStatus = "completed", error: str | None = None) -> None:
        self._run.finish(status, error)

    # Checks wait for the daemon's answer: they run on a worker thread, so the event loop
    # goes on while they wait.

    async def check_hash(self, text_or_value: Any, **options: Any) -> Any:
        """As `Run.check_hash`, awaited."""
        return await asyncio.to_thread(self._run.check_hash, text_or_value, **options)

    async def check_simhash(self, text: str, **options: Any) -> Any:
        """As `Run.check_simhash`, awaited."""
        return await asyncio.to_thread(self._run.check_simhash, text, **options)

    async def check_embedding(self, vector: Any, **options: Any) -> Any:
        """As `Run.check_embedding`, awaited."""
        return await asyncio.to_thread(self._run.check_embedding, vector, **options)

    async def check_many(self, inputs: Any, **options: Any) -> Any:
        """As `Run.check_many`, awaited."""
        return await asyncio.to_thread(self._run.check_many, inputs, **options)

    async def __aenter__(self) -> AsyncRun:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._run.__exit__(exc_type, exc, tb)


class AsyncTracker:
    """`Tracker` with coroutine methods. `async with AsyncTracker(url) as tl:` closes it on exit."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> None:
        self._tracker = Tracker(url, token, spool_dir, **options)

    @property
    def url(self) -> str:
        return self._tracker.url

    @property
    def sync(self) -> Tracker:
        """The underlying threaded `Tracker`."""
        return self._tracker

    def subscribe(
        self,
        from_seq: int | None = None,
        runs: Iterable[str] | None = None,
        types: Iterable[str] | None = None,
        pipelines: Iterable[str] | None = None,
        idle_timeout: float | None = None,
    ) -> AsyncSubscription:
        """`async for event in tl.subscribe(...)`: as `Tracker.subscribe`, for asyncio."""
        sync = self._tracker.subscribe(from_seq, runs, types, pipelines, idle_timeout)
        return AsyncSubscription(sync.url, sync.state, idle_timeout)

    def start_run(self, name: str | None = None, **fields: Any) -> AsyncRun:
        """Start a run (only queues its `run.started`); see `Tracker.start_run`."""
        return AsyncRun(self._tracker.start_run(name, **fields))

    def run(self, run_id: str) -> AsyncRun:
        return AsyncRun(self._tracker.run(run_id))

    async def flush(self, timeout: float = 10.0) -> bool:
        return await asyncio.to_thread(self._tracker.flush, timeout)

    async def close(self, timeout: float = 5.0) -> None:
        await asyncio.to_thread(self._tracker.close, timeout)

    def stats(self) -> dict[str, Any]:
        return self._tracker.stats()

    @property
    def errors(self) -> list[RejectedEvent]:
        return self._tracker.errors

    async def __aenter__(self) -> AsyncTracker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
