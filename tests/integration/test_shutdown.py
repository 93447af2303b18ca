"""Shutdown is bounded whatever the clients do: stalled subscribers, stalled downloads."""

from __future__ import annotations

import asyncio
import fcntl
import json
import socket
import struct
import termios
import time

from websockets.asyncio.client import ClientConnection, connect

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


async def wait_for_unread_bytes(ws: ClientConnection, least: int, timeout: float = 60) -> None:
    """Until the client's socket holds `least` bytes it has not read: the daemon is stalled on it."""
    sock = ws.transport.get_extra_info("socket")
    deadline = time.monotonic() + timeout
    while True:
        unread = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
        if unread >= least:
            return
        assert time.monotonic() < deadline, f"only {unread} bytes arrived"
        await asyncio.sleep(0.05)


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
        await wait_for_unread_bytes(stalled, 100_000)
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
