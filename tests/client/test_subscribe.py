"""tl.subscribe(): every matching event once, in order, across a daemon restart; `tracklog tail`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

import tracklog
from tests.client.conftest import WAIT, Daemon, PortDaemon


def log_metrics(tl: tracklog.Tracker, run: tracklog.Run, start: int, count: int) -> None:
    for i in range(start, start + count):
        run.log_metric("loss", 1 / (i + 1), step=i)
    assert tl.flush(WAIT), tl.stats()


def test_subscribe_from_zero_yields_the_log_in_order_then_new_events(
    daemon: Daemon, make_tracker: Callable[..., tracklog.Tracker]
) -> None:
    tl = make_tracker(daemon.url)
    run = tl.start_run(name="followed")
    log_metrics(tl, run, 0, 50)
    with tl.subscribe(from_seq=0, idle_timeout=WAIT) as events:
        seen = [next(events) for _ in range(51)]  # run.started and 50 metrics
        assert [e["seq"] for e in seen] == list(range(1, 52))
        assert seen[0]["type"] == "run.started" and seen[0]["data"]["name"] == "followed"
        log_metrics(tl, run, 50, 5)
        more = [next(events) for _ in range(5)]
        assert [e["data"]["step"] for e in more] == [50, 51, 52, 53, 54]
        assert events.live


def test_a_subscription_resumes_after_a_daemon_restart_with_no_gap_and_no_repeat(
    port_daemon: PortDaemon, make_tracker: Callable[..., tracklog.Tracker]
) -> None:
    port_daemon.start()
    tl = make_tracker(port_daemon.url)
    run = tl.start_run(name="restart")
    log_metrics(tl, run, 0, 100)
    with tl.subscribe(from_seq=0, types=["metrics"], idle_timeout=WAIT) as events:
        first = [next(events) for _ in range(100)]
        port_daemon.kill()
        port_daemon.start()
        log_metrics(tl, run, 100, 100)
        rest = [next(events) for _ in range(100)]
    steps = [e["data"]["step"] for e in first + rest]
    assert steps == list(range(200))
    assert events.state.reconnects >= 1


def test_subscribe_filters_by_run(daemon: Daemon, make_tracker: Callable[..., tracklog.Tracker]) -> None:
    tl = make_tracker(daemon.url)
    a, b = tl.start_run(name="a"), tl.start_run(name="b")
    a.log_metric("x", 1.0)
    b.log_metric("x", 2.0)
    a.log_metric("x", 3.0)
    assert tl.flush(WAIT), tl.stats()
    with tl.subscribe(from_seq=0, runs=[a.id], types="metrics", idle_timeout=WAIT) as events:
        assert [next(events)["data"]["values"]["x"] for _ in range(2)] == [1.0, 3.0]


async def test_async_subscribe_follows_the_log(daemon: Daemon, spool_dir: Any) -> None:
    async with tracklog.AsyncTracker(daemon.url, spool_dir=spool_dir) as tl:
        run = await tl.start_run(name="async")
        for i in range(10):
            await run.log_metric("loss", float(i), step=i)
        assert await tl.flush(WAIT)
        got: list[int] = []
        async with tl.subscribe(from_seq=0, types=["metrics"], idle_timeout=WAIT) as events:
            async for event in events:
                got.append(event["data"]["step"])
                if len(got) == 10:
                    break
        assert got == list(range(10))


@pytest.mark.parametrize("as_json", [False, True])
def test_tracklog_tail_prints_one_line_per_event(
    daemon: Daemon, make_tracker: Callable[..., tracklog.Tracker], as_json: bool
) -> None:
    tl = make_tracker(daemon.url)
    run = tl.start_run(name="tailed")
    run.log_metric("loss", 0.5, step=3)
    run.log_item(stage="translate", status="failed", error="timeout")
    run.finish()
    assert tl.flush(WAIT), tl.stats()
    args = [sys.executable, "-m", "tracklog", "tail", "--url", daemon.url, "--from", "0", "--idle-exit", "2"]
    out = subprocess.run(args + (["--json"] if as_json else []), capture_output=True, text=True, timeout=WAIT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 4
    if as_json:
        import json

        assert [json.loads(line)["type"] for line in lines] == [
            "run.started",
            "metrics",
            "item",
            "run.finished",
        ]
    else:
        assert "loss=0.5 step=3" in lines[1]
        assert "stage=translate" in lines[2] and "status=failed" in lines[2] and "error=timeout" in lines[2]
        assert "status=completed" in lines[3]


def test_tracklog_tail_takes_a_run_name(
    daemon: Daemon, make_tracker: Callable[..., tracklog.Tracker]
) -> None:
    tl = make_tracker(daemon.url)
    named, other = tl.start_run(name="followed"), tl.start_run(name="other")
    named.log_metric("loss", 0.5)
    other.log_metric("loss", 0.7)
    assert tl.flush(WAIT), tl.stats()
    args = [sys.executable, "-m", "tracklog", "tail", "--url", daemon.url, "--from", "0", "--idle-exit", "2"]
    out = subprocess.run([*args, "--run", "followed", "--json"], capture_output=True, text=True, timeout=WAIT)
    assert out.returncode == 0, out.stderr
    import json

    assert {json.loads(line)["run"] for line in out.stdout.splitlines()} == {named.id}


def test_the_reconnect_backoff_stays_bounded_after_hours_of_attempts() -> None:
    from tracklog.subscribe import BACKOFF_MAX, _backoff

    assert 0 < _backoff(0) <= BACKOFF_MAX
    assert BACKOFF_MAX / 2 <= _backoff(5000) <= BACKOFF_MAX  # 2**5000 overflowed the float


def test_a_reconnect_resumes_after_events_received_but_not_yet_taken_so_none_comes_twice() -> None:
    """Driven through the protocol's server end, with no socket: three events are queued,
    none taken, and the connection drops; the next one subscribes from seq 3, and events
    sent again anyway are not queued a second time."""
    from tracklog.protocol.connection import ServerConnection
    from tracklog.protocol.messages import Codec, Events, StoredEvent, Subscribe
    from tracklog.subscribe import SubscriptionState

    def connect(state: SubscriptionState) -> tuple[ServerConnection, Subscribe]:
        server = ServerConnection(Codec(), "tracklog/test")
        server.receive(state.hello())
        state.receive(server.welcome(head=3))
        request = server.receive(state.subscribe())
        assert isinstance(request, Subscribe)
        state.receive(server.subscribed(request, sub=1, head=3)[1])
        return server, request

    def events(server: ServerConnection, *seqs: int) -> bytes:
        return server.encode(Events(sub=1, events=[StoredEvent(s, "metrics", {}, 1.0, 1.0) for s in seqs]))

    state = SubscriptionState(0, None, None, None, None)
    server, _ = connect(state)
    state.receive(events(server, 1, 2, 3))
    assert [e["seq"] for e in state.pending] == [1, 2, 3] and state.last_seq == 0
    server, request = connect(state)  # the connection dropped: a new one
    assert request.from_seq == 3
    state.receive(events(server, 2, 3, 4))
    assert [state.take()["seq"] for _ in range(len(state.pending))] == [1, 2, 3, 4]
