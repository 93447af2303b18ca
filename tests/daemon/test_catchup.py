"""Shared pages of the log for subscriptions catching up: every read answers as a direct
read of the log would, and subscribers at the same stretch of the log share one read."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import open_client
from tracklog.daemon.catchup import SharedPages
from tracklog.daemon.server import Daemon, Settings
from tracklog.protocol.messages import StoredEvent

WAIT = 60.0


class FakeLog:
    """A log of events at `seqs` (gaps allowed) whose head is `published`; counts its reads."""

    def __init__(self, seqs: list[int], published: int | None = None) -> None:
        self.events = [StoredEvent(seq, "metrics", {"i": seq}, float(seq), float(seq)) for seq in seqs]
        self.published = max(seqs, default=0) if published is None else published
        self.reads = 0
        #: Set when a read reaches the log; with `gate`, the read then waits for the test.
        self.reached = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.fail = False

    async def scan(self, after: int, limit: int) -> tuple[list[StoredEvent], int, int]:
        """As `ReadModel.scan_events` without a filter (the window is wider than any read here)."""
        self.reads += 1
        self.reached.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError("the read failed")
        head = self.published
        found = [e for e in self.events if after < e.seq <= head][:limit]
        return found, (found[-1].seq if len(found) >= limit else head), head


@pytest.mark.parametrize("seqs", [list(range(1, 2_501)), [s for s in range(1, 3_001) if s % 7 and s % 1000]])
async def test_every_read_answers_as_a_read_of_the_log_may(seqs: list[int]) -> None:
    log = FakeLog(seqs)
    pages = SharedPages(log.scan, lambda: log.published, page_events=100, kept_pages=4)
    for after in [0, 1, 99, 100, 101, 250, 999, 1000, 2399, 2400, 2450, 2499, 2500]:
        for limit in (1, 37, 100, 1000):
            events, scanned_to, head = await pages.read(after, limit)
            # The events of the log in (after, scanned_to], no more than asked for, and a
            # read that moves on: reading on from scanned_to never skips or repeats one.
            assert [e.seq for e in events] == [s for s in seqs if after < s <= scanned_to], (after, limit)
            assert len(events) <= limit
            assert scanned_to > after or after >= log.published
            assert log.published >= head >= scanned_to
    assert pages.kept <= 4


async def test_subscribers_at_the_same_page_share_one_read() -> None:
    log = FakeLog(list(range(1, 1_001)))
    pages = SharedPages(log.scan, lambda: log.published, page_events=100)
    log.gate = asyncio.Event()
    reads = [asyncio.create_task(pages.read(after, 100)) for after in (0, 10, 50, 99) * 5]
    # The first read reaches the log; the tasks behind it (run in the order they were
    # created, before this one wakes) find its read under way and wait for it.
    await log.reached.wait()
    log.gate.set()
    answers = await asyncio.gather(*reads)
    assert log.reads == 1
    assert [len(a[0]) for a in answers[:4]] == [100, 90, 50, 1]
    for after in range(0, 1_000, 100):  # the rest of the log, page by page
        for _ in range(3):
            await pages.read(after, 100)
    assert log.reads == 10  # one read per page, however many subscribers read it


async def test_the_tail_of_the_log_is_read_directly_and_never_kept() -> None:
    log = FakeLog(list(range(1, 151)), published=150)
    pages = SharedPages(log.scan, lambda: log.published, page_events=100)
    events, scanned_to, head = await pages.read(120, 100)
    assert [e.seq for e in events] == list(range(121, 151)) and scanned_to == head == 150
    assert pages.kept == 0 and pages.scans == 1
    # The page is complete once its last seq is published: then it is read whole and kept.
    log.events += [StoredEvent(s, "metrics", {}, 0.0, 0.0) for s in range(151, 201)]
    log.published = 200
    events, scanned_to, _ = await pages.read(120, 100)
    assert [e.seq for e in events] == list(range(121, 201)) and scanned_to == 200
    assert pages.kept == 1


async def test_a_failed_page_read_fails_its_reader_and_leaves_the_others_to_read_the_log() -> None:
    log = FakeLog(list(range(1, 301)))
    pages = SharedPages(log.scan, lambda: log.published, page_events=100)
    log.gate = asyncio.Event()
    log.fail = True
    first = asyncio.create_task(pages.read(0, 100))
    second = asyncio.create_task(pages.read(20, 100))  # waits for the first's read
    await log.reached.wait()
    log.gate.set()
    with pytest.raises(RuntimeError):
        await first
    with pytest.raises(RuntimeError):  # its own read of the log, which fails as well
        await second
    log.fail = False
    events, _, _ = await pages.read(20, 100)
    assert [e.seq for e in events] == list(range(21, 101))


@contextlib.asynccontextmanager
async def running(tmp_path: Path) -> AsyncIterator[Daemon]:
    daemon = Daemon(Settings(db=tmp_path / "t.db", port=0))
    await daemon.start()
    try:
        yield daemon
    finally:
        await asyncio.wait_for(daemon.stop(), WAIT)


async def test_subscribers_catching_up_together_get_everything_once_from_shared_reads(tmp_path: Path) -> None:
    """Eight subscribers from seq 0 over a log of 5,500 events: each gets every event once,
    in order, and the log is read about once per page, not once per page per subscriber."""
    async with running(tmp_path) as daemon:
        url = f"ws://127.0.0.1:{daemon.port}/ws"
        writer, _ = await open_client(url)
        ids = itertools.count()
        for _ in range(11):
            batch = [
                {"id": f"m-{i}", "type": "metrics", "run": "r", "data": {"values": {"x": 1.0}, "step": i}}
                for i in itertools.islice(ids, 500)
            ]
            assert (await writer.append(batch))["op"] == "ack"
        head = daemon.hub.published_seq
        assert head == 5_500
        subscribers = [(await open_client(url, binary=i % 2 == 1))[0] for i in range(8)]
        for client in subscribers:
            await client.send({"op": "subscribe", "ref": 1, "from_seq": 0})

        async def follow(client: object) -> list[int]:
            seqs: list[int] = []
            while len(seqs) < head:
                message = await client.recv()  # type: ignore[attr-defined]
                if message["op"] == "events":
                    seqs.extend(e["seq"] for e in message["events"])
            return seqs

        got = await asyncio.wait_for(asyncio.gather(*(follow(c) for c in subscribers)), WAIT)
        assert all(seqs == list(range(1, head + 1)) for seqs in got)
        pages = daemon.log_pages
        assert pages.shared >= 8 * 5  # most reads were answered from shared pages
        assert pages.scans <= 2 * (head // 1_000 + 1) + 8  # not one read per page per subscriber
