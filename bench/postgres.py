"""Several daemons on one PostgreSQL database, measured: ingest through 1 and 2 daemons,
beside one daemon on SQLite and beside the driver alone inserting the same rows; ack
latency; commit-to-delivery latency for a subscriber on the other daemon.

    python bench/postgres.py            # 200,000 events per way
    python bench/postgres.py --quick    # 40,000

The server is started by the script itself, like the tests' (tests/pg.py: initdb in a
temporary directory, pg_ctl on a free 127.0.0.1 port, as `nobody` when run as root), with
PostgreSQL's default durability (fsync and synchronous_commit on). Each way gets a
database of its own.

- ingest: two clients, each appending its own `metrics` events in appends of 1,000 (8 in
  flight, frames encoded before the clock starts), end to end until acked: both clients
  on one daemon, or one client on each of two daemons; SQLite: both on one daemon.
- the driver alone: psycopg 3 writing the same rows into the log's `events` table (its
  indexes) with COPY in binary, 1,000 rows a transaction under the log's advisory lock,
  from two connections at once (what the daemons' writers do, without the daemons).
- where the time goes: CPU seconds of the daemons, of PostgreSQL's processes and of this
  script's clients during each ingest, per 1,000 events (read from /proc): on a machine
  with 2 cores, the sum says how much of them a way needs.
- delivery: a writer on daemon A appends one event at a time; a subscriber on daemon B
  times its arrival: from the append's send (an upper bound of commit to delivery) and
  from A's ack (after the commit). Idle, and while both daemons take the ingest load.

Results go to bench/results/postgres.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import msgspec
import psycopg
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _daemon import BenchDaemon, machine  # noqa: E402
from ingest import make_events, run_client  # noqa: E402

from tests.pg import PgServer  # noqa: E402
from tracklog.daemon.storage.postgres.eventlog import EVENT_COLUMNS, EVENT_TYPES, LOG_LOCK  # noqa: E402
from tracklog.daemon.storage.sqlcommon.dialect import POSTGRES  # noqa: E402
from tracklog.daemon.storage.sqlcommon.schema import LOG_DDL  # noqa: E402

BATCH = 1_000
#: No `slow request` warnings: nobody reads the daemons' stderr after start, and a full pipe
#: would stop them (under this load every append is acked after more than a second).
QUIET = ("--slow-ms", "100000000")
INFLIGHT = 8
CLK_TCK = os.sysconf("SC_CLK_TCK")
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of one process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def server_pids(server: PgServer) -> list[int]:
    """The bench server's postmaster and its children (not other PostgreSQL servers')."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == postmaster:
                        pids.append(int(name))
            except (OSError, ValueError, IndexError):
                continue
    return pids


class CpuMeter:
    """CPU seconds used between start and stop by the daemons, PostgreSQL and this process.

    PostgreSQL's backends come and go: those alive at the end are counted from the start
    (each backend of a daemon lives as long as the daemon; the script's own are made
    before the clock starts).
    """

    def __init__(self, daemons: list[int], server: PgServer) -> None:
        self.daemons = daemons
        self.server = server

    def snapshot(self) -> dict[str, float]:
        return {
            "daemons": sum(cpu_seconds(p) for p in self.daemons),
            "postgres": sum(cpu_seconds(p) for p in server_pids(self.server)),
            "clients": time.process_time(),
        }

    def __enter__(self) -> CpuMeter:
        self.before = self.snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        after = self.snapshot()
        self.used = {k: after[k] - self.before[k] for k in after}


async def ingest(urls: list[str], events_per_client: int) -> tuple[float, list[float]]:
    """One client per URL, each appending its own events; (events/s, ack latencies)."""
    streams = [make_events(events_per_client, run=f"bench-{i}") for i in range(len(urls))]
    start = time.perf_counter()
    results = await asyncio.gather(
        *(run_client(url, events, BATCH, INFLIGHT) for url, events in zip(urls, streams, strict=True))
    )
    elapsed = time.perf_counter() - start
    latencies = [lat for _, lats in results for lat in lats]
    return len(urls) * events_per_client / elapsed, latencies


def driver_alone(url: str, events: int, writers: int = 2) -> float:
    """Rows/s of psycopg alone: COPY in binary, 1,000 rows a transaction under the log's
    lock with the head read under it, from `writers` connections at once."""
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in POSTGRES.ddl(LOG_DDL):
            conn.execute(statement)  # type: ignore[call-overload]
    streams = [make_events(events // writers, run=f"driver-{i}") for i in range(writers)]
    barrier = threading.Barrier(writers + 1)

    def write(stream: list[dict[str, Any]]) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            barrier.wait()
            for i in range(0, len(stream), BATCH):
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOG_LOCK,))
                    head = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]  # type: ignore[index]
                    now = time.time()
                    with (
                        conn.cursor() as cur,
                        cur.copy(
                            f"COPY events({', '.join(EVENT_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
                        ) as copy,
                    ):
                        copy.set_types(list(EVENT_TYPES))
                        for k, e in enumerate(stream[i : i + BATCH]):
                            copy.write_row(
                                (head + 1 + k, e["id"], e["type"], e["run"], e["ts"], now, _encode(e["data"]))
                            )

    threads = [threading.Thread(target=write, args=(s,)) for s in streams]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return sum(len(s) for s in streams) / (time.perf_counter() - start)


async def delivery(
    writer_url: str, subscriber_url: str, probes: int, load: Awaitable[Any] | None = None
) -> dict[str, Any]:
    """Latencies (ms) of probe events appended on one daemon, one every 10 ms, to a
    subscriber on the other: from each event's `recorded` time (the writer's clock as it
    took the event, before its commit: an upper bound of commit to delivery), from the
    probe's ack (after the commit), and from its delivery to a subscriber on the writing
    daemon itself (published there right after the commit: the nearest measure of commit
    to delivery on the other daemon). Optionally while `load` runs (then until it ends)."""
    recorded_to_arrival: list[float] = []
    acked: dict[int, float] = {}
    arrived: dict[int, float] = {}
    arrived_here: dict[int, float] = {}
    hello = _encode({"op": "hello", "protocol": 1, "client": "bench"})
    async with (
        connect(subscriber_url, max_size=None, ping_interval=None) as sub,
        connect(writer_url, max_size=None, ping_interval=None) as pub,
        connect(writer_url, max_size=None, ping_interval=None) as near,
    ):
        for ws in (sub, pub, near):
            await ws.send(hello)
            await ws.recv()
        for ws in (sub, near):
            await ws.send(_encode({"op": "subscribe", "ref": 1, "filter": {"runs": ["probe"]}}))
            while _decode(await ws.recv())["op"] != "live":
                pass

        async def read_near() -> None:
            async for frame in near:
                msg = _decode(frame)
                if msg["op"] == "events":
                    now = time.perf_counter()
                    for e in msg["events"]:
                        arrived_here[e["data"]["step"]] = now

        async def read_events() -> None:
            async for frame in sub:
                msg = _decode(frame)
                if msg["op"] == "events":
                    now, wall = time.perf_counter(), time.time()
                    for e in msg["events"]:
                        arrived[e["data"]["step"]] = now
                        recorded_to_arrival.append((wall - e["recorded"]) * 1e3)

        async def read_acks() -> None:
            async for frame in pub:
                msg = _decode(frame)
                assert msg["op"] == "ack", msg
                acked[msg["ref"]] = time.perf_counter()

        tasks = [asyncio.create_task(t()) for t in (read_events, read_acks, read_near)]
        running = asyncio.ensure_future(load) if load is not None else None
        sent = 0
        while sent < probes or (running is not None and not running.done()):
            event = {"type": "metrics", "run": "probe", "data": {"values": {"x": 1.0}, "step": sent}}
            await pub.send(_encode({"op": "append", "ref": sent, "events": [event]}))
            sent += 1
            await asyncio.sleep(0.01)  # the probes' pace
        if running is not None:
            await running
        deadline = time.perf_counter() + 60
        while len(arrived) < sent and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        for task in tasks:
            task.cancel()
    from_ack = [(arrived[i] - acked[i]) * 1e3 for i in acked if i in arrived]
    from_near = [(arrived[i] - arrived_here[i]) * 1e3 for i in arrived_here if i in arrived]
    return {
        "after_writing_daemon_p50_ms": round(statistics.median(from_near), 1),
        "after_writing_daemon_p99_ms": round(percentile(from_near, 0.99), 1),
        "probes": sent,
        "lost": sent - len(arrived),
        "from_recorded_p50_ms": round(statistics.median(recorded_to_arrival), 1),
        "from_recorded_p99_ms": round(percentile(recorded_to_arrival, 0.99), 1),
        "from_ack_p50_ms": round(statistics.median(from_ack), 1),
        "from_ack_p99_ms": round(percentile(from_ack, 0.99), 1),
    }


def timed(
    name: str, rate: float, latencies: list[float], cpu: dict[str, float], events: int
) -> dict[str, Any]:
    per_k = {k: round(v / events * 1000 * 1000, 1) for k, v in cpu.items()}  # CPU ms per 1,000 events
    row = {
        "way": name,
        "events_per_s": round(rate),
        "ack_p50_ms": round(statistics.median(latencies) * 1e3, 1),
        "ack_p99_ms": round(percentile(latencies, 0.99) * 1e3, 1),
        "cpu_ms_per_1000_events": per_k,
        "cpu_cores_busy": round(sum(cpu.values()) / (events / rate), 2),
    }
    print(
        f"{name:<24} {rate:>8,.0f} ev/s  ack p50 {row['ack_p50_ms']:>6.1f} ms"
        f" p99 {row['ack_p99_ms']:>6.1f} ms"
        f"   cpu ms/1k ev: daemons {per_k['daemons']:>5.1f}  postgres {per_k['postgres']:>5.1f}"
        f"  clients {per_k['clients']:>5.1f}  ({row['cpu_cores_busy']} cores busy)"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000, help="events per way (split over 2 clients)")
    parser.add_argument("--probes", type=int, default=500)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--no-sync",
        action="store_true",
        help="the server with synchronous_commit=off (no WAL flush in a commit: what it costs)",
    )
    args = parser.parse_args()
    if args.quick:
        args.events, args.probes = 40_000, 200
    per_client = args.events // 2
    results: dict[str, Any] = {
        "machine": machine(),
        "load_average_at_start": os.getloadavg(),
        "events": args.events,
        "ways": [],
        "delivery": {},
    }
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    print(f"command: python bench/postgres.py {' '.join(sys.argv[1:])}")
    # PostgreSQL's default durability, unless asked otherwise.
    server = PgServer(settings={"synchronous_commit": "off"} if args.no_sync else {})
    server.start()
    try:
        with tempfile.TemporaryDirectory(prefix="tracklog-bench-") as tmp:
            with (
                BenchDaemon(Path(tmp) / "tracklog.db", *QUIET) as daemon,
                CpuMeter([daemon.proc.pid], server) as cpu,
            ):  # type: ignore[union-attr]
                rate, lat = asyncio.run(ingest([daemon.url, daemon.url], per_client))
            sqlite = timed("SQLite, 1 daemon", rate, lat, cpu.used, args.events)

            url = server.create_database()
            with BenchDaemon(url, *QUIET) as daemon, CpuMeter([daemon.proc.pid], server) as cpu:  # type: ignore[arg-type, union-attr]
                rate, lat = asyncio.run(ingest([daemon.url, daemon.url], per_client))
            one = timed("PostgreSQL, 1 daemon", rate, lat, cpu.used, args.events)

            url = server.create_database()
            with BenchDaemon(url, *QUIET) as a, BenchDaemon(url, *QUIET) as b:  # type: ignore[arg-type]
                with CpuMeter([a.proc.pid, b.proc.pid], server) as cpu:  # type: ignore[union-attr]
                    rate, lat = asyncio.run(ingest([a.url, b.url], per_client))
                two = timed("PostgreSQL, 2 daemons", rate, lat, cpu.used, args.events)
                idle = asyncio.run(delivery(a.url, b.url, args.probes))
                # The load runs on a thread of its own (its own event loop): making and
                # encoding its frames must not hold up the probes' loop.
                load = asyncio.to_thread(asyncio.run, ingest([a.url, b.url], per_client))
                loaded = asyncio.run(delivery(a.url, b.url, args.probes, load))

            url = server.create_database()
            with CpuMeter([], server) as cpu:
                driver = driver_alone(url, args.events)
            print(f"{'psycopg alone (2 conns)':<28} {driver:>9,.0f} rows/s")
    finally:
        server.stop()
    results["ways"] = [
        sqlite,
        one,
        two,
        {"way": "psycopg COPY alone, 2 connections", "rows_per_s": round(driver)},
    ]
    results["delivery"] = {"idle": idle, "under_ingest": loaded}
    results["ratios"] = {
        "two_daemons_over_one": round(two["events_per_s"] / one["events_per_s"], 2),
        "one_daemon_over_driver": round(one["events_per_s"] / driver, 2),
        "two_daemons_over_driver": round(two["events_per_s"] / driver, 2),
        "postgres_one_daemon_over_sqlite": round(one["events_per_s"] / sqlite["events_per_s"], 2),
    }
    for name, d in results["delivery"].items():
        print(
            f"delivery to the other daemon, {name:<12}: from recorded p50 {d['from_recorded_p50_ms']:.1f} ms"
            f" p99 {d['from_recorded_p99_ms']:.1f} ms; from ack p50 {d['from_ack_p50_ms']:.1f} ms"
            f" p99 {d['from_ack_p99_ms']:.1f} ms; after the writing daemon's own subscriber"
            f" p50 {d['after_writing_daemon_p50_ms']:.1f} ms p99 {d['after_writing_daemon_p99_ms']:.1f} ms"
            f" ({d['probes']} probes, {d['lost']} lost)"
        )
    print("ratios:", json.dumps(results["ratios"]))
    out = ROOT / "bench" / "results" / ("postgres-nosync.json" if args.no_sync else "postgres.json")
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
