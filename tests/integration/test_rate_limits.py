"""Rate limits at an in-process daemon whose clock the test moves, so nothing depends on timing:
`rate_limited` with `retry_after` per connection and per token, and a thin client that
waits, sends again, and loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import tracklog
from tests.conftest import open_client
from tracklog.daemon.ratelimit import Rate, RatePolicy
from tracklog.daemon.server import Daemon, Settings

WAIT = 60.0


class FrozenClock:
    """Time stands still until the test moves it."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait for a condition the client's thread makes true (checked each 10 ms), with a timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def metric(i: int, run: str = "r") -> dict[str, Any]:
    return {"id": f"m-{run}-{i}", "type": "metrics", "run": run, "data": {"values": {"x": 1.0}, "step": i}}


@contextlib.asynccontextmanager
async def running(settings: Settings, clock: FrozenClock) -> AsyncIterator[Daemon]:
    daemon = Daemon(settings, clock)
    await daemon.start()
    try:
        yield daemon
    finally:
        await asyncio.wait_for(daemon.stop(), WAIT)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
async def conn_limited(tmp_path: Path, clock: FrozenClock) -> AsyncIterator[Daemon]:
    rates = RatePolicy(conn_events=Rate(10, 5), conn_queries=Rate(2, 2))
    async with running(Settings(db=tmp_path / "t.db", port=0, rates=rates), clock) as daemon:
        yield daemon


def url(daemon: Daemon) -> str:
    return f"ws://127.0.0.1:{daemon.port}/ws"


async def test_appends_over_the_connection_rate_get_rate_limited_with_retry_after(
    conn_limited: Daemon, clock: FrozenClock
) -> None:
    client, _ = await open_client(url(conn_limited))
    assert (await client.append([metric(i) for i in range(5)]))["op"] == "ack"  # the burst
    refused = await client.append([metric(5)])
    assert refused["op"] == "error" and refused["code"] == "rate_limited"
    assert refused["retry_after"] == pytest.approx(0.1)  # one event at 10/s
    assert "retry after 0.1 s" in refused["message"]
    # Appends sent behind a refused one are refused too, in order, until retry_after passed.
    for ref in (10, 11, 12):
        await client.send({"op": "append", "ref": ref, "events": [metric(ref)]})
    answers = [await client.recv() for _ in range(3)]
    assert [(a["ref"], a["code"]) for a in answers] == [
        (10, "rate_limited"),
        (11, "rate_limited"),
        (12, "rate_limited"),
    ]
    clock.now += 0.1
    assert (await client.append([metric(5)]))["op"] == "ack"
    # Nothing refused was stored.
    events = await client.query("events", from_seq=0)
    assert [e["data"]["step"] for e in events["rows"]] == [0, 1, 2, 3, 4, 5]


async def test_queries_over_the_connection_rate_get_rate_limited(
    conn_limited: Daemon, clock: FrozenClock
) -> None:
    client, _ = await open_client(url(conn_limited))
    assert (await client.query("stats"))["op"] == "result"
    assert (await client.query("stats"))["op"] == "result"
    refused = await client.query("stats")
    assert refused["code"] == "rate_limited" and refused["retry_after"] == pytest.approx(0.5)
    # Another connection has its own buckets.
    other, _ = await open_client(url(conn_limited))
    assert (await other.query("stats"))["op"] == "result"
    clock.now += 0.5
    assert (await client.query("stats"))["op"] == "result"


async def test_a_reconnect_starts_where_the_closed_connection_left_its_rate(
    conn_limited: Daemon, clock: FrozenClock
) -> None:
    """Closing and opening a connection again does not refill its bucket: the burst spent
    stays spent for the same address until the rate has refilled it."""
    client, _ = await open_client(url(conn_limited))
    assert (await client.append([metric(i) for i in range(5)]))["op"] == "ack"  # the burst
    await client.ws.close()
    assert conn_limited._server is not None
    handlers = set(conn_limited._server.handler_tasks)
    _, pending = await asyncio.wait(handlers, timeout=WAIT)
    assert not pending, "the closed connection's handler did not end"
    again, _ = await open_client(url(conn_limited))
    refused = await again.append([metric(5)])
    assert refused["code"] == "rate_limited" and refused["retry_after"] == pytest.approx(0.1)
    clock.now += 0.1
    assert (await again.append([metric(5)]))["op"] == "ack"


async def test_a_tokens_rate_is_shared_by_its_connections(tmp_path: Path, clock: FrozenClock) -> None:
    rates = RatePolicy(token_events=Rate(100, 10))
    settings = Settings(db=tmp_path / "t.db", port=0, tokens=("alpha", "beta"), rates=rates)
    async with running(settings, clock) as daemon:
        one, _ = await open_client(url(daemon), token="alpha")
        two, _ = await open_client(url(daemon), token="alpha")
        other, _ = await open_client(url(daemon), token="beta")
        assert (await one.append([metric(i, "a") for i in range(10)]))["op"] == "ack"
        refused = await two.append([metric(10, "a")])
        assert refused["code"] == "rate_limited" and refused["retry_after"] == pytest.approx(0.01)
        assert (await other.append([metric(i, "b") for i in range(10)]))["op"] == "ack"


async def test_the_thin_client_waits_retry_after_sends_again_and_loses_nothing(
    tmp_path: Path, clock: FrozenClock
) -> None:
    # Burst 1: the first append passes on the full bucket whatever its size; from then on,
    # with the clock still, every append is refused until the test moves the clock.
    rates = RatePolicy(token_events=Rate(1000, 1))
    settings = Settings(db=tmp_path / "t.db", port=0, tokens=("t",), rates=rates)
    async with running(settings, clock) as daemon:
        tl = tracklog.connect(url(daemon), token="t", spool_dir=tmp_path / "spool")
        try:
            run = tl.start_run(name="limited", run_id="r-limited")
            assert await asyncio.to_thread(tl.flush, WAIT)
            for step in range(50):
                run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
            run.finish()
            await until(lambda: tl.stats()["rate_limited"] >= 2)  # refused, waited, refused again
            assert tl.stats()["acked"] == 1 and not tl.errors
            clock.now += 1.0  # the bucket is full again: the next try passes
            assert await asyncio.to_thread(tl.flush, WAIT)
            stats = tl.stats()
            assert stats["acked"] == 52 and stats["rejected"] == 0
        finally:
            await asyncio.to_thread(tl.close, 10)
        reader, _ = await open_client(url(daemon), token="t")
        clock.now += 1.0
        events = await reader.query("events", from_seq=0)
        ids = [e["id"] for e in events["rows"]]
        assert len(ids) == 52 and len(set(ids)) == 52  # each event once
        steps = [e["data"]["step"] for e in events["rows"] if e["type"] == "metrics"]
        assert steps == list(range(50))  # in the order they were logged


async def test_the_thin_clients_requests_and_queries_wait_retry_after(
    tmp_path: Path, clock: FrozenClock
) -> None:
    rates = RatePolicy(token_queries=Rate(1000, 1))
    settings = Settings(db=tmp_path / "t.db", port=0, tokens=("t",), rates=rates)
    async with running(settings, clock) as daemon:
        tl = tracklog.connect(url(daemon), token="t", spool_dir=tmp_path / "spool")

        async def move_clock_when_refused(count: int) -> None:
            # The request is refused (the clock stands still) and sent again after
            # retry_after; the clock moves once the daemon has refused it.
            await until(lambda: refusals(daemon) >= count)
            clock.now += 1.0

        try:
            assert await asyncio.to_thread(tl.cache.get, "k") is None  # the burst
            mover = asyncio.create_task(move_clock_when_refused(1))
            assert await asyncio.to_thread(tl.cache.get, "k") is None  # a check or cache read
            await mover
            clock.now += 1.0
            assert await asyncio.to_thread(tl.runs) == []  # the burst again
            mover = asyncio.create_task(move_clock_when_refused(refusals(daemon) + 1))
            assert await asyncio.to_thread(tl.runs) == []  # a query of Tracker/QueryClient
            await mover
        finally:
            await asyncio.to_thread(tl.close, 10)


def refusals(daemon: Daemon) -> int:
    """Requests the daemon refused for a rate limit so far (its token buckets' books)."""
    return daemon.refused["rate_limited"]


async def test_http_reads_draw_on_the_tokens_query_rate(tmp_path: Path, clock: FrozenClock) -> None:
    rates = RatePolicy(token_queries=Rate(2, 1))
    settings = Settings(db=tmp_path / "t.db", port=0, tokens=("t",), rates=rates)
    async with running(settings, clock) as daemon:

        def get(path: str) -> tuple[int, dict[str, str], Any]:
            request = urllib.request.Request(f"http://127.0.0.1:{daemon.port}{path}")
            request.add_header("Authorization", "Bearer t")
            try:
                with urllib.request.urlopen(request, timeout=WAIT) as reply:
                    return reply.status, dict(reply.headers), json.loads(reply.read())
            except urllib.error.HTTPError as exc:
                with exc:
                    return exc.code, dict(exc.headers), json.loads(exc.read())

        assert (await asyncio.to_thread(get, "/api/runs"))[0] == 200
        status, headers, body = await asyncio.to_thread(get, "/api/runs")
        assert status == 429 and headers["Retry-After"] == "1"
        assert body["error"] == "rate_limited" and body["retry_after"] == pytest.approx(0.5)
        assert (await asyncio.to_thread(get, "/healthz"))[0] == 200  # not a query
        clock.now += 0.5
        assert (await asyncio.to_thread(get, "/api/runs"))[0] == 200

        def metrics() -> str:
            request = urllib.request.Request(f"http://127.0.0.1:{daemon.port}/metrics")
            request.add_header("Authorization", "Bearer t")
            with urllib.request.urlopen(request, timeout=WAIT) as reply:
                return str(reply.read().decode())

        text = await asyncio.to_thread(metrics)
        assert 'tracklog_requests_refused_total{code="rate_limited"} 1' in text.splitlines()


async def test_tracklog_watch_connects_again_after_retry_after(tmp_path: Path, clock: FrozenClock) -> None:
    pytest.importorskip("rich")
    from tracklog.watch import Feed, WatchState

    rates = RatePolicy(token_queries=Rate(1000, 1))
    settings = Settings(db=tmp_path / "t.db", port=0, tokens=("t",), rates=rates)
    async with running(settings, clock) as daemon:
        other, _ = await open_client(url(daemon), token="t")
        assert (await other.query("stats"))["op"] == "result"  # the token's burst is spent
        state = WatchState(None)
        feed = Feed(url(daemon), state, "t")
        try:
            await asyncio.to_thread(feed.poll, 0.1)  # its first query is refused: no crash
            assert not state.connected and state.note == "reconnecting (RateLimited)"
            assert refusals(daemon) == 1
            clock.now += 1.0

            def poll_until_connected() -> None:
                deadline = time.monotonic() + WAIT
                while not state.connected and time.monotonic() < deadline:
                    feed.poll(0.05)

            await asyncio.to_thread(poll_until_connected)
            assert state.connected
        finally:
            await asyncio.to_thread(feed.close)
