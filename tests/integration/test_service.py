"""Running as a service: systemd notifications and watchdog, SIGTERM, SIGHUP, the unit file.

A datagram socket bound in tmp stands in for systemd's notification socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import DaemonProcess, open_client
from tracklog.daemon.notify import Notifier, watchdog_seconds
from tracklog.daemon.server import Daemon, Settings
from tracklog.daemon.service import load_reloadable, read_env_file, read_tokens_file

ROOT = Path(__file__).resolve().parents[2]
#: Lines the issue asks of the unit.
UNIT_KEYS = (
    "Type=notify",
    "WatchdogSec=30",
    "DynamicUser=yes",
    "StateDirectory=tracklog",
    "ProtectSystem=strict",
    "NoNewPrivileges=yes",
    "ExecReload=/bin/kill -HUP $MAINPID",
    "SystemCallFilter=@system-service",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "MemoryDenyWriteExecute=yes",
)


class FakeSystemd:
    """An AF_UNIX datagram socket that receives what the daemon sends to NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.received: list[str] = []

    async def next(self, timeout: float = 30) -> str:
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 65536), timeout)
        message = data.decode()
        self.received.append(message)
        return message

    async def wait_for(self, wanted: str | Callable[[str], bool], timeout: float = 30) -> str:
        """The first datagram from now on that holds `wanted` (or satisfies it)."""
        test = (lambda m: wanted in m) if isinstance(wanted, str) else wanted
        deadline = time.monotonic() + timeout
        while True:
            message = await self.next(max(0.0, deadline - time.monotonic()))
            if test(message):
                return message

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[tuple[FakeSystemd, str]]:
    path = str(tmp_path / "notify")
    fake = FakeSystemd(path)
    try:
        yield fake, path
    finally:
        fake.close()


def stop_quietly(daemon: DaemonProcess) -> None:
    if daemon.proc is not None and daemon.proc.poll() is None:
        try:
            daemon.stop()
        except subprocess.TimeoutExpired:
            daemon.kill()


def metric(i: int, run: str = "r1") -> dict[str, Any]:
    return {"id": f"m-{run}-{i}", "type": "metrics", "run": run, "data": {"values": {"loss": 1.0}, "step": i}}


# -- the notification protocol -------------------------------------------------------------


async def test_systemd_hears_ready_status_watchdog_reloading_and_stopping(
    tmp_path: Path, systemd: tuple[FakeSystemd, str]
) -> None:
    fake, path = systemd
    daemon = DaemonProcess(tmp_path / "t.db", env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    daemon.start()
    try:
        ready = await fake.wait_for("READY=1")
        assert f"STATUS=serving on 127.0.0.1:{daemon.port}; 0 connections, head seq 0" in ready.split("\n")
        client, _ = await open_client(daemon.url)
        assert (await client.append([metric(1), metric(2)]))["last_seq"] == 2
        ping = await fake.wait_for(lambda m: "WATCHDOG=1" in m and "1 connections, head seq 2" in m)
        assert ping.split("\n") == [
            "WATCHDOG=1",
            f"STATUS=serving on 127.0.0.1:{daemon.port}; 1 connections, head seq 2",
        ]
        await client.ws.close()

        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        reloading = await fake.wait_for("RELOADING=1")
        assert any(line.startswith("MONOTONIC_USEC=") for line in reloading.split("\n"))
        await fake.wait_for("READY=1")

        daemon.proc.send_signal(signal.SIGTERM)
        await fake.wait_for("STOPPING=1")
        assert await asyncio.to_thread(daemon.stop, 30) == 0
    finally:
        stop_quietly(daemon)


async def _in_process_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str) -> Daemon:
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a ping every 50 ms
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    daemon = Daemon(Settings(db=tmp_path / "d.db", port=0))
    await daemon.start()
    return daemon


async def test_watchdog_pings_stop_while_the_writer_is_stuck_and_resume_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, systemd: tuple[FakeSystemd, str]
) -> None:
    fake, path = systemd
    daemon = await _in_process_daemon(tmp_path, monkeypatch, path)
    stop = asyncio.Event()
    supervisor = asyncio.create_task(daemon.supervisor.run(stop))
    gate = threading.Event()
    try:
        await fake.wait_for("WATCHDOG=1")
        # The hook: the writer's thread waits on the gate, so an append queued now waits too.
        daemon.writer._executor.submit(gate.wait)
        daemon.writer.stuck_after = 0.05
        frame = json.dumps({"op": "append", "ref": 7, "events": [metric(1)]})
        future = await daemon.writer.submit_frame(frame)
        await fake.wait_for("STATUS=writer stuck")
        # Every datagram from here on, while the writer stays stuck, is a status without a ping.
        for _ in range(3):
            message = await fake.next()
            assert "WATCHDOG=1" not in message
            assert message.startswith("STATUS=writer stuck")
        gate.set()
        assert (await future).ack.accepted == 1
        await fake.wait_for("WATCHDOG=1")  # committed again: the pings resume
    finally:
        gate.set()
        stop.set()
        await supervisor
        await daemon.stop()
        daemon.notifier.close()


async def test_watchdog_pings_stop_when_the_writer_is_dead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, systemd: tuple[FakeSystemd, str]
) -> None:
    fake, path = systemd
    daemon = await _in_process_daemon(tmp_path, monkeypatch, path)
    stop = asyncio.Event()
    supervisor = asyncio.create_task(daemon.supervisor.run(stop))
    try:
        await fake.wait_for("WATCHDOG=1")
        task = daemon.writer._task
        assert task is not None
        task.cancel()  # the hook: the writer's task ends, as it would on a bug that escaped it
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await fake.wait_for("STATUS=writer down")
        for _ in range(3):
            message = await fake.next()
            assert "WATCHDOG=1" not in message
            assert message.startswith("STATUS=writer down")
    finally:
        stop.set()
        await supervisor
        await daemon.stop()
        daemon.notifier.close()


async def test_notifier_reaches_an_abstract_socket_and_does_nothing_without_one() -> None:
    name = f"tracklog-test-{os.getpid()}-{time.monotonic_ns()}"
    fake = FakeSystemd("\0" + name)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.send("READY=1", "STATUS=hello")
        assert await fake.next() == "READY=1\nSTATUS=hello"
        notifier.close()
    finally:
        fake.close()
    assert not Notifier({}).send("READY=1")
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_seconds({}) is None


# -- SIGTERM ---------------------------------------------------------------------------------


async def test_appends_in_flight_at_sigterm_are_acked_and_stored_or_not_acked_and_exit_is_0(
    tmp_path: Path,
) -> None:
    db = tmp_path / "t.db"
    daemon = DaemonProcess(db).start()
    acked: list[str] = []
    first_ack = [asyncio.Event() for _ in range(3)]

    async def writer(n: int) -> None:
        """Appends as fast as it can until the daemon closes the connection."""
        sent: dict[int, list[str]] = {}
        async with connect(daemon.url, max_size=None) as ws:
            await ws.send(json.dumps({"op": "hello", "protocol": 1}))
            await ws.recv()

            async def read_acks() -> None:
                with contextlib.suppress(ConnectionClosed):
                    async for frame in ws:
                        msg = json.loads(frame)
                        if msg["op"] == "ack":
                            assert not msg.get("rejected")
                            acked.extend(sent[msg["ref"]])
                            first_ack[n].set()

            reader = asyncio.create_task(read_acks())
            with contextlib.suppress(ConnectionClosed):
                for ref in range(5000):
                    ids = [f"c{n}-{ref}-{i}" for i in range(50)]
                    sent[ref] = ids
                    events = [{**metric(0, run=f"run-{n}"), "id": event_id} for event_id in ids]
                    await ws.send(json.dumps({"op": "append", "ref": ref, "events": events}))
            await reader

    writers = [asyncio.create_task(writer(n)) for n in range(3)]
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in first_ack)), 60)
        started = time.monotonic()
        code = await asyncio.to_thread(daemon.stop, 60)
        took = time.monotonic() - started
        await asyncio.wait_for(asyncio.gather(*writers), 60)
    finally:
        for task in writers:
            task.cancel()
        stop_quietly(daemon)
    assert code == 0
    assert took < 30, f"stopping took {took:.1f} s"
    assert acked
    # Every acked event is in the log: sent again, each is a duplicate, none is appended anew.
    daemon = DaemonProcess(db).start()
    try:
        client, _ = await open_client(daemon.url)
        for start in range(0, len(acked), 5000):
            chunk = acked[start : start + 5000]
            ack = await client.append([{**metric(0), "id": event_id} for event_id in chunk])
            assert ack["accepted"] == 0
            assert len(ack["duplicates"]) == len(chunk)
        await client.ws.close()
    finally:
        stop_quietly(daemon)


# -- SIGHUP ---------------------------------------------------------------------------------


def wait_for_log(daemon: DaemonProcess, event: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        line = daemon.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        assert line, "daemon exited:\n" + "".join(daemon.log)
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == event:
                return dict(record)


async def hello_reply(url: str, token: str) -> str:
    async with connect(url) as ws:
        await ws.send(json.dumps({"op": "hello", "protocol": 1, "token": token}))
        reply = json.loads(await ws.recv())
        return str(reply["op"] if reply["op"] == "welcome" else reply["code"])


async def test_sighup_reloads_tokens_and_log_level(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# who may write\nold-token\n")
    env = tmp_path / "tracklog.env"
    env.write_text("TRACKLOG_LOG_LEVEL=info\nTRACKLOG_TOKENS=env-old\n")
    daemon = DaemonProcess(tmp_path / "t.db", "--tokens-file", str(tokens), "--env-file", str(env))
    daemon.start()
    try:
        assert await hello_reply(daemon.url, "old-token") == "welcome"
        assert await hello_reply(daemon.url, "env-old") == "welcome"
        assert await hello_reply(daemon.url, "new-token") == "unauthorized"

        tokens.write_text("# rotated\n\nnew-token\n")
        env.write_text("# louder\nTRACKLOG_LOG_LEVEL=debug\nTRACKLOG_TOKENS=env-new\n")
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        reloaded = await asyncio.to_thread(wait_for_log, daemon, "reloaded")
        assert reloaded["tokens"] == 2 and reloaded["log_level"] == "debug"
        debug = await asyncio.to_thread(wait_for_log, daemon, "reload read")
        assert debug["level"] == "debug"

        assert await hello_reply(daemon.url, "new-token") == "welcome"
        assert await hello_reply(daemon.url, "env-new") == "welcome"
        assert await hello_reply(daemon.url, "old-token") == "unauthorized"
        assert await hello_reply(daemon.url, "env-old") == "unauthorized"

        # A reload that fails (a blank token; a file gone) changes nothing; the tokens stay.
        env.write_text("TRACKLOG_TOKENS=env-new, ,other\n")
        daemon.proc.send_signal(signal.SIGHUP)
        failed = await asyncio.to_thread(wait_for_log, daemon, "reload failed; settings unchanged")
        assert "empty token" in failed["error"]
        tokens.unlink()
        daemon.proc.send_signal(signal.SIGHUP)
        failed = await asyncio.to_thread(wait_for_log, daemon, "reload failed; settings unchanged")
        assert "cannot read" in failed["error"]
        assert await hello_reply(daemon.url, "new-token") == "welcome"
        assert await hello_reply(daemon.url, "other") == "unauthorized"
        assert daemon.stop() == 0
    finally:
        stop_quietly(daemon)


def test_reload_files_are_read_as_documented(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("  a \n# b\n\nc\n")
    assert read_tokens_file(tokens) == ("a", "c")
    env = tmp_path / "env"
    env.write_text('# x\nTRACKLOG_TOKENS="t1,t2"\n; y\nTRACKLOG_LOG_LEVEL= WARNING\nOTHER=1\n')
    assert read_env_file(env)["TRACKLOG_TOKENS"] == "t1,t2"
    reloaded = load_reloadable(tokens, env)
    assert reloaded.tokens == ("t1", "t2", "a", "c") and reloaded.log_level == "warning"
    # The example environment file sets nothing secret and a valid level.
    example = read_env_file(ROOT / "systemd" / "tracklog.env")
    assert example == {"TRACKLOG_LOG_LEVEL": "info"}


# -- logs -----------------------------------------------------------------------------------


async def test_connections_are_logged_with_id_peer_duration_and_counts(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path / "t.db", "--slow-ms", "0").start()  # every request is slow
    try:
        client, _ = await open_client(daemon.url)
        await client.append([metric(1), metric(2)])
        await client.query("runs")
        local = client.ws.local_address
        await client.ws.close()
        opened = await asyncio.to_thread(wait_for_log, daemon, "connection opened")
        assert opened["peer"] == f"{local[0]}:{local[1]}"
        conn_id = opened["conn_id"]
        slow = await asyncio.to_thread(wait_for_log, daemon, "slow request")
        assert slow["conn_id"] == conn_id and slow["op"] in ("append", "query") and slow["ms"] >= 0
        closed = await asyncio.to_thread(wait_for_log, daemon, "connection closed")
        assert closed["conn_id"] == conn_id and closed["peer"] == opened["peer"]
        assert (closed["frames"], closed["appends"], closed["events"], closed["rejected"]) == (2, 1, 2, 0)
        assert closed["seconds"] >= 0 and closed["code"] == 1000

        async with connect(daemon.url) as ws:  # no hello first: refused
            await ws.send(json.dumps({"op": "query", "q": "runs"}))
            await ws.recv()
            with contextlib.suppress(ConnectionClosed):
                await ws.recv()
        rejected = await asyncio.to_thread(wait_for_log, daemon, "connection rejected")
        assert (
            rejected["code"] == 1008
            and rejected["reason"] == "hello required"
            and rejected["level"] == "warning"
        )

        request = urllib.request.Request(
            f"{daemon.http}/healthz", headers={"Origin": "http://elsewhere.example"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            await asyncio.to_thread(urllib.request.urlopen, request, timeout=30)
        refused.value.close()
        line = await asyncio.to_thread(wait_for_log, daemon, "request refused")
        assert line["status"] == 403 and line["path"] == "/healthz" and "Origin" in line["reason"]
    finally:
        stop_quietly(daemon)


def test_log_format_console_is_forced_on_a_pipe(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracklog", "serve", "--db", str(tmp_path / "t.db"), "--port", "0",
         "--log-format", "console"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "listening" in line:
                break
        else:
            raise AssertionError("the daemon exited before listening")
        with pytest.raises(ValueError):
            json.loads(line)
        assert "port=" in line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        if proc.stderr is not None:
            proc.stderr.close()


# -- the unit -------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = (ROOT / "systemd" / "tracklog.service").read_text()
    # verify checks that ExecStart's program exists: point it at this checkout's.
    tracklog = Path(sys.executable).with_name("tracklog")
    assert "/opt/tracklog/.venv/bin/tracklog" in unit
    path = tmp_path / "tracklog.service"
    path.write_text(unit.replace("/opt/tracklog/.venv/bin/tracklog", str(tracklog)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    # Unknown or misplaced keys are only warnings: none may name the unit.
    assert str(path) not in result.stderr, result.stderr
    for key in UNIT_KEYS:
        assert key in unit.splitlines()
