"""Two daemons on one PostgreSQL database, as a deployment runs them.

- a subscriber on either daemon gets every event appended through both, exactly once, in
  seq order, catch-up then live (LISTEN as the wake-up, the log as the truth);
- a run written through one daemon is never marked `lost` by the other (writer leases);
- under load from thin clients and raw clients on both daemons, a `kill -9` of one daemon
  (restarted on its port) and a restart of PostgreSQL lose nothing acked: afterwards
  every acked event is in the log once, seqs are gapless, `verify` passes, and every
  subscriber got the whole log once, in order.

Every wait is for a condition, with a bound; nothing sleeps for a time to pass.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import tracklog
from tests.conftest import Client, DaemonProcess, open_client
from tests.pg import PgServer, free_port

#: Seconds any one condition may take before the test fails.
WAIT = 90.0


def metric(run: str, step: int, id_: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "metrics", "run": run, "data": {"values": {"loss": 1.0}, "step": step}}
    if id_ is not None:
        event["id"] = id_
    return event


def started(proc: DaemonProcess) -> DaemonProcess:
    return proc.start()


@pytest.fixture
def daemons(pg_url: str) -> Iterator[Callable[..., DaemonProcess]]:
    """Start daemons on the test's database (stopped, or killed, after the test)."""
    running: list[DaemonProcess] = []

    def start(*extra: str) -> DaemonProcess:
        proc = DaemonProcess(pg_url, *extra).start()
        running.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in running:
            if proc.proc is not None and proc.proc.poll() is None:
                try:
                    proc.stop()
                except subprocess.TimeoutExpired:
                    proc.kill()


async def until(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll `condition` (sync or async) until it is truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


class Subscriber:
    """A raw subscription from seq 0 that records every event it is sent, in a task."""

    def __init__(self, client: Client, sub: int) -> None:
        self.client = client
        self.sub = sub
        self.seqs: list[int] = []
        self.lives: list[int] = []
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str) -> Subscriber:
        client, _ = await open_client(url)
        reply = await client.request({"op": "subscribe", "from_seq": 0})
        assert reply["op"] == "subscribed"
        return cls(client, reply["sub"])

    async def _read(self) -> None:
        while True:
            msg = await self.client.recv(timeout=3600)
            if msg.get("op") == "events" and msg["sub"] == self.sub:
                self.seqs.extend(e["seq"] for e in msg["events"])
            elif msg.get("op") == "live":
                self.lives.append(msg["seq"])

    def close(self) -> None:
        self.task.cancel()


async def test_a_subscriber_on_one_daemon_gets_what_both_append_once_in_order(
    daemons: Callable[..., DaemonProcess],
) -> None:
    a, b = daemons(), daemons()
    writer_a, _ = await open_client(a.url)
    writer_b, _ = await open_client(b.url)
    # Before anyone subscribes: caught up from the log.
    await writer_a.append([metric("ra", i) for i in range(5)])
    on_b = await Subscriber.open(b.url)
    on_a = await Subscriber.open(a.url)
    await until(lambda: on_b.lives and on_a.lives, "both subscriptions live")

    async def write(client: Client, run: str) -> None:
        for i in range(40):
            reply = await client.append([metric(run, i), metric(run, i + 1000)])
            assert reply["op"] == "ack" and reply["accepted"] == 2

    await asyncio.gather(write(writer_a, "ra"), write(writer_b, "rb"))
    total = 5 + 2 * 40 * 2
    for sub in (on_a, on_b):
        await until(lambda s=sub: len(s.seqs) >= total, f"sub {sub.sub} to get {total} events")  # type: ignore[misc]
        assert sub.seqs == list(range(1, total + 1))
        sub.close()


async def test_a_run_written_through_one_daemon_is_not_marked_lost_by_the_other(
    daemons: Callable[..., DaemonProcess],
) -> None:
    a = daemons("--lost-after", "0.3")
    b = daemons("--lost-after", "0.3", "--log-level", "debug")
    # The run's writer starts on b and moves to a (a load balancer's failover): b's
    # timer for the run starts when its connection leaves.
    first, _ = await open_client(b.url)
    await first.append([{"type": "run.started", "run": "r", "data": {}}, metric("r", 0)])
    moved, _ = await open_client(a.url)
    await moved.append([metric("r", 1)])
    await first.ws.close()
    checks = 0

    def b_checked() -> bool:
        return sum("written through another daemon" in line for line in b.log) > checks

    # b looks twice: once within the lease a took when it wrote, once on the lease a
    # renews for a connected writer that writes nothing more.
    for checks in range(2):  # noqa: B007 (read by b_checked)
        await until(b_checked, f"b's check number {checks + 1} of the run")
    reader, _ = await open_client(b.url)
    assert (await reader.query("run", run="r"))["rows"][0]["status"] == "running"
    # The writer leaves a too: now the run is lost (a's timer, or b's, marks it once).
    await moved.ws.close()

    async def status() -> str:
        return str((await reader.query("run", run="r"))["rows"][0]["status"])

    await until(lambda: _is(status(), "lost"), "the run to be marked lost")
    types = [e["type"] for e in (await reader.query("events", from_seq=0))["rows"]]
    assert types.count("run.finished") == 1


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)
