"""`tracklog serve --db postgresql://...`: two daemons on one PostgreSQL database take
appends and ack them with one gapless sequence of seqs, a resend through the other daemon
is a duplicate naming the first seq, and a live subscriber gets what its daemon commits.
Queries wait for PostgreSQL's read model: until then they answer with a storage error.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import DaemonProcess, open_client


def metric(step: int, id_: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "metrics", "run": "r", "data": {"values": {"loss": 1.0}, "step": step}}
    if id_ is not None:
        event["id"] = id_
    return event


@pytest.fixture
def two_daemons(pg_url: str) -> Iterator[tuple[DaemonProcess, DaemonProcess]]:
    started: list[DaemonProcess] = []
    try:
        for _ in range(2):
            started.append(_daemon(pg_url))
        yield started[0], started[1]
    finally:
        for proc in started:
            proc.stop()


def _daemon(url: str) -> DaemonProcess:
    proc = DaemonProcess(url)  # type: ignore[arg-type]  # a URL, passed on as --db
    return proc.start()


async def test_two_daemons_on_one_database_ack_one_gapless_log(
    two_daemons: tuple[DaemonProcess, DaemonProcess],
) -> None:
    a, b = two_daemons
    client_a, welcome = await open_client(a.url)
    assert welcome["op"] == "welcome"
    client_b, _ = await open_client(b.url)
    first = await client_a.append([metric(0, "x"), metric(1)])
    second = await client_b.append([metric(2), metric(0, "x")])
    third = await client_a.append([metric(3)])
    assert (first["first_seq"], first["last_seq"]) == (1, 2)
    assert (second["first_seq"], second["last_seq"]) == (3, 3)
    assert second["duplicates"] == [{"index": 1, "seq": 1}]
    assert (third["first_seq"], third["last_seq"]) == (4, 4)


async def test_a_live_subscriber_gets_what_its_daemon_commits(
    two_daemons: tuple[DaemonProcess, DaemonProcess],
) -> None:
    a, _ = two_daemons
    writer, _ = await open_client(a.url)
    watcher, _ = await open_client(a.url)
    reply = await watcher.request({"op": "subscribe"})
    assert reply["op"] == "subscribed"
    assert await watcher.recv() == {"op": "live", "sub": reply["sub"], "seq": 0}
    await writer.append([metric(0), metric(1)])
    got = await watcher.recv()
    assert got["op"] == "events" and [e["seq"] for e in got["events"]] == [1, 2]
