"""The daemon's limits, each set through `serve` (options or the environment) and each hit:
frame size, events per append, connections, subscriptions per connection, query rows,
field length and nesting. A limit hit is answered with an error naming the limit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import DaemonProcess, open_client
from tests.integration.test_service import stop_quietly


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(
        tmp_path / "t.db",
        "--max-frame-bytes",
        "4096",
        "--max-subscriptions",
        "2",
        "--max-query-rows",
        "3",
        "--max-depth",
        "3",
        "--max-field-chars",
        "20",
        # One limit from the environment, as systemd's EnvironmentFile gives it.
        env={"TRACKLOG_MAX_EVENTS_PER_APPEND": "4"},
    ).start()
    try:
        yield daemon
    finally:
        stop_quietly(daemon)


def metric(i: int) -> dict[str, Any]:
    return {"id": f"m{i}", "type": "metrics", "run": "r", "data": {"values": {"x": 1.0}, "step": i}}


def item(data: Any, i: int = 0) -> dict[str, Any]:
    return {"id": f"i{i}", "type": "item", "run": "r", "data": {"data": data}}


async def test_a_frame_over_the_limit_closes_the_connection_1009(limited: DaemonProcess) -> None:
    client, _ = await open_client(limited.url)
    assert (await client.append([item("x" * 10)]))["op"] == "ack"  # well under 4096 bytes
    await client.send({"op": "append", "events": [item(["y" * 10] * 500)]})  # over 4096 bytes
    with pytest.raises(ConnectionClosed):
        await client.recv()
    assert client.ws.close_code == 1009


async def test_events_per_append_are_limited(limited: DaemonProcess) -> None:
    client, _ = await open_client(limited.url)
    assert (await client.append([metric(i) for i in range(4)]))["op"] == "ack"
    refused = await client.append([metric(i) for i in range(4, 9)])
    assert refused["code"] == "too_large"
    assert refused["message"] == "events: 5 events, at most 4 per append (max_events_per_append)"
    # The batch form of check counts its inputs against the same limit.
    inputs = [{"text": f"t{i}"} for i in range(5)]
    refused = await client.request({"op": "check", "namespace": "n", "kind": "hash", "inputs": inputs})
    assert refused["code"] == "too_large" and "at most 4" in refused["message"]


async def test_subscriptions_per_connection_are_limited(limited: DaemonProcess) -> None:
    client, _ = await open_client(limited.url)
    first = await client.request({"op": "subscribe"})
    assert (await client.request({"op": "subscribe"}))["op"] == "subscribed"
    refused = await client.request({"op": "subscribe"})
    assert refused["code"] == "too_large" and "(max_subscriptions)" in refused["message"]
    # Closing one makes room again; another connection has its own count.
    assert (await client.request({"op": "unsubscribe", "sub": first["sub"]}))["op"] == "unsubscribed"
    assert (await client.request({"op": "subscribe"}))["op"] == "subscribed"
    other, _ = await open_client(limited.url)
    assert (await other.request({"op": "subscribe"}))["op"] == "subscribed"


async def test_query_rows_are_limited(limited: DaemonProcess) -> None:
    client, _ = await open_client(limited.url)
    assert (await client.append([metric(i) for i in range(4)]))["op"] == "ack"
    assert len((await client.query("events", from_seq=0, limit=3))["rows"]) == 3
    refused = await client.query("events", from_seq=0, limit=4)
    assert refused["code"] == "too_large"
    assert refused["message"] == "limit: 4 rows asked, at most 3 per query (max_query_rows)"
    # An answer with more rows than the limit (here: asked without a limit) is refused too.
    refused = await client.query("events", from_seq=0)
    assert refused["code"] == "too_large" and "4 rows, at most 3 (max_query_rows)" in refused["message"]


async def test_field_length_and_nesting_are_limited_per_event(limited: DaemonProcess) -> None:
    client, _ = await open_client(limited.url)
    assert (await client.append([item({"a": {"b": {"c": 1}}}, 1)]))["accepted"] == 1  # 3 levels: the limit
    ack = await client.append(
        [
            item({"a": {"b": {"c": {"d": 1}}}}, 2),  # 4 levels
            item({"text": "z" * 21}, 3),  # a string of 21 characters
            item({"k" * 21: 1}, 4),  # a key of 21 characters
            {"id": "s5", "type": "run.started", "run": "r2", "data": {"notes": "n" * 21}},
        ]
    )
    assert ack["accepted"] == 0
    reasons = {r["index"]: r["message"] for r in ack["rejected"]}
    assert reasons == {
        0: "item.data: nested deeper than 3 levels",
        1: "item.data.text: 21 characters, at most 20 (max_field_chars)",
        2: "item.data: a key of 21 characters, at most 20 (max_field_chars)",
        3: "run.started.notes: 21 characters, at most 20 (max_field_chars)",
    }


async def test_connections_are_limited(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path / "t.db", "--max-connections", "2").start()
    try:
        one, _ = await open_client(daemon.url)
        two, _ = await open_client(daemon.url)
        async with connect(daemon.url) as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 30)
            assert ws.close_code == 1013
            assert ws.close_reason == "too many connections (max_connections=2)"
        await one.ws.close()
        # A place is free once the daemon has seen that connection end: try until it has.
        for _ in range(300):
            async with connect(daemon.url) as ws:
                await ws.send(json.dumps({"op": "hello", "protocol": 1}))
                try:
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
                except ConnectionClosed:
                    assert ws.close_code == 1013
                    continue
                assert reply["op"] == "welcome"
                break
        else:
            pytest.fail("no place came free after a connection closed")
        await two.ws.close()
    finally:
        stop_quietly(daemon)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-depth", "deep"], "--max-depth: expected an integer, got 'deep'"),
        (["--max-events-per-append", "0"], "max_events_per_append: expected 1 or more, got 0"),
        (["--rate-conn-events", "fast"], "--rate-conn-events: expected RATE or RATE:BURST"),
        (["--max-http-connections", "-1"], "max_http_connections: expected 1 or more, got -1"),
        (["--http-head-timeout", "soon"], "--http-head-timeout: expected a number of seconds, got 'soon'"),
    ],
)
def test_serve_refuses_bad_limits_naming_the_option(tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tracklog", "serve", "--db", str(tmp_path / "t.db"), "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr


async def test_welcome_tells_lowered_limits_and_the_thin_client_sizes_its_appends_to_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import tracklog

    daemon = DaemonProcess(
        tmp_path / "t.db", "--max-events-per-append", "10", "--max-frame-bytes", "65536"
    ).start()
    try:
        _, welcome = await open_client(daemon.url)
        assert welcome["max_events_per_append"] == 10 and welcome["max_frame_bytes"] == 65536
        tl = tracklog.connect(daemon.url, spool_dir=tmp_path / "spool")
        try:
            with caplog.at_level("INFO", logger="tracklog"):
                run = tl.start_run(name="small appends", run_id="r-small")
                for step in range(200):
                    run.log_metrics({"loss": 1.0}, step=step)
                run.log_item(data={"text": "w" * 40_000})  # alone it fits; with others it would not
                run.log_item(data={"text": "v" * 40_000})
                run.finish()
                assert await asyncio.to_thread(tl.flush, 60)
            assert tl.stats()["acked"] == 204 and not tl.errors
            assert not [r for r in caplog.records if "refused" in r.getMessage()]  # none too large
        finally:
            await asyncio.to_thread(tl.close, 10)
    finally:
        stop_quietly(daemon)


async def test_a_daemon_with_the_default_limits_tells_none(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path / "t.db").start()
    try:
        _, welcome = await open_client(daemon.url)
        assert "max_events_per_append" not in welcome and "max_frame_bytes" not in welcome
    finally:
        stop_quietly(daemon)


# -- HTTP connections ------------------------------------------------------------------------


class HttpClient:
    """One kept-alive HTTP connection to the daemon, read with h11."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> HttpClient:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def get(self, target: str) -> tuple[int, dict[str, str], bytes]:
        """Send a GET and read its answer: status, headers (lowercase names), body."""
        request = h11.Request(method="GET", target=target, headers=[("Host", "127.0.0.1")])
        self.writer.write(self.h11.send(request) + self.h11.send(h11.EndOfMessage()))
        await self.writer.drain()
        response = await self._next()
        assert isinstance(response, h11.Response), response
        body = b""
        while not isinstance(part := await self._next(), h11.EndOfMessage):
            body += part.data
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        headers = {name.decode(): value.decode() for name, value in response.headers}
        return response.status_code, headers, body

    async def _next(self) -> object:
        while (event := self.h11.next_event()) is h11.NEED_DATA:
            self.h11.receive_data(await asyncio.wait_for(self.reader.read(65536), 30))
        return event

    async def closed_by_daemon(self) -> bool:
        """Whether the daemon closes the connection (EOF after what it sent) within 30 s."""
        while data := await asyncio.wait_for(self.reader.read(65536), 30):
            self.h11.receive_data(data)
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def test_http_connections_are_limited_with_503_and_a_place_comes_free(tmp_path: Path) -> None:
    # A long head timeout: the kept-alive connections hold their places for the whole test.
    daemon = DaemonProcess(
        tmp_path / "t.db", "--max-http-connections", "3", "--http-head-timeout", "600"
    ).start()
    clients: list[HttpClient] = []
    try:
        # A WebSocket is no longer an HTTP connection once upgraded: it takes no place.
        ws, _ = await open_client(daemon.url)
        for _ in range(3):
            client = await HttpClient.open(daemon.port)
            clients.append(client)
            assert (await client.get("/healthz"))[0] == 200  # served, and kept alive
        one_too_many = await HttpClient.open(daemon.port)
        status, headers, body = await one_too_many.get("/healthz")
        assert status == 503 and headers["retry-after"] == "1"
        assert headers["content-type"] == "application/json" and headers["connection"] == "close"
        answer = json.loads(body)
        assert answer["error"] == "overloaded" and answer["limit"] == "max_http_connections"
        assert "max_http_connections=3" in answer["message"]
        assert await one_too_many.closed_by_daemon()
        await one_too_many.close()
        # The kept-alive ones are still served.
        assert (await clients[0].get("/healthz"))[0] == 200
        # A place is free once the daemon has seen one close: try until it has.
        await clients.pop().close()
        deadline = time.monotonic() + 60
        while True:
            client = await HttpClient.open(daemon.port)
            status, _, _ = await client.get("/healthz")
            if status == 200:
                clients.append(client)
                break
            await client.close()
            assert status == 503 and time.monotonic() < deadline, "no place came free"
        # The WebSocket went on all along.
        assert (await ws.query("stats"))["op"] == "result"
        await ws.ws.close()
    finally:
        for client in clients:
            await client.close()
        stop_quietly(daemon)


async def test_a_request_head_sent_a_byte_at_a_time_is_cut_off_at_the_head_timeout(tmp_path: Path) -> None:
    """Slowloris: a client that never finishes its request head loses the connection after
    --http-head-timeout, however often it sends a byte; so does one that sends nothing."""
    daemon = DaemonProcess(tmp_path / "t.db", "--http-head-timeout", "0.5").start()
    try:
        silent = await HttpClient.open(daemon.port)
        slow = await HttpClient.open(daemon.port)
        slow.writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        deadline = time.monotonic() + 60
        closed = False
        while not closed:
            assert time.monotonic() < deadline, "the daemon kept a head that never ended"
            # One more header line now and then (more often than the head timeout), until
            # the daemon closes: reading for a moment both paces the client and sees the EOF.
            try:
                slow.writer.write(b"X-Slow: 1\r\n")
                await slow.writer.drain()
                closed = await asyncio.wait_for(slow.reader.read(65536), 0.1) == b""
            except TimeoutError:
                continue
            except ConnectionError:
                closed = True
        await slow.close()
        assert await asyncio.wait_for(silent.reader.read(65536), 30) == b""
        await silent.close()
    finally:
        stop_quietly(daemon)
