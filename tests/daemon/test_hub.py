"""The hub with no socket: filters, and subscriptions fed from a fake log to fake sends.

The frames and what was delivered are the protocol's (tests/protocol/test_connection.py);
these tests hold the hub's side: when it reads the log, when it goes live, and what it
says about a subscriber whose socket takes no more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
import structlog

from tracklog.daemon.hub import Filter, Hub, LogReader
from tracklog.protocol.connection import ServerConnection, ServerSubscription
from tracklog.protocol.events import MetricsData
from tracklog.protocol.messages import Codec, Hello, StoredEvent, Subscribe, SubscribeFilter

CODEC = Codec()


def events(n: int, start: int = 1) -> list[StoredEvent]:
    return [
        StoredEvent(
            seq, "metrics", MetricsData(values={"x": 1.0}, step=seq), 1.0, 1.0, f"id-{seq}", f"r{seq % 3}"
        )
        for seq in range(start, start + n)
    ]


def test_a_filter_selects_by_run_type_and_the_pipeline_of_the_run() -> None:
    batch = events(6)
    assert Filter(None).select(batch, {}) is batch
    by_run = Filter(SubscribeFilter(runs=["r1"]))
    assert [e.seq for e in by_run.select(batch, {})] == [1, 4]
    by_type = Filter(SubscribeFilter(types=["item"]))
    assert by_type.select(batch, {}) == []
    by_pipeline = Filter(SubscribeFilter(pipelines=["train"]))
    assert [e.seq for e in by_pipeline.select(batch, {"r2": "train"})] == [2, 5]


class Client:
    """The frames one fake subscriber was sent; `hold` makes its sends wait (a full socket)."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()
        self.hold: asyncio.Future[None] | None = None
        #: Set when a send starts waiting on `hold`.
        self.held = asyncio.Event()

    async def send(self, frame: bytes) -> None:
        if self.hold is not None:
            self.held.set()
            await self.hold
        self.frames.append(msgspec.msgpack.decode(frame))
        self._arrived.set()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not condition():
                self._arrived.clear()
                await self._arrived.wait()

    def ops(self) -> list[str]:
        return [f["op"] for f in self.frames]

    def seqs(self) -> list[int]:
        return [e["seq"] for f in self.frames if f["op"] == "events" for e in f["events"]]


def open_subscription(hub: Hub, from_seq: int | None) -> ServerSubscription:
    conn = ServerConnection(CODEC, "tracklog/test", frames=hub.frames)
    conn.receive(CODEC.encode(Hello(client="test"), True))
    conn.welcome(head=hub.published_seq)
    request = conn.receive(CODEC.encode(Subscribe(from_seq=from_seq, ref=1), True))
    assert isinstance(request, Subscribe)
    state, _ = conn.subscribed(request, hub.next_id(), hub.published_seq)
    return state


def log_of(stored: list[StoredEvent]) -> LogReader:
    """A fake LogReader over `stored`: reads of at most 3 events, to make several rounds."""

    async def read_log(after: int, limit: int, flt: Filter) -> tuple[list[StoredEvent], int, int]:
        found = [e for e in stored if e.seq > after][:3]
        head = stored[-1].seq if stored else 0
        return found, found[-1].seq if found else head, head

    return read_log


async def test_a_subscriber_reads_the_log_then_goes_live_and_gets_each_event_once() -> None:
    hub = Hub(CODEC)
    stored = events(7)
    hub.published_seq = 7
    client = Client()
    sub = hub.subscribe(open_subscription(hub, from_seq=2), Filter(None), client.send, log_of(stored))
    await client.wait_until(lambda: "live" in client.ops())
    assert client.seqs() == [3, 4, 5, 6, 7]  # in reads of three at most: two frames
    assert client.ops() == ["events", "events", "live"]
    hub.publish(events(1, start=8))
    hub.publish(events(2, start=9))
    await client.wait_until(lambda: client.seqs()[-1] == 10)
    assert client.seqs() == [3, 4, 5, 6, 7, 8, 9, 10]
    await hub.unsubscribe([sub])
    assert hub.delivered == 8


async def test_a_subscriber_from_now_on_gets_what_was_published_before_its_task_started() -> None:
    hub = Hub(CODEC)
    state = open_subscription(hub, from_seq=None)  # `subscribed` said head 0
    stored = events(2)
    hub.publish(stored)  # while `subscribed` was being sent
    client = Client()
    sub = hub.subscribe(state, Filter(None), client.send, log_of(stored))
    await client.wait_until(lambda: "live" in client.ops())
    assert client.seqs() == [1, 2]
    await hub.unsubscribe([sub])


async def test_a_subscriber_whose_send_waits_is_counted_blocked_and_logged_once() -> None:
    hub = Hub(CODEC)
    client = Client()
    client.hold = asyncio.get_running_loop().create_future()
    with structlog.testing.capture_logs() as logs:
        sub = hub.subscribe(open_subscription(hub, from_seq=None), Filter(None), client.send, log_of([]))
        # The `live` send waits; the check it scheduled before waiting runs before this wakes.
        await asyncio.wait_for(client.held.wait(), 10)
        assert hub.blocked == 1
        assert [e["event"] for e in logs].count("subscriber blocked: its socket takes no more") == 1
        client.hold.set_result(None)
        await client.wait_until(lambda: "live" in client.ops())
        assert hub.blocked == 0
    await hub.unsubscribe([sub])
