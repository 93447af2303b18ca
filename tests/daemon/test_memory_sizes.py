"""The daemon keeps nothing per connection once the connection is gone, and the debug-only
memory dumps (daemon/memdebug.py) are off by default and say what they should when on.

A soak (bench/soak.py) sees memory only as RSS, which caches fill up; these count the
daemon's own structures instead, so they show a leak without any timing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from tests.conftest import open_client
from tracklog.daemon import memdebug
from tracklog.daemon.server import Daemon, Settings

WAIT = 30.0
CONNECTIONS = 12
#: The structures that hold something per connection (or per subscription, per request).
PER_CONNECTION = (
    "connections",
    "http_connections",
    "pending_acks",
    "run_writers",
    "subscriptions",
    "subscriptions_live",
    "subscription_buffered_events",
    "writer_unanswered",
)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon(Settings(db=tmp_path / "d.db", port=0, lost_after=0.05))
    await d.start()
    try:
        yield d
    finally:
        await asyncio.wait_for(d.stop(), WAIT)


async def all_done(tasks: Iterable[asyncio.Task[None]], what: str) -> None:
    """Wait until these tasks have ended (the daemon's own: its connection handlers, its
    lost-run timers); fail naming `what` after WAIT seconds."""
    pending = set(tasks)
    if not pending:
        return
    _, still = await asyncio.wait(pending, timeout=WAIT)
    assert not still, f"not within {WAIT} s: {what}"


async def test_connections_with_appends_and_subscriptions_leave_nothing_behind(daemon: Daemon) -> None:
    url = f"ws://127.0.0.1:{daemon.port}/ws"
    for round_ in range(2):
        clients = [(await open_client(url, binary=i % 2 == 1))[0] for i in range(CONNECTIONS)]
        for i, client in enumerate(clients):
            reply = await client.request({"op": "subscribe", "ref": 1, "from_seq": 0})
            assert reply["op"] == "subscribed", reply
            run = f"r-{round_}-{i}"
            ack = await client.append(
                [
                    {"id": f"{run}-s", "type": "run.started", "run": run, "data": {"name": run}},
                    {"id": f"{run}-m", "type": "metrics", "run": run, "data": {"values": {"x": 1.0}}},
                ]
            )
            assert ack["op"] == "ack", ack
        sizes = daemon.memory_sizes()
        assert sizes["connections"] == CONNECTIONS
        assert sizes["subscriptions"] == CONNECTIONS
        assert sizes["run_writers"] == CONNECTIONS
        # Half close with a handshake, half just drop the socket.
        for i, client in enumerate(clients):
            if i % 2:
                client.ws.transport.abort()
            else:
                await client.ws.close()
        # The daemon's handler of each connection ends: its clean-up has run.
        assert daemon._server is not None
        await all_done(daemon._server.handler_tasks, "connection handlers")
        sizes = daemon.memory_sizes()
        assert {name: sizes[name] for name in PER_CONNECTION} == dict.fromkeys(PER_CONNECTION, 0)
        # Every run lost its writer: its timer fires and goes (lost_after is short here).
        await all_done(daemon._lost_timers.values(), "lost timers")
        assert daemon.memory_sizes()["lost_timers"] == 0
    assert daemon.memory_sizes()["runs_known_to_hub"] == 2 * CONNECTIONS  # one entry per run, by design


def test_memdebug_is_off_unless_the_environment_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(memdebug.ENV_FRAMES, raising=False)
    loop = asyncio.new_event_loop()
    try:
        assert memdebug.install(loop, dict) is False
    finally:
        loop.close()


async def test_memdebug_dumps_the_memory_and_the_sizes_on_sigusr1(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(memdebug.ENV_FRAMES, "0")  # numbers only, no tracemalloc
    monkeypatch.setenv(memdebug.ENV_DIR, str(tmp_path))
    loop = asyncio.get_running_loop()
    asked = asyncio.Event()

    def sizes() -> dict[str, int]:
        asked.set()  # the dump asks for the sizes, then writes its file in the same callback
        return {"connections": 3}

    assert memdebug.install(loop, sizes)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.wait_for(asked.wait(), WAIT)
        report = json.loads((tmp_path / "memory-001.json").read_text())
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    assert report["sizes"] == {"connections": 3}
    assert report["rss"] > 0
    assert report["sqlite"] is None or report["sqlite"] >= 0
    assert "python_traced" not in report
