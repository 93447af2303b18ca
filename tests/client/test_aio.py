"""AsyncTracker: the same guarantees for asyncio pipelines, without blocking the loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import tracklog

from .conftest import WAIT, Daemon, ids_of, query, stored_events


async def test_an_async_pipeline_logs_every_item_and_metric_once(daemon: Daemon, spool_dir: Path) -> None:
    items: asyncio.Queue[int | None] = asyncio.Queue(maxsize=100)
    async with tracklog.AsyncTracker(daemon.url, spool_dir=spool_dir) as tl:
        async with tl.start_run("async-pipeline", pipeline="translate") as run:

            async def produce() -> None:
                for i in range(2_000):
                    await items.put(i)
                await items.put(None)

            async def consume() -> None:
                while (i := await items.get()) is not None:
                    await run.log_item(f"item-{i}", stage="translate", status="ok", duration=0.001)
                    await run.log_metric("throughput", float(i), step=i)

            await asyncio.gather(produce(), consume())
        assert await tl.flush(WAIT)
        assert tl.stats()["acked"] == 4_002 and not tl.errors
    row = await asyncio.to_thread(query, daemon.url, "run", run=run.id)
    assert row["rows"][0]["status"] == "completed"
    assert row["rows"][0]["n_items"] == 2_000
    events = await asyncio.to_thread(stored_events, daemon.url, run.id)
    assert len(ids_of(events)) == len(events) == 4_002


async def test_an_async_run_that_raises_is_marked_failed(daemon: Daemon, spool_dir: Path) -> None:
    async with tracklog.AsyncTracker(daemon.url, spool_dir=spool_dir) as tl:
        run = await tl.start_run("async-doomed")
        with pytest.raises(RuntimeError):
            async with run:
                raise RuntimeError("out of memory")
        assert await tl.flush(WAIT)
    row = await asyncio.to_thread(query, daemon.url, "run", run=run.id)
    assert (row["rows"][0]["status"], row["rows"][0]["error"]) == ("failed", "RuntimeError: out of memory")


async def test_async_run_checks_wait_for_the_answer_without_blocking_the_loop(
    daemon: Daemon, spool_dir: Path
) -> None:
    async with tracklog.AsyncTracker(daemon.url, spool_dir=spool_dir) as tl:
        run = await tl.start_run(name="async checks")
        first = await run.check_hash("the same text", namespace="aio")
        second = await run.check_hash("the same text", namespace="aio")
        near = await run.check_simhash("the quick brown fox jumps over the lazy dog", namespace="aio")
        again = await run.check_simhash("the quick brown fox jumps over the lazy  dog", namespace="aio")
        many = await run.check_many(["a", "b", "a"], kind="hash", namespace="aio-many")
    assert (first.duplicate, second.duplicate) == (False, True)
    assert (near.duplicate, again.duplicate) == (False, True)
    assert [r.duplicate for r in many] == [False, False, True]
