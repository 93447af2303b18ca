"""HTTP/1.1 on the daemon's one port, in front of the WebSocket.

Every TCP connection is a websockets `ServerConnection` (`HttpConnection`, given to
`serve()` as its documented `create_connection`), so the websockets server tracks it and,
once upgraded, it is websockets' own connection: flow control, ping/pong, the close
handshake and the frame size limit are websockets', unchanged, and nothing of this module
runs per frame. Until a request asks for the WebSocket, the bytes go to an `h11` state
machine instead of websockets' handshake parser (which reads a GET without a body and
nothing else). That gives requests with bodies (Content-Length or chunked), keep-alive
and pipelining, `Expect: 100-continue` and HEAD. A request for `/ws` is handed over,
its head rebuilt and every byte after it, to websockets' parser, and the opening
handshake goes on as websockets does it.

Reading is pulled: bytes are read from the socket only while a request head or a body
piece is wanted, so a pipelining client or an upload waits in the kernel's buffers, not
in the daemon's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import threading
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, BinaryIO, Final

import h11
import msgspec
import structlog
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Response

from tracklog.protocol import errors
from tracklog.protocol.limits import MAX_FRAME_BYTES

log = structlog.get_logger("tracklog.http")

#: Seconds for the WebSocket handshake, the longest pause inside a body, and the
#: default for a whole request head to arrive (`HttpService.head_timeout`).
OPEN_TIMEOUT: Final = 10.0
#: Bytes a request head may take (request line and headers).
MAX_HEAD_BYTES: Final = 64 * 1024
#: The default limit of `RequestBody.json` and `RequestBody.read`.
MAX_JSON_BODY: Final = MAX_FRAME_BYTES
#: Seconds a connection that is done waits for the client to read the last answer and
#: close, before it is dropped.
LINGER_TIMEOUT: Final = 10.0
#: Bytes `RequestBody.save` gathers before each write to the file.
SAVE_BATCH: Final = 1024 * 1024
#: Seconds a connection refused for being one too many waits for the client to read its
#: 503 and close (short: such connections come when the daemon is busy already).
REFUSED_LINGER_TIMEOUT: Final = 2.0
#: Seconds a client refused with 503 is told to wait (`Retry-After`).
RETRY_AFTER_SECONDS: Final = 1


class BodyTooLarge(errors.TooLarge):
    """A request body over the handler's limit (413)."""


class BadBody(errors.BadMessage):
    """A request body that is not what the handler reads: not JSON, badly chunked (400)."""


class BodyIncomplete(errors.BadMessage):
    """A request body cut short: the client closed, or stopped sending (400)."""


class _ClientGone(Exception):
    """The connection closed while an answer was being sent."""


class _Closing(Exception):
    """The daemon is stopping: an idle connection stops waiting for a request."""


@dataclass(frozen=True)
class SavedBody:
    """A request body written to a file: its size and sha256 (hex)."""

    path: Path
    size: int
    sha256: str


class RequestBody:
    """The body of one request, read once: whole (`read`, `json`), in pieces (`chunks`),
    or into a file (`save`). Each takes a limit in bytes; a body over it is BodyTooLarge
    (checked against Content-Length before anything is read, so a client waiting on
    `Expect: 100-continue` is refused without sending it). A body the handler does not
    read is skipped: its connection is closed after the answer."""

    def __init__(self, connection: HttpConnection, length: int | None) -> None:
        self._connection = connection
        #: Content-Length, or None for a chunked body.
        self.length = length
        self._started = False
        #: Bytes of the body read so far.
        self.received = 0

    def _start(self, limit: int) -> None:
        if self._started:
            raise RuntimeError("a request body can be read only once")
        self._started = True
        if self.length is not None and self.length > limit:
            raise BodyTooLarge(f"request body: {self.length} bytes, more than the limit of {limit}")

    async def chunks(self, limit: int) -> AsyncGenerator[bytes, None]:
        """The body piece by piece as it arrives; BodyTooLarge past `limit` bytes,
        BodyIncomplete when the client closes or pauses OPEN_TIMEOUT before its end."""
        self._start(limit)
        while True:
            piece = await self._connection._read_body_piece()
            if piece is None:
                return
            self.received += len(piece)
            if self.received > limit:
                raise BodyTooLarge(f"request body: more than the limit of {limit} bytes")
            yield piece

    async def read(self, limit: int = MAX_JSON_BODY) -> bytes:
        """The whole body (at most `limit` bytes)."""
        async with contextlib.aclosing(self.chunks(limit)) as pieces:
            parts = [piece async for piece in pieces]
        return b"".join(parts)

    async def json(self, limit: int = MAX_JSON_BODY) -> Any:
        """The body decoded as JSON; BadBody (400) naming the problem when it is not."""
        payload = await self.read(limit)
        if not payload.strip():
            raise BadBody("request body: expected JSON, got an empty body")
        try:
            return msgspec.json.decode(payload)
        except msgspec.DecodeError as exc:
            raise BadBody(f"request body: not valid JSON: {exc}") from None

    async def save(self, path: Path, limit: int) -> SavedBody:
        """Write the body to `path`, whole or not at all.

        It goes to a hidden file beside `path`, renamed to `path` once complete; on any
        failure (too large, cut short, the handler cancelled) that file is removed and the
        error raised, so a broken upload leaves nothing behind. The sha256 is computed on
        the way, for content-addressed storage.
        """
        part = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        digest = hashlib.sha256()
        size = 0
        file: BinaryIO = await asyncio.to_thread(open, part, "xb")
        try:
            batch = bytearray()
            async with contextlib.aclosing(self.chunks(limit)) as pieces:
                async for piece in pieces:
                    digest.update(piece)
                    size += len(piece)
                    batch += piece
                    if len(batch) >= SAVE_BATCH:
                        await asyncio.to_thread(file.write, bytes(batch))
                        batch.clear()
            if batch:
                await asyncio.to_thread(file.write, bytes(batch))
            await asyncio.to_thread(_flush_and_close, file)
            await asyncio.to_thread(os.replace, part, path)
        except BaseException:
            file.close()
            with contextlib.suppress(OSError):
                part.unlink()
            raise
        return SavedBody(path, size, digest.hexdigest())


def _flush_and_close(file: BinaryIO) -> None:
    file.flush()
    os.fsync(file.fileno())
    file.close()


class HttpRequest:
    """One HTTP request: method, target (`path`, with its query string, as sent), headers
    (case-insensitive), and its body. `path`, `headers` and `method` read as websockets'
    handshake `Request` does, so checks written for one serve the other."""

    __slots__ = ("body", "headers", "method", "path", "protocol")

    def __init__(self, method: str, path: str, headers: Headers, protocol: str, body: RequestBody) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.protocol = protocol
        self.body = body

    def handshake_bytes(self) -> bytes:
        """The request head again, byte for byte as far as websockets' handshake parser
        reads it (header values were decoded as ISO-8859-1, as websockets does)."""
        lines = [f"{self.method} {self.path} {self.protocol}"]
        lines += [f"{name}: {value}" for name, value in self.headers.raw_items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- answers ---------------------------------------------------------------------------------

#: Pieces an export may have waiting between its reading thread and the socket.
STREAM_PIECES: Final = 4


class StreamStopped(Exception):
    """A download cut short by the daemon's shutdown."""


class StreamedResponse:
    """A 200 whose body is produced piece by piece (chunked, or with `length` as its
    Content-Length when it is known, as for a stored blob), never whole in memory.

    `produce` runs on a thread of its own and blocks while STREAM_PIECES pieces wait for
    the socket, which is written with the connection's flow control. `registry` holds the
    streams being sent, so shutdown can stop them. The connection closes after it.
    """

    def __init__(
        self,
        headers: Sequence[tuple[str, str]],
        produce: Callable[[], Iterator[bytes]],
        registry: set[StreamedResponse],
        length: int | None = None,
    ) -> None:
        self.headers = headers
        #: The body's size when known (sent as Content-Length; else chunked).
        self.length = length
        self.produce = produce
        self.registry = registry
        self._stopped = threading.Event()
        self._slots = threading.Semaphore(STREAM_PIECES)
        self._connection: HttpConnection | None = None

    def stop(self, abort: bool = False) -> None:
        """Stop producing (daemon shutdown); with abort, drop the connection now."""
        self._stopped.set()
        self._slots.release(STREAM_PIECES)
        if abort and self._connection is not None:
            self._connection.transport.abort()

    def _run_producer(
        self, loop: asyncio.AbstractEventLoop, pieces: asyncio.Queue[bytes | BaseException | None]
    ) -> None:
        """On its own thread: read the export, handing each piece to the event loop.

        It always ends by handing over None (done) or an exception (failed or stopped),
        which the sender waits for.
        """
        end: BaseException | None = None
        try:
            iterator = self.produce()
            try:
                for piece in iterator:
                    self._slots.acquire()
                    if self._stopped.is_set():
                        end = StreamStopped("the daemon is stopping")
                        break
                    loop.call_soon_threadsafe(pieces.put_nowait, piece)
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:
            end = exc
        with contextlib.suppress(RuntimeError):  # the loop may be closed at shutdown
            loop.call_soon_threadsafe(pieces.put_nowait, end)

    async def send(self, connection: HttpConnection, head_only: bool) -> None:
        """Send the head, then (unless HEAD) the pieces; a failed export drops the
        connection, so the client sees an incomplete chunked body, never a short file."""
        self._connection = connection
        self.registry.add(self)
        try:
            framing = (
                ("Transfer-Encoding", "chunked")
                if self.length is None
                else ("Content-Length", str(self.length))
            )
            headers = [*self.headers, framing, ("Connection", "close")]
            await connection.send_head(HTTPStatus.OK, headers)
            if head_only:
                await connection.send_end()
                return
            await self._send_pieces(connection)
        finally:
            self.stop()
            self.registry.discard(self)

    async def _send_pieces(self, connection: HttpConnection) -> None:
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        producer = threading.Thread(
            target=self._run_producer, args=(loop, pieces), name="tracklog-export", daemon=True
        )
        producer.start()
        while True:
            piece = await pieces.get()
            if piece is None:
                break
            if isinstance(piece, BaseException):
                if not isinstance(piece, StreamStopped):
                    log.error("export failed", error=repr(piece))
                connection.transport.abort()
                raise _ClientGone
            await connection.send_piece(piece)
            self._slots.release()
        await connection.send_end()


#: What answers a request: a whole response, or a streamed one.
Answer = Response | StreamedResponse
#: Answers a request; None (for `/ws` only) hands the connection to the WebSocket handshake.
Responder = Callable[["HttpConnection", HttpRequest], Awaitable[Answer | None]]


class HttpService:
    """What the HTTP side of every connection shares: the function that answers a request,
    and the connections still speaking HTTP, so shutdown can close the idle ones at once
    and abort the rest at its deadline, and so there are at most `max_connections` of them.

    It is passed to `serve()` as `process_request`: websockets hands that to
    `HttpConnection.handshake`, which is where each connection's HTTP loop runs.
    """

    def __init__(
        self, respond: Responder, max_connections: int | None = None, head_timeout: float = OPEN_TIMEOUT
    ) -> None:
        self.respond = respond
        #: Connections speaking HTTP at once (`max_http_connections`; None: no limit).
        self.max_connections = max_connections
        #: Seconds a connection has for a whole request head.
        self.head_timeout = head_timeout
        self.connections: set[HttpConnection] = set()
        #: Connections refused for being one too many, still sending their 503.
        self.refusing: set[HttpConnection] = set()
        #: Connections refused for being one too many, since the daemon started.
        self.refused = 0
        #: When a refusal was last logged (at most one line a second: refusals come in floods).
        self._refusal_logged_at = -math.inf
        self.closing = False

    def note_refusal(self, now: float) -> None:
        """Count a connection refused for being one too many; log it, a line a second at most."""
        self.refused += 1
        if now - self._refusal_logged_at >= 1.0:
            self._refusal_logged_at = now
            log.warning(
                "HTTP connection refused",
                reason=f"too many HTTP connections (max_http_connections={self.max_connections})",
                refused=self.refused,
            )

    def full(self) -> bool:
        """Whether one more connection would be one too many."""
        limit = self.max_connections
        return limit is not None and len(self.connections) >= limit

    def close_idle(self) -> None:
        """From now on every answer closes its connection; connections waiting for a
        request close now."""
        self.closing = True
        for connection in list(self.connections):
            connection._stop_waiting()

    def abort(self) -> None:
        for connection in [*self.connections, *self.refusing]:
            connection.transport.abort()


class HttpConnection(ServerConnection):
    """A connection on the daemon's port: HTTP/1.1 through h11 until a request for the
    WebSocket, then websockets' connection (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The HTTP state machine; None once the connection is a WebSocket.
        self.h11: h11.Connection | None = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._readable: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._idle = False
        #: Done with HTTP: bytes that still come are dropped until the client closes.
        self._discarding = False
        self._server_header: str | None = None
        #: The client sent its EOF (it may still read the answer).
        self._eof = False
        #: The answer being sent is the connection's last (`Connection: close`).
        self._closing_after = False

    # -- asyncio callbacks: while in HTTP, bytes go to h11 ------------------------------

    def data_received(self, data: bytes) -> None:
        http = self.h11
        if http is None:
            super().data_received(data)
            return
        if self._discarding:
            return
        http.receive_data(data)
        waiter = self._readable
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        elif not self._reading_paused:
            # Nobody wants more now: leave the rest in the kernel until someone does.
            self._reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:  # type: ignore[override]  # True keeps the socket open
        if self.h11 is None:
            return super().eof_received()
        if self._discarding:
            return False  # the client closed after the last answer: close too
        self._eof = True
        self.h11.receive_data(b"")
        self._wake()
        return True  # keep the socket open to answer what was asked before the EOF

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.h11 is not None:
            self.h11.receive_data(b"")
            self._wake()

    def _wake(self) -> None:
        waiter = self._readable
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _stop_waiting(self) -> None:
        waiter = self._readable
        if self._idle and waiter is not None and not waiter.done():
            waiter.set_exception(_Closing())

    def _resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    async def _next_event(self, timeout: float | None) -> Any:
        """The next h11 event, reading from the socket only when h11 needs more bytes.

        TimeoutError when nothing arrives for `timeout` seconds (None: the caller bounds
        the wait); h11.RemoteProtocolError for a request h11 cannot read.
        """
        http = self.h11
        assert http is not None
        while True:
            event = http.next_event()
            if event is not h11.NEED_DATA:
                return event
            waiter = self._readable = self.loop.create_future()
            self._resume_reading()
            try:
                async with asyncio.timeout(timeout):
                    await waiter
            finally:
                self._readable = None

    # -- the HTTP loop ------------------------------------------------------------------

    async def handshake(
        self,
        process_request: Any = None,
        process_response: Any = None,
        server_header: str | None = None,
    ) -> None:
        """Answer HTTP requests until the connection closes or asks for the WebSocket;
        then websockets' opening handshake. `process_request` is the HttpService."""
        service: HttpService = process_request
        self._server_header = server_header
        if service.full():
            await self._refuse_one_too_many(service)
            return
        # In the set until the connection is websockets' or closed, so shutdown can
        # close or abort it at any point of its HTTP life, lingering included.
        service.connections.add(self)
        try:
            upgrade = await self._serve_http(service)
            if not upgrade:
                await self._linger(service)
                return
        finally:
            service.connections.discard(self)
        async with asyncio.timeout(OPEN_TIMEOUT):
            await super().handshake(None, process_response, server_header)

    async def _serve_http(self, service: HttpService) -> bool:
        """Requests, one after another (pipelined ones too); True to go on as a WebSocket."""
        http = self.h11
        assert http is not None
        while True:
            self._idle = True
            try:
                if service.closing:
                    return False
                # The whole head within the deadline, not each piece of it: a client
                # sending a byte now and then (slowloris) does not keep its place.
                async with asyncio.timeout(service.head_timeout):
                    event = await self._next_event(None)
            except (TimeoutError, _Closing):
                return False  # no request came (an idle keep-alive connection, or shutdown)
            except h11.RemoteProtocolError as exc:
                with contextlib.suppress(_ClientGone, h11.LocalProtocolError):
                    await self._send_error(exc)
                return False
            finally:
                self._idle = False
            if not isinstance(event, h11.Request):
                return False  # h11.ConnectionClosed: the client is done
            request = self._request(event)
            try:
                answer = await service.respond(self, request)
            except Exception:
                log.exception("process_request failed")
                answer = self.protocol.reject(
                    HTTPStatus.INTERNAL_SERVER_ERROR, "Failed to answer; see the daemon's log.\n"
                )
            if answer is None:
                self._hand_to_websocket(request)
                return True
            try:
                await self._send_answer(request, answer, service.closing)
            except (_ClientGone, h11.LocalProtocolError):
                return False
            if http.our_state is not h11.DONE or http.their_state is not h11.DONE:
                return False
            http.start_next_cycle()

    def _request(self, event: h11.Request) -> HttpRequest:
        headers = Headers(
            [(name.decode("latin-1"), value.decode("latin-1")) for name, value in event.headers.raw_items()]
        )
        length = headers.get("Content-Length")
        chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        body = RequestBody(self, None if chunked else int(length or 0))
        return HttpRequest(
            event.method.decode("ascii"),
            event.target.decode("ascii"),
            headers,
            "HTTP/" + event.http_version.decode("ascii"),
            body,
        )

    def _hand_to_websocket(self, request: HttpRequest) -> None:
        """From now on the connection is websockets': its parser gets the request head and
        every byte received after it."""
        assert self.h11 is not None
        rest, closed = self.h11.trailing_data
        self.h11 = None
        self._resume_reading()
        super().data_received(request.handshake_bytes() + rest)
        if closed:
            super().eof_received()

    async def _read_body_piece(self) -> bytes | None:
        """The next piece of the current request's body; None at its end."""
        http = self.h11
        assert http is not None
        if http.their_state is not h11.SEND_BODY:
            return None
        if http.client_is_waiting_for_100_continue:
            await self._send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue"))
        try:
            event = await self._next_event(OPEN_TIMEOUT)
        except TimeoutError:
            raise BodyIncomplete(
                f"request body: nothing received for {OPEN_TIMEOUT:g} s before its end"
            ) from None
        except h11.RemoteProtocolError as exc:
            if http.trailing_data[1]:
                raise BodyIncomplete(f"request body: the connection closed before its end ({exc})") from None
            raise BadBody(f"request body: {exc}") from None
        if isinstance(event, h11.Data):
            return bytes(event.data)
        if isinstance(event, h11.EndOfMessage):
            return None
        raise BodyIncomplete("request body: the connection closed before its end")

    def _body_finished(self) -> bool:
        """Whether the request's body is all read, reading what is already here of it
        (an empty body, or a small one that came with the head); never waits."""
        http = self.h11
        assert http is not None
        while http.their_state is h11.SEND_BODY and not http.client_is_waiting_for_100_continue:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError:
                return False
            if event is h11.NEED_DATA:
                return False
        return http.their_state not in (h11.SEND_BODY, h11.ERROR)

    # -- sending ------------------------------------------------------------------------

    async def _send(self, event: Any) -> None:
        http = self.h11
        assert http is not None
        data = http.send(event)
        if data:
            if self.transport.is_closing():
                raise _ClientGone
            self.transport.write(data)
            await self.drain()

    async def send_head(self, status: HTTPStatus | int, headers: Sequence[tuple[str, str]]) -> None:
        """The status line and headers of the answer (with the Server header); with
        `Connection: close` added when the request's body was not read or the daemon stops."""
        status = HTTPStatus(status)
        all_headers = list(headers)
        if self._server_header:
            all_headers.append(("Server", self._server_header))
        if self._closing_after and not any(name.lower() == "connection" for name, _ in all_headers):
            all_headers.append(("Connection", "close"))
        await self._send(h11.Response(status_code=status.value, headers=all_headers, reason=status.phrase))

    async def send_piece(self, data: bytes) -> None:
        """A piece of the answer's body (chunked when the answer has no Content-Length)."""
        if data:
            await self._send(h11.Data(data=data))

    async def send_end(self) -> None:
        await self._send(h11.EndOfMessage())

    async def _send_answer(self, request: HttpRequest, answer: Answer, closing: bool) -> None:
        self._closing_after = closing or not self._body_finished()
        head_only = request.method == "HEAD"
        if isinstance(answer, StreamedResponse):
            await answer.send(self, head_only)
            return
        await self.send_head(answer.status_code, list(answer.headers.raw_items()))
        if not head_only:
            await self.send_piece(bytes(answer.body))
        await self.send_end()

    async def _send_error(self, exc: h11.RemoteProtocolError) -> None:
        """A request h11 cannot read: its status (400, 431...) and what was wrong, then close."""
        status = HTTPStatus(exc.error_status_hint)
        payload = msgspec.json.encode({"error": "bad_request", "message": f"bad HTTP request: {exc}"})
        self._closing_after = True
        await self.send_head(
            status,
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(payload))),
                ("Cache-Control", "no-store"),
            ],
        )
        await self.send_piece(payload)
        await self.send_end()

    async def _refuse_one_too_many(self, service: HttpService) -> None:
        """A connection over `max_http_connections`: 503 with Retry-After at once, without
        reading its request, then closed. The refused ones still sending their answer are
        bounded too: past as many again, a connection is dropped without an answer."""
        service.note_refusal(self.loop.time())
        if len(service.refusing) >= (service.max_connections or 0):
            self.transport.abort()
            return
        service.refusing.add(self)
        try:
            limit = service.max_connections
            payload = msgspec.json.encode(
                {
                    "error": errors.OVERLOADED,
                    "message": f"too many HTTP connections (max_http_connections={limit}); try again later",
                    "limit": "max_http_connections",
                    "retry_after": RETRY_AFTER_SECONDS,
                }
            )
            self._closing_after = True
            with contextlib.suppress(_ClientGone, h11.LocalProtocolError):
                # h11 lets a server answer before the request (as with 408): nothing is read.
                await self.send_head(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    [
                        ("Content-Type", "application/json"),
                        ("Content-Length", str(len(payload))),
                        ("Cache-Control", "no-store"),
                        ("Retry-After", str(RETRY_AFTER_SECONDS)),
                    ],
                )
                await self.send_piece(payload)
                await self.send_end()
            # The request it sent is unread: half-close and drop what comes, so the 503 is
            # not destroyed by a reset before the client reads it.
            await self._linger(service, unread=True, timeout=REFUSED_LINGER_TIMEOUT)
        finally:
            service.refusing.discard(self)

    async def _linger(
        self, service: HttpService, unread: bool = False, timeout: float = LINGER_TIMEOUT
    ) -> None:
        """End an HTTP connection without losing its last answer (websockets aborts the
        socket after this, which would drop unsent bytes).

        When the client may still be sending (a body not read, requests not answered),
        the daemon stops sending (FIN), drops what still comes and waits for the client
        to close: closing at once would answer its bytes with a reset, which can destroy
        the answer before the client reads it. Otherwise, or at shutdown, it closes once
        the answer is out. Either way the wait is bounded (`timeout`). `unread`: the client
        may be sending what was never read (a connection answered before its request).
        """
        http = self.h11
        unread = unread or (
            http is not None
            and (http.their_state not in (h11.DONE, h11.IDLE, h11.CLOSED) or bool(http.trailing_data[0]))
        )
        self._discarding = True
        self._resume_reading()
        transport = self.transport
        if not transport.is_closing():
            if unread and not self._eof and not service.closing and transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.connection_lost_waiter), timeout)
