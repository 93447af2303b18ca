"""A synchronous request connection for the calls that must wait for the daemon's answer.

`log_*` calls only queue; checks and cache reads cannot, since the caller needs the
answer. They go through this second connection rather than the sender's: the sender's
connection is a pipeline of appends whose acks are matched by order and replayed from the
spool after a reconnect, and mixing request and answer traffic into it would couple a
caller's wait to that machinery (and to its backoff while the daemon is away). Here a
caller sends one request and waits, with a timeout, for the reply carrying its ref; a
lock makes threads take turns. The connection opens on first use and is kept.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from typing import Any, Final

import msgspec
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

from tracklog.protocol import errors
from tracklog.protocol.limits import MAX_FRAME_BYTES, PROTOCOL_VERSION
from tracklog.protocol.messages import Error, Welcome

from . import wire

#: Seconds a check or a cache call waits for its answer unless told otherwise.
DEFAULT_TIMEOUT: Final = 10.0


class DaemonUnavailable(errors.TracklogError):
    """The daemon could not be reached, or did not answer in time.

    Raised by the calls that wait for an answer (checks, the cache). A pipeline that
    would rather go on without deduplication catches it; `log_*` calls never raise it.
    """


class RequestTimeout(DaemonUnavailable):
    """The daemon did not answer within the timeout."""


class Requests:
    """One lazily opened connection for request/answer calls, shared by a tracker's threads."""

    def __init__(
        self, url: str, token: str | None, client_name: str, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.url = url
        self.token = token
        self.client_name = client_name
        self.timeout = timeout
        self._ws: ClientConnection | None = None
        self._lock = threading.Lock()
        self._refs = itertools.count(1)
        self._closed = False

    def request(self, msg: dict[str, Any], timeout: float | None = None) -> Any:
        """Send msg (a plain dict; `ref` is added) and return the reply with its ref.

        Raises DaemonUnavailable (RequestTimeout after `timeout` seconds) when the daemon
        is away, and the ProtocolError of the daemon's error code when it refuses.
        """
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        with self._lock:
            if self._closed:
                raise DaemonUnavailable("the tracker is closed")
            ref = next(self._refs)
            try:
                ws = self._ws if self._ws is not None else self._open(limit)
                ws.send(wire.encode({**msg, "ref": ref}))
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError
                    frame = ws.recv(timeout=remaining)
                    try:
                        reply = wire.decode_reply(frame.encode() if isinstance(frame, str) else frame)
                    except msgspec.ValidationError:
                        continue  # a reply this client does not know
                    if getattr(reply, "ref", None) == ref:
                        break
            except TimeoutError as exc:
                self._drop()  # a late answer must not be taken for the next request's
                raise RequestTimeout(f"no answer from {self.url} within {limit:g} s") from exc
            except (OSError, ConnectionClosed, InvalidHandshake, InvalidURI, ConnectionRefusedError) as exc:
                self._drop()
                raise DaemonUnavailable(
                    f"cannot reach the daemon at {self.url}: {type(exc).__name__}: {exc}"
                ) from exc
        if isinstance(reply, Error):
            raise errors.error_for_code(reply.code, reply.message, reply.ref)
        return reply

    def _open(self, timeout: float) -> ClientConnection:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        ws = connect(
            self.url,
            additional_headers=headers,
            open_timeout=timeout,
            max_size=MAX_FRAME_BYTES,
            compression=None,
            user_agent_header=self.client_name,
            proxy=None,
        )
        # Held open across calls, so entered by hand (websockets >= 17.1 warns when a
        # connection is used without `with`), and closed by `close`.
        ws.__enter__()
        try:
            ws.send(wire.encode(wire.HelloFrame(PROTOCOL_VERSION, self.client_name, self.token)))
            reply = wire.decode_reply(ws.recv(timeout=timeout, decode=False))
            if isinstance(reply, Error):
                raise ConnectionRefusedError(f"{reply.code}: {reply.message}")
            if not isinstance(reply, Welcome):
                raise ConnectionRefusedError(f"expected welcome, got {type(reply).__name__}")
        except BaseException:
            ws.close()
            raise
        self._ws = ws
        return ws

    def _drop(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):  # closing a broken connection: nothing more to do
                ws.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()
