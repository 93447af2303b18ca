"""A synchronous request connection for the calls that must wait for the daemon's answer.

`log_*` calls only queue; checks and cache reads cannot, since the caller needs the
answer. They go through this second connection rather than the sender's: the sender's
connection is a pipeline of appends whose acks are matched by order and replayed from the
spool after a reconnect, and mixing request and answer traffic into it would couple a
caller's wait to that machinery (and to its backoff while the daemon is away). Here a
caller sends one request and waits, with a timeout, for the reply to it; a
lock makes threads take turns. The connection opens on first use and is kept.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Final

import msgspec
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

from tracklog.protocol import errors
from tracklog.protocol.connection import Answered, ConnectionViolation, Refused
from tracklog.protocol.connection import ClientConnection as Connection
from tracklog.protocol.limits import MAX_FRAME_BYTES
from tracklog.protocol.messages import Append, Check, Error, Query

from . import wire
from .pings import SyncConnection
from .tls import connect_options

#: Seconds a check or a cache call waits for its answer unless told otherwise.
DEFAULT_TIMEOUT: Final = 10.0
#: The least wait before sending a request refused for a rate limit again (should a daemon
#: name no `retry_after`, the client must still not spin).
MIN_RATE_WAIT: Final = 0.01


class DaemonUnavailable(errors.TracklogError):
    """The daemon could not be reached, or did not answer in time.

    Raised by the calls that wait for an answer (checks, the cache). A pipeline that
    would rather go on without deduplication catches it; `log_*` calls never raise it.
    """


class RequestTimeout(DaemonUnavailable):
    """The daemon did not answer within the timeout."""


class Requests:
    """One lazily opened connection for request/answer calls, shared by a tracker's threads.

    The protocol (hello, refs, matching replies) is the connection object's; this class
    only opens the socket, moves frames, and waits with a timeout.
    """

    def __init__(
        self, url: str, token: str | None, client_name: str, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.url = url
        self.token = token
        self.client_name = client_name
        self.timeout = timeout
        self._ws: ClientConnection | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self._closed = False

    def request(self, msg: Query | Check | Append, timeout: float | None = None) -> Any:
        """Send msg (its `ref` is allocated here) and return the reply to it.

        Raises DaemonUnavailable (RequestTimeout after `timeout` seconds) when the daemon
        is away, and the ProtocolError of the daemon's error code when it refuses. A
        request refused for a rate limit is sent again after the `retry_after` the daemon
        names, while that fits in the timeout (RateLimited after that).
        """
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            reply = self._request_once(msg, limit, deadline)
            if not isinstance(reply, Error):
                return reply
            if reply.code == errors.RATE_LIMITED:
                wait = max(reply.retry_after or 0.0, MIN_RATE_WAIT)
                if time.monotonic() + wait < deadline:
                    time.sleep(wait)  # the daemon asked for it: nothing was done, send again
                    continue
            raise errors.error_for_code(reply.code, reply.message, reply.ref, reply.retry_after)

    def _request_once(self, msg: Query | Check | Append, limit: float, deadline: float) -> Any:
        """One exchange: the reply to msg (an Error too), or DaemonUnavailable."""
        with self._lock:
            if self._closed:
                raise DaemonUnavailable("the tracker is closed")
            try:
                ws, conn = (
                    (self._ws, self._conn)
                    if self._ws is not None and self._conn is not None
                    else self._open(limit)
                )
                ref, data = conn.request(msg)
                ws.send(data)
                reply = None
                while reply is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError
                    for event in conn.receive(ws.recv(timeout=remaining, decode=False)):
                        if isinstance(event, Answered) and event.ref == ref:
                            reply = event.reply
            except TimeoutError as exc:
                self._drop()  # a late answer must not be taken for the next request's
                raise RequestTimeout(f"no answer from {self.url} within {limit:g} s") from exc
            except (
                OSError,
                ConnectionClosed,
                InvalidHandshake,
                InvalidURI,
                ConnectionRefusedError,
                ConnectionViolation,
                msgspec.DecodeError,
            ) as exc:
                self._drop()
                raise DaemonUnavailable(
                    f"cannot reach the daemon at {self.url}: {type(exc).__name__}: {exc}"
                ) from exc
        return reply

    def _open(self, timeout: float) -> tuple[ClientConnection, Connection]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        ws = connect(
            self.url,
            additional_headers=headers,
            open_timeout=timeout,
            max_size=MAX_FRAME_BYTES,
            compression=None,
            user_agent_header=self.client_name,
            proxy=None,
            create_connection=SyncConnection,
            **connect_options(self.url),
        )
        # Held open across calls, so entered by hand (websockets >= 17.1 warns when a
        # connection is used without `with`), and closed by `close`.
        ws.__enter__()
        conn = Connection(self.client_name, self.token, enc_hook=wire.enc_hook)
        try:
            ws.send(conn.hello())
            for event in conn.receive(ws.recv(timeout=timeout, decode=False)):
                if isinstance(event, Refused):
                    raise ConnectionRefusedError(f"{event.error.code}: {event.error.message}")
        except BaseException:
            ws.close()
            raise
        self._ws, self._conn = ws, conn
        return ws, conn

    def _drop(self) -> None:
        ws, self._ws, self._conn = self._ws, None, None
        if ws is not None:
            with contextlib.suppress(Exception):  # closing a broken connection: nothing more to do
                ws.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()
