"""The thin client never draws from the global `random` generator: it belongs to the user,
whose seeded training run must stay reproducible while tracklog's threads back off (and
Hypothesis fails a test whose strategies see the global state move under them)."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

from tests.conftest import DaemonProcess
from tracklog import sender, subscribe
from tracklog.pings import AsyncConnection, SyncConnection


def test_backoff_jitter_leaves_the_global_random_state_alone() -> None:
    random.seed(1234)
    before = random.getstate()
    delays = [subscribe._backoff(attempt) for attempt in range(1, 20)]
    fake = SimpleNamespace(options=SimpleNamespace(backoff_base=0.1, backoff_max=5.0))
    delays += [sender.Sender._backoff(fake, attempt) for attempt in range(1, 20)]  # type: ignore[arg-type]
    assert all(d > 0 for d in delays)
    assert random.getstate() == before


def test_keepalive_pings_leave_the_global_random_state_alone(daemon: DaemonProcess) -> None:
    """websockets draws a ping's payload from the global generator unless given one; the
    client's connections (threaded and asyncio) number theirs, and every ping is answered."""
    from websockets.asyncio.client import connect as async_connect
    from websockets.sync.client import connect as sync_connect

    random.seed(99)
    before = random.getstate()
    with sync_connect(daemon.url, create_connection=SyncConnection) as ws:
        pongs = [ws.ping() for _ in range(3)]
        assert all(pong.wait(60) for pong in pongs)

    async def asyncio_pings() -> None:
        async with async_connect(daemon.url, create_connection=AsyncConnection) as ws:
            waiters = [await ws.ping() for _ in range(3)]
            await asyncio.wait_for(asyncio.gather(*waiters), 60)

    asyncio.run(asyncio_pings())
    assert random.getstate() == before
