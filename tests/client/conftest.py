"""Fixtures for the thin client: a daemon on a port chosen before it starts, trackers that
are always closed, and a way to read back what the daemon stored."""

from __future__ import annotations

import asyncio
import queue
import socket
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tracklog
from tests.conftest import DaemonProcess, open_client

#: Generous: every wait in these tests is for an event, bounded by this, never a sleep.
WAIT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon(DaemonProcess):
    """The shared fixture's daemon, with two fixes kept here (tests/conftest.py is not ours):
    its stderr pipe is closed at end of output (else an unclosed-file ResourceWarning fails
    the next test under filterwarnings=error), and each start reads a fresh line queue
    (else a restart after kill reads the old process's end of output and reports it dead).
    """

    def start(self) -> Daemon:
        self.lines = queue.Queue()
        super().start()
        return self

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        lines = self.lines  # the queue of the start() that launched proc
        assert proc.stderr is not None
        with proc.stderr:
            for line in proc.stderr:
                self.log.append(line)
                lines.put(line)
        lines.put("")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class PortDaemon(Daemon):
    """A daemon on a port chosen before it starts, so a tracker's URL stays valid across
    kill -9 and restart, and a tracker can be made before the daemon exists."""

    def __init__(self, db: Path) -> None:
        port = free_port()
        super().__init__(db, "--port", str(port))
        self.port = port


def _stop(proc: Daemon) -> None:
    if proc.running():
        try:
            proc.stop()
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def daemon(db_path: Path) -> Iterator[Daemon]:
    """Overrides the shared fixture with the fixed `Daemon`."""
    proc = Daemon(db_path).start()
    try:
        yield proc
    finally:
        _stop(proc)


@pytest.fixture
def port_daemon(db_path: Path) -> Iterator[PortDaemon]:
    """Not started: call .start(). Stopped (or killed) at the end whatever happened."""
    proc = PortDaemon(db_path)
    try:
        yield proc
    finally:
        _stop(proc)


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def make_tracker(spool_dir: Path) -> Iterator[Callable[..., tracklog.Tracker]]:
    """connect() with a test spool folder and short backoff; every tracker is closed after."""
    made: list[tracklog.Tracker] = []

    def make(url: str, **options: Any) -> tracklog.Tracker:
        options.setdefault("spool_dir", spool_dir)
        options.setdefault("backoff_max", 0.5)
        tracker = tracklog.connect(url, **options)
        made.append(tracker)
        return tracker

    yield make
    for tracker in made:
        tracker.close(timeout=5)


def stored_events(url: str, run: str | None = None, types: list[str] | None = None) -> list[dict[str, Any]]:
    """Every event in the daemon's log (optionally of one run), read page by page."""

    async def read() -> list[dict[str, Any]]:
        client, _ = await open_client(url, binary=True)
        out: list[dict[str, Any]] = []
        try:
            after = 0
            while True:
                args: dict[str, Any] = {"from_seq": after, "limit": 10_000}
                if run is not None:
                    args["run"] = run
                if types is not None:
                    args["types"] = types
                reply = await client.query("events", **args)
                assert reply["op"] == "result", reply
                rows = reply["rows"]
                if not rows:
                    return out
                out.extend(rows)
                after = rows[-1]["seq"]
        finally:
            await client.ws.close()

    return asyncio.run(read())


def query(url: str, q: str, **args: Any) -> Any:
    async def ask() -> Any:
        client, _ = await open_client(url, binary=True)
        try:
            return await client.query(q, **args)
        finally:
            await client.ws.close()

    return asyncio.run(ask())


def ids_of(events: list[dict[str, Any]]) -> Counter[str]:
    return Counter(e["id"] for e in events)
