"""HTTP/1.1 on the daemon's port: bodies, keep-alive, pipelining, 100-continue, HEAD, and
the WebSocket beside it (daemon/http_connection.py).

The daemon runs in the test's process so a test can add routes of its own (an echo of a
JSON body, an upload to a folder); requests are written by hand on a socket where the
framing is the point, and read back with h11's client side.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import re
import shutil
from collections.abc import AsyncIterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import h11
import pytest
from websockets.asyncio.client import connect

from tracklog.daemon.http import Params, Route, json_response
from tracklog.daemon.http_connection import BodyIncomplete, HttpRequest
from tracklog.daemon.server import Daemon, Settings

WAIT = 30.0
ECHO_LIMIT = 1000
UPLOAD_LIMIT = 2_000_000


class AddedRoutes:
    """Routes a test adds to the daemon: what they saw, for the test to wait on."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.upload_errors: asyncio.Queue[BaseException] = asyncio.Queue()

    async def echo(self, _args: dict[str, str], _params: Params, request: HttpRequest) -> Any:
        body = await request.body.json(ECHO_LIMIT)
        return json_response(HTTPStatus.OK, {"method": request.method, "body": body})

    async def upload(self, args: dict[str, str], _params: Params, request: HttpRequest) -> Any:
        try:
            saved = await request.body.save(self.folder / args["name"], UPLOAD_LIMIT)
        except BaseException as exc:
            self.upload_errors.put_nowait(exc)
            raise
        return json_response(HTTPStatus.OK, {"size": saved.size, "sha256": saved.sha256})


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon(Settings(db=tmp_path / "d.db", port=0))
    await d.start()
    try:
        yield d
    finally:
        await asyncio.wait_for(d.stop(), WAIT)


@pytest.fixture
def routes(daemon: Daemon, tmp_path: Path) -> AddedRoutes:
    folder = tmp_path / "uploads"
    folder.mkdir()
    added = AddedRoutes(folder)
    daemon.http.routes.append(Route(re.compile(r"/test/echo"), {"POST": added.echo}))
    daemon.http.routes.append(Route(re.compile(r"/test/upload/(?P<name>[^/]+)"), {"PUT": added.upload}))
    return added


class RawClient:
    """One TCP connection to the daemon: requests written as given, answers read with h11."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.h11.receive_data(await asyncio.wait_for(self.reader.read(65536), WAIT))

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next answer: status, headers (lowercase names) and body; the informational
        ones (100) are returned too, with an empty body."""
        event = await self.next_event()
        headers = {name.decode(): value.decode() for name, value in event.headers}
        if isinstance(event, h11.InformationalResponse):
            return event.status_code, headers, b""
        assert isinstance(event, h11.Response), event
        body = b""
        while True:
            part = await self.next_event()
            if isinstance(part, h11.EndOfMessage):
                break
            body += part.data
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        return event.status_code, headers, body

    def expect_request(self, method: str, target: str, headers: list[tuple[str, str]] | None = None) -> None:
        """Tell the reading side which request the next answer is for (h11 needs it)."""
        self.h11.send(
            h11.Request(method=method, target=target, headers=[("Host", "localhost"), *(headers or [])])
        )
        self.h11.send(h11.EndOfMessage())

    async def closed(self) -> bool:
        """Whether the daemon closes the connection (EOF) before WAIT seconds."""
        return await asyncio.wait_for(self.reader.read(), WAIT) == b""

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def head(method: str, target: str, *headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost", *headers, "", ""]
    return "\r\n".join(lines).encode()


def post_json(target: str, body: bytes, *headers: str) -> bytes:
    return (
        head("POST", target, "Content-Type: application/json", f"Content-Length: {len(body)}", *headers)
        + body
    )


def chunked(body: bytes, size: int = 7) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


async def in_thread_request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    def call() -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            reply = conn.getresponse()
            return reply.status, dict(reply.getheaders()), reply.read()
        finally:
            conn.close()

    return await asyncio.to_thread(call)


# -- bodies ------------------------------------------------------------------------------------


async def test_a_post_with_a_json_body_is_read_by_its_handler(daemon: Daemon, routes: AddedRoutes) -> None:
    status, headers, body = await in_thread_request(
        daemon.port, "POST", "/test/echo", b'{"a": [1, 2.5, "x"]}', {"Content-Type": "application/json"}
    )
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"method": "POST", "body": {"a": [1, 2.5, "x"]}}


async def test_a_post_with_a_body_to_an_existing_route_is_answered(daemon: Daemon) -> None:
    """The restore route ignores its body; a client sending one (`curl -d '{}'`) still gets
    its answer (websockets' parser dropped such a connection)."""
    status, _, body = await in_thread_request(daemon.port, "POST", "/api/runs/nope/restore", b"{}")
    assert status == 404 and json.loads(body)["error"] == "not_found"


async def test_a_body_that_is_not_json_is_400_naming_the_problem(daemon: Daemon, routes: AddedRoutes) -> None:
    for payload, words in ((b'{"a": ', "not valid JSON"), (b"", "empty body")):
        status, _, body = await in_thread_request(daemon.port, "POST", "/test/echo", payload)
        answer = json.loads(body)
        assert status == 400 and answer["error"] == "bad_message", payload
        assert answer["message"].startswith("request body: ") and words in answer["message"], answer


async def test_a_body_over_the_limit_is_413_and_the_connection_closes(
    daemon: Daemon, routes: AddedRoutes
) -> None:
    payload = json.dumps({"text": "x" * ECHO_LIMIT}).encode()
    status, _, body = await in_thread_request(daemon.port, "POST", "/test/echo", payload)
    answer = json.loads(body)
    assert status == 413 and answer["error"] == "too_large"
    assert answer["message"] == f"request body: {len(payload)} bytes, more than the limit of {ECHO_LIMIT}"
    # Chunked, the size is only known on the way: refused once past the limit, and the
    # rest of the body (more than the daemon ever read) is not waited for.
    client = await RawClient.open(daemon.port)
    try:
        big = b"[" + b"1," * 2_000_000 + b"1]"
        client.writer.write(head("POST", "/test/echo", "Transfer-Encoding: chunked") + chunked(big, 65536))
        client.expect_request("POST", "/test/echo")
        status, headers, body = await client.response()
        assert status == 413 and headers["connection"] == "close"
        assert json.loads(body)["message"] == f"request body: more than the limit of {ECHO_LIMIT} bytes"
        assert await client.closed()
    finally:
        await client.close()


async def test_a_chunked_body_is_read_whole(daemon: Daemon, routes: AddedRoutes) -> None:
    client = await RawClient.open(daemon.port)
    try:
        payload = json.dumps({"values": list(range(50))}).encode()
        await client.send(head("POST", "/test/echo", "Transfer-Encoding: chunked") + chunked(payload))
        client.expect_request("POST", "/test/echo")
        status, _, body = await client.response()
        assert status == 200 and json.loads(body)["body"] == {"values": list(range(50))}
        # A chunked upload, in pieces of odd sizes, lands whole with its digest.
        data = bytes(range(256)) * 1000
        await client.send(
            head("PUT", "/test/upload/blob", "Transfer-Encoding: chunked") + chunked(data, 4093)
        )
        client.expect_request("PUT", "/test/upload/blob")
        status, _, body = await client.response()
        assert status == 200
        assert json.loads(body) == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        assert (routes.folder / "blob").read_bytes() == data
        assert sorted(p.name for p in routes.folder.iterdir()) == ["blob"]
    finally:
        await client.close()


async def test_a_truncated_upload_leaves_nothing_behind_and_its_handler_sees_why(
    daemon: Daemon, routes: AddedRoutes
) -> None:
    for framing in ("Content-Length: 500000", "Transfer-Encoding: chunked"):
        client = await RawClient.open(daemon.port)
        part = b"y" * 200_000
        body = part if framing.startswith("Content") else b"%x\r\n%s\r\n" % (len(part), part)
        await client.send(head("PUT", "/test/upload/cut", framing) + body)
        await client.close()  # before the end of the body
        error = await asyncio.wait_for(routes.upload_errors.get(), WAIT)
        assert isinstance(error, BodyIncomplete), error
        assert "before its end" in error.message
        assert list(routes.folder.iterdir()) == []
    # An upload over the limit is refused and leaves nothing either.
    status, _, _ = await in_thread_request(daemon.port, "PUT", "/test/upload/big", b"z" * (UPLOAD_LIMIT + 1))
    assert status == 413
    assert list(routes.folder.iterdir()) == []


async def test_expect_100_continue_is_answered_when_the_handler_reads_the_body(
    daemon: Daemon, routes: AddedRoutes
) -> None:
    client = await RawClient.open(daemon.port)
    try:
        data = b"u" * 300_000
        await client.send(
            head("PUT", "/test/upload/f", f"Content-Length: {len(data)}", "Expect: 100-continue")
        )
        client.expect_request("PUT", "/test/upload/f", [("Expect", "100-continue"), ("Content-Length", "0")])
        status, _, _ = await client.response()
        assert status == 100
        await client.send(data)
        status, _, body = await client.response()
        assert status == 200 and json.loads(body)["size"] == len(data)
        # A body refused for its size is never asked for: the 413 comes instead of the 100.
        await client.send(
            head("PUT", "/test/upload/g", f"Content-Length: {UPLOAD_LIMIT + 1}", "Expect: 100-continue")
        )
        client.expect_request("PUT", "/test/upload/g", [("Expect", "100-continue"), ("Content-Length", "0")])
        status, headers, _ = await client.response()
        assert status == 413 and headers["connection"] == "close"
        assert await client.closed()
        assert sorted(p.name for p in routes.folder.iterdir()) == ["f"]
    finally:
        await client.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_uploads_with_expect_100_continue_and_chunked_and_reuses_the_connection(
    daemon: Daemon, routes: AddedRoutes, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB: curl asks `Expect: 100-continue` above 1 MiB
    data += b"tail"
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    base = f"http://127.0.0.1:{daemon.port}"
    curl = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-v", "--fail",
        "-T", str(source), f"{base}/test/upload/a",
        "--next", "-sS", "-H", "Transfer-Encoding: chunked", "-T", str(source), f"{base}/test/upload/b",
        "--next", "-sS", "-H", "Content-Type: application/json", "--data", '{"n": 3}', f"{base}/test/echo",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(curl.communicate(), WAIT)
    log = err.decode()
    assert curl.returncode == 0, log
    assert "Expect: 100-continue" in log and "HTTP/1.1 100 Continue" in log
    assert "Transfer-Encoding: chunked" in log
    assert log.count("Re-using existing connection") + log.count("Reusing existing") >= 2, log
    digest = hashlib.sha256(data).hexdigest()
    answers = out.decode().replace("}{", "}\n{").splitlines()
    assert [json.loads(a) for a in answers] == [
        {"size": len(data), "sha256": digest},
        {"size": len(data), "sha256": digest},
        {"method": "POST", "body": {"n": 3}},
    ]
    assert (routes.folder / "a").read_bytes() == data == (routes.folder / "b").read_bytes()


# -- keep-alive, pipelining, HEAD, methods --------------------------------------------------------


async def test_several_requests_share_one_kept_alive_connection(daemon: Daemon, routes: AddedRoutes) -> None:
    def session() -> list[tuple[int, bytes]]:
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=WAIT)
        answers = []
        try:
            for method, path, body in (
                ("GET", "/healthz", None),
                ("POST", "/test/echo", b'{"n": 1}'),
                ("GET", "/api/runs", None),
                ("POST", "/test/echo", b'{"n": 2}'),
                ("GET", "/nope", None),
                ("GET", "/api/stats", None),
            ):
                conn.request(method, path, body=body)
                reply = conn.getresponse()
                answers.append((reply.status, reply.read()))
                assert reply.getheader("Connection") is None  # kept alive
            sock = conn.sock
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            assert conn.sock is sock  # still the first connection
        finally:
            conn.close()
        return answers

    answers = await asyncio.to_thread(session)
    assert [status for status, _ in answers] == [200, 200, 200, 200, 404, 200]
    assert json.loads(answers[1][1])["body"] == {"n": 1} and json.loads(answers[3][1])["body"] == {"n": 2}


async def test_pipelined_requests_are_answered_in_order(daemon: Daemon, routes: AddedRoutes) -> None:
    client = await RawClient.open(daemon.port)
    try:
        requests = [
            (head("GET", "/healthz"), "GET", "/healthz"),
            (post_json("/test/echo", b'{"n": 1}'), "POST", "/test/echo"),
            (head("HEAD", "/api/runs"), "HEAD", "/api/runs"),
            (post_json("/test/echo", b'{"n": 2}'), "POST", "/test/echo"),
            (head("DELETE", "/api/stats"), "DELETE", "/api/stats"),
        ]
        await client.send(b"".join(raw for raw, _, _ in requests))  # all at once
        answers = []
        for _, method, target in requests:
            client.expect_request(method, target)
            answers.append(await client.response())
        assert [status for status, _, _ in answers] == [200, 200, 200, 200, 405]
        assert json.loads(answers[1][2])["body"] == {"n": 1} and json.loads(answers[3][2])["body"] == {"n": 2}
        assert answers[4][1]["allow"] == "GET"
    finally:
        await client.close()


async def test_head_has_the_headers_of_get_and_no_body(daemon: Daemon) -> None:
    client = await RawClient.open(daemon.port)
    try:
        for target in ("/api/runs", "/", "/healthz"):
            await client.send(head("GET", target))
            client.expect_request("GET", target)
            get_status, get_headers, get_body = await client.response()
            await client.send(head("HEAD", target))
            client.expect_request("HEAD", target)
            status, headers, body = await client.response()
            assert (status, body) == (get_status, b"") and get_body
            assert headers["content-length"] == str(len(get_body)) == get_headers["content-length"]
            assert headers["content-type"] == get_headers["content-type"]
    finally:
        await client.close()


async def test_head_of_a_streamed_export_sends_its_headers_only_and_closes(daemon: Daemon) -> None:
    async with connect(f"ws://127.0.0.1:{daemon.port}/ws", compression=None) as ws:
        await ws.send(json.dumps({"op": "hello", "protocol": 1}))
        await asyncio.wait_for(ws.recv(), WAIT)
        event = {"type": "metrics", "run": "r", "data": {"values": {"x": 1.0}, "step": 1}}
        await ws.send(json.dumps({"op": "append", "ref": 1, "events": [event]}))
        assert json.loads(await asyncio.wait_for(ws.recv(), WAIT))["accepted"] == 1
    client = await RawClient.open(daemon.port)
    try:
        await client.send(head("HEAD", "/api/runs/r/export/csv"))
        client.expect_request("HEAD", "/api/runs/r/export/csv")
        status, headers, body = await client.response()
        assert (status, body) == (200, b"")
        assert headers["transfer-encoding"] == "chunked" and headers["connection"] == "close"
        assert headers["content-disposition"].startswith("attachment")
        assert await client.closed()
    finally:
        await client.close()


async def test_a_method_a_route_does_not_take_is_405_with_allow(daemon: Daemon, routes: AddedRoutes) -> None:
    for method in ("GET", "PUT", "BREW"):
        status, headers, body = await in_thread_request(daemon.port, method, "/test/echo")
        assert status == 405 and headers["Allow"] == "POST", method
        assert json.loads(body)["error"] == "method_not_allowed"


async def test_a_request_the_parser_cannot_read_is_answered_with_its_status_and_closed(
    daemon: Daemon,
) -> None:
    for raw, status in (
        (b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (head("GET", "/healthz", "X-Big: " + "b" * 300_000), 431),
    ):
        client = await RawClient.open(daemon.port)
        try:
            await client.send(raw)
            data = await asyncio.wait_for(client.reader.read(), WAIT)
            assert data.startswith(b"HTTP/1.1 %d " % status), data[:100]
            body = json.loads(data.split(b"\r\n\r\n", 1)[1])
            assert body["error"] == "bad_request" and body["message"].startswith("bad HTTP request: ")
        finally:
            await client.close()


# -- the WebSocket on the same port ---------------------------------------------------------------


async def test_a_websocket_and_http_requests_share_the_port_at_once(
    daemon: Daemon, routes: AddedRoutes
) -> None:
    async with connect(f"ws://127.0.0.1:{daemon.port}/ws", compression=None) as ws:
        await ws.send(json.dumps({"op": "hello", "protocol": 1}))
        assert json.loads(await asyncio.wait_for(ws.recv(), WAIT))["op"] == "welcome"
        client = await RawClient.open(daemon.port)
        try:
            for n in range(3):
                event = {"type": "metrics", "run": "r", "data": {"values": {"x": float(n)}, "step": n}}
                await ws.send(json.dumps({"op": "append", "ref": n, "events": [event]}))
                await client.send(post_json("/test/echo", b'{"n": %d}' % n))
                client.expect_request("POST", "/test/echo")
                status, _, body = await client.response()
                assert status == 200 and json.loads(body)["body"] == {"n": n}
                ack = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
                assert ack["op"] == "ack" and ack["accepted"] == 1 and ack["ref"] == n
        finally:
            await client.close()
        status, _, body = await in_thread_request(daemon.port, "GET", "/api/runs/r/metrics")
        assert status == 200 and json.loads(body)["metrics"][0]["points"] == 3


async def test_a_websocket_upgrade_after_http_requests_on_the_same_connection(daemon: Daemon) -> None:
    """A client may ask for the WebSocket on a connection that served HTTP first: the
    upgrade goes to websockets' handshake with the bytes that follow it."""
    client = await RawClient.open(daemon.port)
    try:
        await client.send(head("GET", "/healthz"))
        client.expect_request("GET", "/healthz")
        assert (await client.response())[0] == 200
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        await client.send(
            head(
                "GET",
                "/ws",
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {key}",
                "Sec-WebSocket-Version: 13",
            )
        )
        reply = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), WAIT)
        assert reply.startswith(b"HTTP/1.1 101 ")
        assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in reply
    finally:
        await client.close()


# -- shutdown ----------------------------------------------------------------------------------------


async def test_shutdown_closes_an_idle_kept_alive_connection_cleanly(tmp_path: Path) -> None:
    """An idle kept-alive connection is closed (FIN) as shutdown starts, not aborted (RST)
    at its deadline."""
    daemon = Daemon(Settings(db=tmp_path / "d.db", port=0))
    await daemon.start()
    client = await RawClient.open(daemon.port)
    try:
        await client.send(head("GET", "/healthz"))
        client.expect_request("GET", "/healthz")
        assert (await client.response())[0] == 200
        stopping = asyncio.create_task(daemon.stop())
        assert await client.closed()  # an end of stream; an abort would raise ConnectionResetError
        await asyncio.wait_for(stopping, WAIT)
    finally:
        await client.close()
