"""`kill -9` of the daemon, again and again, under a steady load from several writers.

What an ack promises is checked after all of it: every event a raw WebSocket writer saw
acked is in the log exactly once, at the seq its ack named; the seqs have no gap;
`tracklog verify` finds the tables equal to a replay of the log; and every event the thin
clients logged (through their spools, across every outage) is there exactly once.

The kills come at random moments, but seeded and counted in acked events rather than in
seconds, so a slow machine changes how long the test takes, not what it does.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from tests.conftest import DaemonProcess

THIN_WRITER = Path(__file__).with_name("_thin_writer.py")
#: Kills in a row (about 40 s on 2 busy cores); `TRACKLOG_KILLS=200` for a longer hunt.
KILLS_DEFAULT = 20
SEED = 20260117
#: Events per append of a raw writer, and the spread of acked events between two kills.
RAW_BATCH = 25
ACKS_BETWEEN_KILLS = (200, 1500)
CONDITION_TIMEOUT = 120.0
THIN_WRITERS = 3
RAW_WRITERS = 2


def free_port() -> int:
    """A port free on loopback now, below the ephemeral range; the daemon binds it after every restart.

    Below the range so that no client's own end of a connection ever gets it: a client
    reconnecting while the daemon is down could otherwise connect to itself on the port
    (a TCP self-connect) and keep the restarted daemon from binding it.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = list(range(max(1024, low - 10_000), low))
    random.shuffle(candidates)
    for port in candidates[:200]:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


@dataclass
class RawAcks:
    """What the raw writers saw acked: event id -> the seq its ack named."""

    seqs: dict[str, int] = field(default_factory=dict)
    total: int = 0
    errors: list[Any] = field(default_factory=list)
    stop: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set while the daemon is up: a writer whose connection failed waits for it.
    up: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, batch: list[dict[str, Any]], ack: dict[str, Any]) -> None:
        """Map each event of the batch to its seq: accepted ones in order, duplicates as named."""
        duplicates = {d["index"]: d["seq"] for d in ack.get("duplicates", [])}
        if ack.get("rejected"):
            self.errors.append(ack)
        seq = ack.get("first_seq", 0)
        for index, event in enumerate(batch):
            if index in duplicates:
                got = duplicates[index]
            else:
                got = seq
                seq += 1
            previous = self.seqs.setdefault(event["id"], got)
            if previous != got:
                self.errors.append((event["id"], previous, got))
        if ack.get("first_seq") is not None and seq - 1 != ack["last_seq"]:
            self.errors.append(ack)
        self.total += len(batch)
        self.changed.set()

    async def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        async def loop() -> None:
            while not condition():
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(loop(), CONDITION_TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; acked {self.total}") from None


async def raw_writer(number: int, url: str, acks: RawAcks) -> None:
    """Append batches with ids of our own, one at a time; resend the same batch after a drop."""
    next_step = 0
    pending: list[dict[str, Any]] | None = None
    ref = 0
    while not acks.stop:
        try:
            async with connect(url, open_timeout=5, max_size=None) as ws:
                await ws.send(json.dumps({"op": "hello", "protocol": 1, "client": f"raw-{number}"}))
                welcome = json.loads(await asyncio.wait_for(ws.recv(), 30))
                assert welcome["op"] == "welcome", welcome
                while not acks.stop:
                    if pending is None:
                        pending = [
                            {
                                "id": f"raw-{number}-{step}",
                                "type": "metrics",
                                "run": f"raw-{number}",
                                "data": {"values": {"x": float(step)}, "step": step},
                            }
                            for step in range(next_step, next_step + RAW_BATCH)
                        ]
                        next_step += RAW_BATCH
                    ref += 1
                    await ws.send(json.dumps({"op": "append", "ref": ref, "events": pending}))
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if reply.get("op") != "ack" or reply.get("ref") != ref:
                        acks.errors.append(reply)
                        continue
                    acks.record(pending, reply)
                    pending = None
        except (OSError, TimeoutError, WebSocketException):
            # The daemon is down or just died: try again once it is back.
            await acks.up.wait()


def start_thin_writer(url: str, spool: Path, run_id: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(THIN_WRITER), url, str(spool), run_id],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline()) == {"started": run_id}, proc.stderr
    return proc


def finish_process(proc: subprocess.Popen[str], stop_line: str | None = None) -> dict[str, Any]:
    """Tell a writer to stop (if it was told nothing yet) and read its last JSON line."""
    out, err = proc.communicate(stop_line, timeout=CONDITION_TIMEOUT + 60)
    assert proc.returncode == 0, (out, err)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def adopt_spool(url: str, spool: Path) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, str(THIN_WRITER), url, str(spool), "-", "--adopt"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return finish_process(proc)


def check_log(db: Path, raw: RawAcks, thin_steps: dict[str, int]) -> None:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        count, low, high = conn.execute("SELECT count(*), min(seq), max(seq) FROM events").fetchone()
        assert (low, high) == (1, count), "seqs have a gap"
        (distinct,) = conn.execute("SELECT count(DISTINCT id) FROM events WHERE id IS NOT NULL").fetchone()
        (with_id,) = conn.execute("SELECT count(*) FROM events WHERE id IS NOT NULL").fetchone()
        assert distinct == with_id
        stored = dict(conn.execute("SELECT id, seq FROM events WHERE id LIKE 'raw-%'"))
        missing = {i: s for i, s in raw.seqs.items() if stored.get(i) != s}
        assert not missing, f"{len(missing)} acked events missing or moved, e.g. {list(missing.items())[:5]}"
        for run_id, logged in thin_steps.items():
            steps = [
                msgspec.msgpack.decode(blob)["step"]
                for (blob,) in conn.execute(
                    "SELECT data FROM events WHERE run = ? AND type = 'metrics' ORDER BY seq", (run_id,)
                )
            ]
            assert len(steps) == logged and sorted(steps) == list(range(logged)), (
                f"{run_id}: {len(steps)} metrics stored for {logged} logged"
            )
    finally:
        conn.close()


async def test_kill_9_under_load_loses_and_doubles_nothing(tmp_path: Path) -> None:
    kills = int(os.environ.get("TRACKLOG_KILLS", KILLS_DEFAULT))
    rng = random.Random(SEED)
    db = tmp_path / "tracklog.db"
    port = free_port()
    daemon = DaemonProcess(db, "--port", str(port)).start()
    url = daemon.url
    acks = RawAcks()
    acks.up.set()
    thin: dict[str, tuple[subprocess.Popen[str], Path]] = {}
    raw_tasks: list[asyncio.Task[None]] = []
    try:
        for number in range(THIN_WRITERS):
            spool = tmp_path / f"spool-{number}"
            thin[f"thin-{number}"] = (start_thin_writer(url, spool, f"thin-{number}"), spool)
        raw_tasks = [asyncio.create_task(raw_writer(n, url, acks)) for n in range(RAW_WRITERS)]
        for kill in range(kills):
            target = acks.total + rng.randint(*ACKS_BETWEEN_KILLS)
            await acks.wait_for(
                lambda t=target: acks.total >= t, f"{target} acked events before kill {kill + 1}"
            )
            daemon.kill()
            acks.up.clear()
            if kill == kills - 1:
                break  # the last outage lasts while the writers stop, so their spools hold events
            await asyncio.to_thread(daemon.start)
            acks.up.set()
        # The daemon is down. Raw writers stop; thin writers stop two ways: one keeps
        # trying until its events are acked, the others close at once and leave a spool
        # that a new process delivers.
        acks.stop = True
        stopping = {
            run_id: ("flush" if n == 0 else "spool", proc)
            for n, (run_id, (proc, _)) in enumerate(thin.items())
        }
        for how, proc in stopping.values():
            assert proc.stdin is not None
            proc.stdin.write(how + "\n")
            proc.stdin.flush()
        spooled = {
            run_id: await asyncio.to_thread(finish_process, proc)
            for run_id, (how, proc) in stopping.items()
            if how == "spool"
        }
        await asyncio.to_thread(daemon.start)
        acks.up.set()
        results = {
            run_id: await asyncio.to_thread(finish_process, proc)
            for run_id, (how, proc) in stopping.items()
            if how == "flush"
        }
        for run_id, result in spooled.items():
            adopted = await asyncio.to_thread(adopt_spool, url, thin[run_id][1])
            assert adopted["delivered"], adopted
            results[run_id] = result
        for task in raw_tasks:
            task.cancel()
        await asyncio.gather(*raw_tasks, return_exceptions=True)
        assert daemon.stop() == 0
    finally:
        acks.stop = True
        for task in raw_tasks:
            task.cancel()
        for proc, _ in thin.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        daemon.kill()
    assert not acks.errors, acks.errors[:5]
    assert all(r["stats"]["rejected"] == 0 and r["stats"]["dropped"] == 0 for r in results.values()), results
    thin_steps = {run_id: result["logged"] for run_id, result in results.items()}
    check_log(db, acks, thin_steps)
    verify = subprocess.run(
        [sys.executable, "-m", "tracklog", "verify", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
