"""Shutdown is bounded whatever the clients do: stalled subscribers, stalled downloads."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import urllib.request

from websockets.asyncio.client import connect

from tests.conftest import Client, DaemonProcess

#: Generous: the point is that shutdown does not hang, not how fast it is.
STOP_BOUND = 10.0


async def fill_log(client: Client, events: int) -> None:
    payload = "x" * 200
    for start in range(0, events, 1000):
        ack = await client.append(
            [
                {"type": "item", "run": "r", "data": {"item": str(i), "data": {"text": payload}}}
                for i in range(start, start + 1000)
            ]
        )
        assert ack["accepted"] == 1000


def wait_for_blocked_subscriber(daemon: DaemonProcess, timeout: float = 60) -> None:
    """Until the daemon says a subscriber's send waits for its socket (a log line, read as it
    comes); then its /metrics counts that subscriber as blocked, for as long as it stays so."""
    deadline = time.monotonic() + timeout
    while True:
        line = daemon.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        assert line, "daemon exited:\n" + "".join(daemon.log)
        with contextlib.suppress(ValueError):
            if json.loads(line).get("event") == "subscriber blocked: its socket takes no more":
                break
    with urllib.request.urlopen(f"{daemon.http}/metrics", timeout=timeout) as response:
        metrics = response.read().decode()
    assert "\ntracklog_subscribers_blocked 1\n" in metrics, metrics


async def test_sigterm_is_bounded_with_a_subscriber_that_stopped_reading_during_catch_up(
    daemon: DaemonProcess, client: Client
) -> None:
    await fill_log(client, 60_000)  # about 20 MB of catch-up, more than the socket buffers hold
    async with connect(
        daemon.url, max_queue=1, max_size=None, close_timeout=1, ping_interval=None
    ) as stalled:
        await stalled.send(json.dumps({"op": "hello", "protocol": 1}))
        await stalled.recv()
        await stalled.send(json.dumps({"op": "subscribe", "from_seq": 0, "ref": 1}))
        await stalled.recv()  # subscribed; then it never reads again
        await asyncio.to_thread(wait_for_blocked_subscriber, daemon)
        started = time.monotonic()
        assert daemon.proc is not None
        code = await asyncio.to_thread(daemon.stop, 60)
        took = time.monotonic() - started
    print(f"stop with a stalled catch-up subscriber took {took:.2f} s")
    assert code == 0
    assert took < STOP_BOUND


async def test_sigterm_is_bounded_with_a_download_that_stopped_reading(
    daemon: DaemonProcess, client: Client
) -> None:
    await fill_log(client, 30_000)
    with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(
            f"GET /api/runs/r/export/jsonl HTTP/1.1\r\nHost: 127.0.0.1:{daemon.port}\r\n\r\n".encode()
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 200")  # then it never reads again
        started = time.monotonic()
        code = await asyncio.to_thread(daemon.stop, 60)
        took = time.monotonic() - started
    print(f"stop with a stalled download took {took:.2f} s")
    assert code == 0
    assert took < STOP_BOUND
