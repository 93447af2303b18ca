"""Following the log: `Tracker.subscribe` and `AsyncTracker.subscribe`.

A subscription is an iterator of events in stored form (dicts with `seq`, `type`, `run`,
`ts`, `recorded`, `id`, `data`). It keeps its own connection, and when that drops it
reconnects with backoff and subscribes again from the last seq it yielded, so a consumer
sees every matching event once, in order, across daemon restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final

import msgspec
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import connect as sync_connect

from tracklog.protocol.connection import (
    Answered,
    ClientConnection,
    Delivered,
    Notice,
    Refused,
    WentLive,
)
from tracklog.protocol.errors import error_for_code
from tracklog.protocol.messages import Error, Subscribed

from .pings import AsyncConnection, SyncConnection
from .tls import connect_options

BACKOFF_START: Final = 0.05
BACKOFF_MAX: Final = 5.0
#: Jitter from a generator of our own: the global `random` state is the user's (a seeded
#: training run must not see a tracker thread draw from it).
_jitter = random.Random()
_RETRYABLE = (ConnectionClosed, OSError, InvalidHandshake, TimeoutError)


class SubscriptionState:
    """What a subscription knows across its connections, shared by the sync and async forms
    (no I/O here). Each connection's protocol (hello, subscribe, position, duplicates) is a
    fresh `ClientConnection`, started by `hello()`."""

    def __init__(
        self,
        from_seq: int | None,
        runs: list[str] | None,
        types: list[str] | None,
        pipelines: list[str] | None,
        token: str | None,
    ) -> None:
        #: The seq of the last event yielded; None until the position is known.
        self.last_seq = from_seq
        #: The seq of the last event received (queued or yielded): where a new connection resumes.
        self.received_seq = from_seq
        self.runs, self.types, self.pipelines = runs, types, pipelines
        self.token = token
        #: True once the daemon said `live` (caught up), until the next reconnect.
        self.live = False
        self.reconnects = 0
        self.pending: deque[dict[str, Any]] = deque()
        self._conn: ClientConnection | None = None

    def hello(self) -> bytes:
        """The first frame of a new connection."""
        self._conn = ClientConnection("tracklog-subscribe", self.token)
        return self._conn.hello()

    def subscribe(self) -> bytes:
        """Subscribe on the new connection, after the last event received."""
        assert self._conn is not None, "hello() first"
        _, data = self._conn.subscribe(self.received_seq, self.runs, self.types, self.pipelines)
        return data

    def receive(self, frame: bytes | str) -> None:
        """Take one frame from the daemon: queue new events, note position and `live`."""
        assert self._conn is not None, "hello() first"
        for event in self._conn.receive(frame):
            match event:
                case Delivered():
                    self.pending.extend(msgspec.structs.asdict(e) for e in event.events)
                    self.received_seq = event.events[-1].seq
                case Answered(reply=Subscribed(head=head)):
                    if self.received_seq is None:
                        self.received_seq = head  # "from now on": resume from here after a drop
                    if self.last_seq is None:
                        self.last_seq = head
                case Answered(reply=Error() as error) | Refused(error=error) | Notice(error=error):
                    raise error_for_code(error.code, error.message, error.ref)
                case WentLive():
                    self.live = True

    def take(self) -> dict[str, Any]:
        event = self.pending.popleft()
        self.last_seq = event["seq"]
        return event


def _backoff(attempt: int) -> float:
    """Seconds to wait before reconnect attempt `attempt`: doubling up to BACKOFF_MAX,
    jittered. The exponent is capped, so a daemon away for hours (thousands of attempts)
    does not overflow the float."""
    return min(BACKOFF_MAX, BACKOFF_START * 2.0 ** min(attempt, 32)) * _jitter.uniform(0.5, 1.0)


class Subscription:
    """A blocking iterator over matching events; `close()` (or `with`) ends it.

    `idle_timeout`: stop iterating when nothing arrives for that long (None: wait forever).
    """

    def __init__(
        self, url: str, state: SubscriptionState, idle_timeout: float | None = None, reconnect: bool = True
    ) -> None:
        self.url = url
        self.state = state
        self.idle_timeout = idle_timeout
        self.reconnect = reconnect
        self._ws: Any = None
        self._closed = False

    @property
    def last_seq(self) -> int | None:
        return self.state.last_seq

    @property
    def live(self) -> bool:
        return self.state.live

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        attempt = 0
        idle_since = time.monotonic()
        while True:
            if self.state.pending:
                return self.state.take()
            if self._closed:
                raise StopIteration
            try:
                if self._ws is None:
                    self._open()
                wait = None
                if self.idle_timeout is not None:
                    wait = self.idle_timeout - (time.monotonic() - idle_since)
                    if wait <= 0:
                        raise StopIteration
                try:
                    frame = self._ws.recv(timeout=wait)
                except TimeoutError:
                    raise StopIteration from None
                self.state.receive(frame)
                attempt = 0
            except _RETRYABLE:
                self._drop()
                if not self.reconnect or self._closed:
                    raise StopIteration from None
                time.sleep(_backoff(attempt))
                attempt += 1

    def _open(self) -> None:
        # Entered at once: a websockets connection used without `with` is deprecated.
        ws = sync_connect(
            self.url,
            open_timeout=10,
            max_size=None,
            compression=None,
            create_connection=SyncConnection,
            **connect_options(self.url),
        ).__enter__()
        try:
            ws.send(self.state.hello())
            self.state.receive(ws.recv(timeout=30))
            ws.send(self.state.subscribe())
        except BaseException:
            ws.close()
            raise
        self._ws = ws
        self.state.live = False

    def _drop(self) -> None:
        if self._ws is not None:
            self.state.reconnects += 1
            with contextlib.suppress(Exception):
                self._ws.close()
            self._ws = None

    def close(self) -> None:
        self._closed = True
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSubscription:
    """The asyncio form: `async for event in tl.subscribe(...)`."""

    def __init__(
        self, url: str, state: SubscriptionState, idle_timeout: float | None = None, reconnect: bool = True
    ) -> None:
        self.url = url
        self.state = state
        self.idle_timeout = idle_timeout
        self.reconnect = reconnect
        self._ws: Any = None
        self._closed = False

    @property
    def last_seq(self) -> int | None:
        return self.state.last_seq

    @property
    def live(self) -> bool:
        return self.state.live

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        attempt = 0
        while True:
            if self.state.pending:
                return self.state.take()
            if self._closed:
                raise StopAsyncIteration
            try:
                if self._ws is None:
                    ws = await async_connect(
                        self.url,
                        open_timeout=10,
                        max_size=None,
                        compression=None,
                        create_connection=AsyncConnection,
                        **connect_options(self.url),
                    )
                    try:
                        await ws.send(self.state.hello())
                        self.state.receive(await asyncio.wait_for(ws.recv(), 30))
                        await ws.send(self.state.subscribe())
                    except BaseException:
                        await ws.close()
                        raise
                    self._ws = ws
                    self.state.live = False
                try:
                    frame = await asyncio.wait_for(self._ws.recv(), self.idle_timeout)
                except TimeoutError:
                    raise StopAsyncIteration from None
                self.state.receive(frame)
                attempt = 0
            except _RETRYABLE:
                if self._ws is not None:
                    self.state.reconnects += 1
                    with contextlib.suppress(Exception):
                        await self._ws.close()
                    self._ws = None
                if not self.reconnect or self._closed:
                    raise StopAsyncIteration from None
                await asyncio.sleep(_backoff(attempt))
                attempt += 1

    async def aclose(self) -> None:
        self._closed = True
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
