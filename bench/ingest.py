"""Ingest throughput: one client appending `metrics` events in appends of 1,000 over
loopback, end to end until acked, beside raw sqlite3 inserting the same rows.

    python bench/ingest.py [--events 500000] [--batch 1000] [--inflight 8] [--durability normal]
    python bench/ingest.py --python /other/venv/bin/python   # another build of the daemon

Frames are encoded before the clock starts, so the figure is the daemon's (decode,
validate, dedup by id, log append, projections, commit, ack), not the client's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgspec
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).parent))
from _daemon import BenchDaemon, machine


def uuid7(ms: int) -> str:
    """A UUIDv7 (time-ordered), as the thin client makes them."""
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 64) & 0xFFF) << 64 | (0x2 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def make_events(n: int, run: str = "bench") -> list[dict]:
    base = time.time()
    return [
        {
            "id": uuid7(int((base + i * 1e-5) * 1000)),
            "type": "metrics",
            "run": run,
            "ts": base + i * 1e-3,
            "data": {"values": {"loss": 1.0 / (i + 1), "acc": i / n}, "step": i},
        }
        for i in range(n)
    ]


async def run_client(url: str, events: list[dict], batch: int, inflight: int) -> tuple[float, list[float]]:
    frames = [
        msgspec.msgpack.encode({"op": "append", "ref": k, "events": events[i : i + batch]})
        for k, i in enumerate(range(0, len(events), batch))
    ]
    latencies: list[float] = []
    sent_at: dict[int, float] = {}
    decoder = msgspec.msgpack.Decoder()
    async with connect(url, max_size=None, compression=None) as ws:
        await ws.send(msgspec.msgpack.encode({"op": "hello", "protocol": 1, "client": "bench"}))
        decoder.decode(await ws.recv())
        window = asyncio.Semaphore(inflight)
        done = asyncio.Event()
        acked = 0

        async def reader() -> None:
            nonlocal acked
            async for frame in ws:
                msg = decoder.decode(frame)
                if msg["op"] != "ack":
                    raise RuntimeError(f"unexpected reply {msg}")
                latencies.append(time.perf_counter() - sent_at.pop(msg["ref"]))
                acked += msg["accepted"] + len(msg.get("duplicates", ()))
                window.release()
                if len(latencies) == len(frames):
                    done.set()
                    return

        task = asyncio.create_task(reader())
        start = time.perf_counter()
        for ref, frame in enumerate(frames):
            await window.acquire()
            sent_at[ref] = time.perf_counter()
            await ws.send(frame)
        await done.wait()
        elapsed = time.perf_counter() - start
        await task
    assert acked == len(events), (acked, len(events))
    return elapsed, latencies


def raw_sqlite(path: Path, events: list[dict], batch: int, with_schema: bool) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    if with_schema:
        conn.executescript(
            "CREATE TABLE events (seq INTEGER PRIMARY KEY, id TEXT, type TEXT NOT NULL, run TEXT,"
            " ts REAL NOT NULL,"
            " recorded REAL NOT NULL, data BLOB NOT NULL);"
            "CREATE UNIQUE INDEX events_id ON events(id) WHERE id IS NOT NULL;"
            "CREATE INDEX events_run ON events(run, seq) WHERE run IS NOT NULL;"
        )
    else:
        conn.execute(
            "CREATE TABLE events (seq INTEGER PRIMARY KEY, id TEXT, type TEXT, run TEXT, ts REAL,"
            " recorded REAL, data BLOB)"
        )
    encode = msgspec.msgpack.encode
    rows = [
        (i + 1, e["id"], e["type"], e["run"], e["ts"], e["ts"], encode(e["data"]))
        for i, e in enumerate(events)
    ]
    start = time.perf_counter()
    for i in range(0, len(rows), batch):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", rows[i : i + batch])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return len(rows) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--inflight", type=int, default=8)
    parser.add_argument("--durability", choices=["normal", "full"], default="normal")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs the daemon")
    args = parser.parse_args()
    events = make_events(args.events)
    with tempfile.TemporaryDirectory(prefix="tracklog-bench-") as tmp:
        raw_plain = raw_sqlite(Path(tmp) / "raw-plain.db", events, args.batch, with_schema=False)
        raw_schema = raw_sqlite(Path(tmp) / "raw-schema.db", events, args.batch, with_schema=True)
        with BenchDaemon(
            Path(tmp) / "tracklog.db", "--durability", args.durability, python=args.python
        ) as daemon:
            cpu = daemon.cpu_seconds()
            elapsed, latencies = asyncio.run(run_client(daemon.url, events, args.batch, args.inflight))
            cpu = daemon.cpu_seconds() - cpu
    rate = len(events) / elapsed
    lat = sorted(latencies)
    p50 = statistics.median(lat) * 1e3
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3
    print(f"machine: {machine()}")
    print(
        f"command: python bench/ingest.py --events {args.events} --batch {args.batch}"
        f" --inflight {args.inflight} --durability {args.durability}"
    )
    print(
        f"tracklog end to end       {rate:>12,.0f} events/s   ({args.events:,} metrics events,"
        f" appends of {args.batch}, {args.inflight} in flight)"
    )
    print(f"ack latency per append    p50 {p50:.1f} ms   p99 {p99:.1f} ms")
    print(f"daemon CPU per event      {cpu / len(events) * 1e6:.2f} us   (daemon: {args.python})")
    print(f"raw sqlite3, plain table  {raw_plain:>12,.0f} rows/s     -> tracklog at {rate / raw_plain:.0%}")
    print(f"raw sqlite3, log schema   {raw_schema:>12,.0f} rows/s     -> tracklog at {rate / raw_schema:.0%}")


if __name__ == "__main__":
    main()
