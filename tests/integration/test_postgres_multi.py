"""Two daemons on one PostgreSQL database, as a deployment runs them.

- a subscriber on either daemon gets every event appended through both, exactly once, in
  seq order, catch-up then live (LISTEN as the wake-up, the log as the truth);
- a run written through one daemon is never marked `lost` by the other (writer leases);
- a run whose daemon is killed (`kill -9`) is marked `lost` once by one of the survivors,
  unless its writer reconnected to one of them;
- under load from thin clients and raw clients on both daemons, a `kill -9` of one daemon
  (restarted on its port) and a restart of PostgreSQL lose nothing acked: afterwards
  every acked event is in the log once, seqs are gapless, `verify` passes, and every
  subscriber got the whole log once, in order.

Every wait is for a condition, with a bound; nothing sleeps for a time to pass.
"""

from __future__ import annotations

import asyncio
import json
import queue
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


class Progress:
    """Wakes every `until` when something it may be waiting for happened in this process:
    an ack, a frame to a subscriber, the end of a fault the test injected."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def changed(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        await asyncio.wait_for(self._event.wait(), timeout)


progress: Progress | None = None


@pytest.fixture(autouse=True)
def _progress() -> Iterator[None]:
    global progress
    progress = Progress()
    yield
    progress = None


def changed() -> None:
    if progress is not None:
        progress.changed()


async def until(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Check `condition` each time this process sees progress, until it is truthy; fail
    naming `what` after `timeout`."""
    assert progress is not None
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        try:
            await progress.wait(deadline - time.monotonic())
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None
    return value


async def until_line(proc: DaemonProcess, match: Callable[[str], bool], what: str) -> str:
    """Read the daemon's log as it comes until a line matches; fail naming `what` after WAIT."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            line = await asyncio.to_thread(proc.lines.get, True, max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"timed out waiting for {what}") from None
        assert line, f"the daemon exited while waiting for {what}"
        if match(line):
            return line


class Subscriber:
    """A raw subscription from seq 0 that records every event it is sent, in a task."""

    def __init__(self, client: Client, sub: int) -> None:
        self.client = client
        self.sub = sub
        self.seqs: list[int] = []
        self.types: list[str] = []
        #: The run of each `run.finished` sent, in order.
        self.finished: list[str] = []
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
                self.types.extend(e["type"] for e in msg["events"])
                self.finished.extend(e["run"] for e in msg["events"] if e["type"] == "run.finished")
            elif msg.get("op") == "live":
                self.lives.append(msg["seq"])
            changed()

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
    watcher = await Subscriber.open(a.url)  # sees the lost mark, whichever daemon writes it
    first, _ = await open_client(b.url)
    await first.append([{"type": "run.started", "run": "r", "data": {}}, metric("r", 0)])
    moved, _ = await open_client(a.url)
    await moved.append([metric("r", 1)])
    await first.ws.close()
    # b looks twice: once within the lease a took when it wrote, once on the lease a
    # renews for a connected writer that writes nothing more.
    for check in range(2):
        await until_line(
            b, lambda line: "written through another daemon" in line, f"b's check number {check + 1}"
        )
    reader, _ = await open_client(b.url)
    assert (await reader.query("run", run="r"))["rows"][0]["status"] == "running"
    # The writer leaves a too: now the run is lost (a's timer, or b's, marks it once).
    await moved.ws.close()

    await until(lambda: "run.finished" in watcher.types, "the run to be marked lost")
    assert (await reader.query("run", run="r"))["rows"][0]["status"] == "lost"
    types = [e["type"] for e in (await reader.query("events", from_seq=0))["rows"]]
    assert types.count("run.finished") == 1


async def test_a_run_of_a_killed_daemon_is_marked_lost_once_by_one_of_the_survivors(
    daemons: Callable[..., DaemonProcess],
) -> None:
    dead, *survivors = (daemons("--lost-after", "0.5") for _ in range(3))
    watcher = await Subscriber.open(survivors[0].url)
    await until(lambda: watcher.lives, "the subscription live")
    writer, _ = await open_client(dead.url)
    await writer.append([{"type": "run.started", "run": "r", "data": {}}, metric("r", 0)])
    dead.kill()  # its writer's connection goes with it, and its leases are never renewed again

    await until(lambda: "r" in watcher.finished, "a survivor to mark the run lost")
    reader, _ = await open_client(survivors[1].url)
    assert (await reader.query("run", run="r"))["rows"][0]["status"] == "lost"
    types = [e["type"] for e in (await reader.query("events", from_seq=0))["rows"]]
    assert types.count("run.finished") == 1
    watcher.close()


async def test_a_writer_that_moved_to_a_surviving_daemon_keeps_its_run(
    daemons: Callable[..., DaemonProcess],
) -> None:
    dead = daemons("--lost-after", "0.5")
    survivor = daemons("--lost-after", "0.5")
    watcher = await Subscriber.open(survivor.url)
    await until(lambda: watcher.lives, "the subscription live")
    first, _ = await open_client(dead.url)
    await first.append([{"type": "run.started", "run": "moved", "data": {}}, metric("moved", 0)])
    await first.append([{"type": "run.started", "run": "left", "data": {}}, metric("left", 0)])
    moved, _ = await open_client(survivor.url)  # the writer of `moved` reconnects to the survivor
    await moved.append([metric("moved", 1)])
    dead.kill()

    # `left`, leased by the dead daemon only, is marked; `moved` has the survivor's lease.
    await until(lambda: "left" in watcher.finished, "the survivor to mark `left` lost")
    reader, _ = await open_client(survivor.url)
    assert (await reader.query("run", run="moved"))["rows"][0]["status"] == "running"
    # A writer of `left` that comes back late resumes it.
    await moved.append([metric("left", 1)])
    assert (await reader.query("run", run="left"))["rows"][0]["status"] == "running"
    assert watcher.finished == ["left"]
    watcher.close()


class RawWriter:
    """Appends batches of events with ids through raw connections, until stopped. A batch
    is sent again (the same ids) until acked: at once after `overloaded`, or through the
    other daemon when its connection drops. Records what was acked."""

    def __init__(self, name: str, urls: list[str]) -> None:
        self.name = name
        self.urls = urls
        self.acked: set[str] = set()
        self.resends = 0
        self.stopping = False
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        at = 0
        client: Client | None = None
        batch_no = 0
        while not self.stopping:
            batch = [metric(self.name, batch_no * 10 + i, f"{self.name}-{batch_no}-{i}") for i in range(10)]
            while True:
                try:
                    if client is None:
                        client, _ = await open_client(self.urls[at % len(self.urls)])
                    reply = await client.append(batch)
                except Exception as exc:  # the connection failed, one way or another
                    if isinstance(exc, AssertionError):
                        raise
                    client, at = None, at + 1  # the daemon went away: the other one, at once
                    self.resends += 1
                    continue
                if reply.get("op") == "ack":
                    assert not reply.get("rejected"), reply
                    self.acked.update(e["id"] for e in batch)
                    changed()
                    break
                # The daemon cannot reach PostgreSQL (a restart): send again at once, as a
                # client with no backoff would; each try is a round trip, so it never spins idle.
                assert reply.get("code") == "overloaded", reply
                self.resends += 1
            batch_no += 1


def thin_writer(
    url: str, run_id: str, stop: threading.Event, spool: Path, done: list[dict[str, Any]]
) -> None:
    """A thin client (tracklog.connect) logging metrics to one run until `stop`, then
    flushing; appends its stats, with the steps it logged, to `done`."""
    tracker = tracklog.connect(url, spool_dir=spool, backoff_max=0.3)
    try:
        run = tracker.start_run(run_id=run_id)
        step = 0
        while not stop.is_set():
            run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
            step += 1
            if step % 10 == 0:
                stop.wait(0.01)  # pace the load over the faults (not a wait for anything)
        run.finish()
        assert tracker.flush(timeout=WAIT), tracker.stats()
        done.append({**tracker.stats(), "run": run_id, "steps": step})
    finally:
        tracker.close(timeout=10)


def log_rows(url: str) -> list[tuple[int, str | None, str | None, str]]:
    with psycopg.connect(url) as conn:
        return list(conn.execute("SELECT seq, id, run, type FROM events ORDER BY seq"))


async def test_kill_of_a_daemon_and_a_postgres_restart_under_load_lose_nothing_acked(
    daemons: Callable[..., DaemonProcess], pg_server: PgServer, pg_url: str, tmp_path: Path
) -> None:
    port_a = free_port()
    a = daemons("--port", str(port_a))
    b = daemons()
    subs = {"a": await Subscriber.open(a.url), "b": await Subscriber.open(b.url)}
    raw = [RawWriter("raw-a", [a.url, b.url]), RawWriter("raw-b", [b.url, a.url])]
    thin_done: list[dict[str, Any]] = []
    stop_thin = threading.Event()
    threads = [
        threading.Thread(
            target=thin_writer, args=(url, f"thin-{n}", stop_thin, tmp_path / f"spool-{n}", thin_done)
        )
        for n, url in (("a", a.url), ("b", b.url))
    ]
    for thread in threads:
        thread.start()

    def acked() -> int:
        return sum(len(w.acked) for w in raw)

    await until(lambda: acked() >= 300, "appends before the kill")
    a.kill()
    subs["a"].close()
    a_seen = list(subs["a"].seqs)
    before = acked()
    await until(lambda: acked() >= before + 200, "appends through b while a is down")
    a.start()  # on its port again: its thin client reconnects to it
    resumed, _ = await open_client(a.url)
    reply = await resumed.request({"op": "subscribe", "from_seq": a_seen[-1] if a_seen else 0})
    subs["a2"] = Subscriber(resumed, reply["sub"])
    before = acked()
    await until(lambda: acked() >= before + 200, "appends after a came back")
    await asyncio.to_thread(pg_server.restart)
    before = acked()
    await until(lambda: acked() >= before + 300, "appends after PostgreSQL restarted")
    for writer in raw:
        writer.stopping = True
    stop_thin.set()
    await asyncio.gather(*(w.task for w in raw))
    for thread in threads:
        await asyncio.to_thread(thread.join, WAIT)
        assert not thread.is_alive(), "a thin client did not finish"
    assert len(thin_done) == 2

    rows = await asyncio.to_thread(log_rows, pg_url)
    head = len(rows)
    assert [r[0] for r in rows] == list(range(1, head + 1)), "seqs are not gapless"
    ids = [r[1] for r in rows if r[1] is not None]
    assert len(ids) == len(set(ids)), "an event is in the log twice"
    assert set().union(*(w.acked for w in raw)) <= set(ids), "an acked event is missing"
    for stats in thin_done:
        metrics = [r for r in rows if r[2] == stats["run"] and r[3] == "metrics"]
        assert len(metrics) == stats["steps"], stats
    # Every subscriber: the whole log once, in order (a's across its resubscription).
    await until(lambda: len(subs["b"].seqs) >= head, "b's subscriber to get everything")
    assert subs["b"].seqs == list(range(1, head + 1))
    await until(lambda: len(a_seen) + len(subs["a2"].seqs) >= head, "a's subscriber to get everything")
    assert a_seen + subs["a2"].seqs == list(range(1, head + 1))
    for sub in subs.values():
        sub.close()
    verify = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tracklog", "verify", "--db", pg_url],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert sum(w.resends for w in raw) > 0, "the faults were not seen"
    print(json.dumps({"head": head, "resends": [w.resends for w in raw], "thin": thin_done}))


async def test_a_catch_up_read_while_postgres_is_down_waits_for_it_rather_than_ending(
    daemons: Callable[..., DaemonProcess], pg_server: PgServer
) -> None:
    a = daemons()
    writer, _ = await open_client(a.url)
    await writer.append([metric("r", i) for i in range(3)])
    await asyncio.to_thread(pg_server.pause)
    try:
        watcher, _ = await open_client(a.url)
        reply = await watcher.request({"op": "subscribe", "from_seq": 0})
        assert reply["op"] == "subscribed"
        await until_line(
            a,
            lambda line: "subscription failed" in line or "read of the log failed" in line,
            "the catch-up read to fail",
        )
    finally:
        await asyncio.to_thread(pg_server.resume)
    sub = Subscriber(watcher, reply["sub"])
    await until(lambda: sub.seqs == [1, 2, 3], "the catch-up once PostgreSQL is back")
    assert "subscription failed" not in "".join(a.log)
    sub.close()
