"""Shared fixtures: a real `tracklog serve` on a free loopback port, and a small client."""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.protocol import State

# A real PostgreSQL server (session) and an empty database per test, for every test directory.
from tests.pg import pg_server, pg_url  # noqa: F401

START_TIMEOUT = 60.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="run soak tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow soak test: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


class DaemonProcess:
    """`python -m tracklog serve` in a subprocess; knows its port from its own log line."""

    def __init__(self, db: Path | str, *extra: str, env: dict[str, str] | None = None) -> None:
        self.db = db
        self.extra = extra
        #: Variables added to the daemon's environment (NOTIFY_SOCKET, say).
        self.env = env or {}
        self.proc: subprocess.Popen[str] | None = None
        self._pump_thread: threading.Thread
        self.port = 0
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DaemonProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self.lines = queue.Queue()
        self.log = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tracklog", "serve", "--db", str(self.db), "--port", "0", *self.extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._pump_thread = threading.Thread(target=self._pump, args=(self.proc,), daemon=True)
        self._pump_thread.start()
        while True:
            try:
                line = self.lines.get(timeout=START_TIMEOUT)
            except queue.Empty:
                self.kill()
                raise RuntimeError("daemon did not start:\n" + "".join(self.log)) from None
            if line == "":
                raise RuntimeError("daemon exited:\n" + "".join(self.log))
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == "listening":
                self.port = int(record["port"])
                return self

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.log.append(line)
            self.lines.put(line)
        self.lines.put("")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait: the clean shutdown path."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._close_pipe()
        return code

    def _close_pipe(self) -> None:
        assert self.proc is not None
        self._pump_thread.join(30)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def kill(self) -> None:
        """SIGKILL: no chance to flush or checkpoint."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if self.proc is not None:
            self._close_pipe()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "tracklog.db"


#: The databases a daemon can serve; a test marked `on_every_backend` runs on each.
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture
def backend_db(request: pytest.FixtureRequest, db_path: Path) -> Path | str:
    """What the `daemon` fixture serves: db_path (SQLite), or under `on_every_backend`'s
    "postgresql" a database of the test's own on the session's PostgreSQL server."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return db_path
    server = request.getfixturevalue("pg_server")
    url: str = server.create_database()
    request.addfinalizer(lambda: server.drop_database(url))
    return url


#: Runs a test (of the `daemon` or `client` fixtures) against SQLite and against PostgreSQL.
on_every_backend = pytest.mark.parametrize("backend_db", BACKENDS, indirect=True)


@pytest.fixture
def daemon(backend_db: Path | str) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(backend_db).start()
    try:
        yield proc
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            try:
                proc.stop()
            except subprocess.TimeoutExpired:
                proc.kill()


class Client:
    """A minimal protocol client for tests: send a request, get the reply with its ref."""

    def __init__(self, ws: ClientConnection, binary: bool = False) -> None:
        self.ws = ws
        self.binary = binary
        self._refs = itertools.count(1)
        #: Messages that arrived while `request` waited for its reply (subscription
        #: events, say): `recv` returns them first, in order.
        self.unclaimed: list[Any] = []

    def encode(self, msg: dict[str, Any]) -> str | bytes:
        return msgspec.msgpack.encode(msg) if self.binary else json.dumps(msg)

    def decode(self, frame: str | bytes) -> Any:
        return msgspec.msgpack.decode(frame) if isinstance(frame, bytes) else json.loads(frame)

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send(self.encode(msg))

    async def recv(self, timeout: float = 30) -> Any:
        if self.unclaimed:
            return self.unclaimed.pop(0)
        return await self._recv(timeout)

    async def _recv(self, timeout: float = 30) -> Any:
        import asyncio

        return self.decode(await asyncio.wait_for(self.ws.recv(), timeout))

    async def request(self, msg: dict[str, Any]) -> Any:
        msg = dict(msg)
        msg.setdefault("ref", next(self._refs))
        await self.send(msg)
        while True:
            reply = await self._recv()
            if reply.get("ref") == msg["ref"]:
                return reply
            self.unclaimed.append(reply)

    async def append(self, events: list[dict[str, Any]]) -> Any:
        return await self.request({"op": "append", "events": events})

    async def query(self, q: str, **args: Any) -> Any:
        return await self.request({"op": "query", "q": q, **args})


_open_sockets: list[ClientConnection] = []


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    """Every connection a test opens through open_client is closed after it."""
    yield
    while _open_sockets:
        ws = _open_sockets.pop()
        if ws.state is not State.CLOSED:
            await ws.close()


async def open_client(url: str, binary: bool = False, **hello: Any) -> tuple[Client, Any]:
    ws = await connect(url, max_size=None, open_timeout=30)
    _open_sockets.append(ws)
    client = Client(ws, binary)
    await client.send({"op": "hello", "protocol": 1, "client": "tests", **hello})
    welcome = await client.recv()
    return client, welcome


@pytest.fixture
async def client(daemon: DaemonProcess) -> AsyncIterator[Client]:
    c, welcome = await open_client(daemon.url)
    assert welcome["op"] == "welcome"
    try:
        yield c
    finally:
        await c.ws.close()
