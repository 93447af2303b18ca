"""WebSocket connections whose keepalive pings leave the global `random` generator alone.

websockets gives each ping a payload from `random.getrandbits(32)` unless one is passed.
The keepalive sends one every 20 s from the client's own thread, so a training run that
seeds `random` for reproducibility would see its sequence shifted at moments nobody
chose. These connections number their pings instead: a payload only has to differ from
the pings still waiting for their pong, and a counter never repeats one.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Awaitable
from threading import Event
from typing import Any

from websockets.asyncio.client import ClientConnection as _AsyncClientConnection
from websockets.sync.client import ClientConnection as _SyncClientConnection

_PAYLOAD = struct.Struct("!Q")


class AsyncConnection(_AsyncClientConnection):
    """websockets' asyncio client connection, with numbered pings."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ping_numbers = itertools.count()

    async def ping(self, data: Any = None) -> Awaitable[float]:
        if data is None:
            data = _PAYLOAD.pack(next(self._ping_numbers))
        return await super().ping(data)


class SyncConnection(_SyncClientConnection):
    """websockets' threaded client connection, with numbered pings."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ping_numbers = itertools.count()

    def ping(self, data: Any = None, *, ack_on_close: bool = False) -> Event:
        if data is None:
            data = _PAYLOAD.pack(next(self._ping_numbers))
        return super().ping(data, ack_on_close=ack_on_close)
