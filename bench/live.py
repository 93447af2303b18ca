"""Live delivery: fan-out to many subscribers, commit-to-delivery latency, and a stalled
subscriber's effect on ingest and on the daemon's memory.

    python bench/live.py [--subscribers 100] [--events 200000] [--paced-rate 5000] [--seconds 10]
    python bench/live.py --python /other/venv/bin/python   # another build of the daemon

Phases, each against a fresh daemon on loopback:
  1. ingest alone: one writer, appends of 1,000, 8 in flight, no subscriber;
  2. fan-out: N subscribers (MessagePack) while one writer appends at a paced rate;
     latency = arrival time - the event's `recorded` (daemon clock, same machine);
  3. ingest at full speed with the N subscribers reading;
  4. ingest at full speed with one stalled subscriber (never reads), and the daemon's RSS.
The subscribers run in this process, on the same 2 cores as the daemon: phase 3 measures
the machine as much as the daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import msgspec
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).parent))
from _daemon import BenchDaemon, machine
from ingest import make_events, run_client


class _Ev(msgspec.Struct):
    seq: int
    recorded: float


class _Msg(msgspec.Struct):
    op: str
    events: list[_Ev] | None = None


async def subscriber(
    url: str, ready: asyncio.Event, latencies: list[float], counts: list[int], stop: asyncio.Event
) -> None:
    decode = msgspec.msgpack.Decoder(_Msg).decode
    async with connect(url, max_size=None, compression=None) as ws:
        await ws.send(msgspec.msgpack.encode({"op": "hello", "protocol": 1}))
        await ws.recv()
        await ws.send(msgspec.msgpack.encode({"op": "subscribe", "ref": 1}))
        ready.set()
        n = 0
        while not stop.is_set():
            try:
                frame = await asyncio.wait_for(ws.recv(), 0.5)
            except TimeoutError:
                continue
            msg = decode(frame)
            if msg.events:
                now = time.time()
                n += len(msg.events)
                latencies.extend(now - e.recorded for e in msg.events[:: max(1, len(msg.events) // 10)])
        counts.append(n)


async def paced_writer(url: str, rate: int, seconds: float, batch: int = 100) -> int:
    sent = 0
    async with connect(url, max_size=None, compression=None) as ws:
        await ws.send(msgspec.msgpack.encode({"op": "hello", "protocol": 1}))
        await ws.recv()
        start = time.perf_counter()
        ref = 0
        while time.perf_counter() - start < seconds:
            events = [
                {"type": "metrics", "run": "paced", "data": {"values": {"loss": 0.5}, "step": sent + i}}
                for i in range(batch)
            ]
            ref += 1
            await ws.send(msgspec.msgpack.encode({"op": "append", "ref": ref, "events": events}))
            await ws.recv()
            sent += batch
            ahead = sent / rate - (time.perf_counter() - start)
            if ahead > 0:
                await asyncio.sleep(ahead)
    return sent


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1e3 if ordered else float("nan")


async def with_subscribers(url: str, n: int, work: object) -> tuple[object, list[float], list[int]]:
    latencies: list[float] = []
    counts: list[int] = []
    stop = asyncio.Event()
    readies = [asyncio.Event() for _ in range(n)]
    tasks = [asyncio.create_task(subscriber(url, r, latencies, counts, stop)) for r in readies]
    for r in readies:
        await r.wait()
    await asyncio.sleep(0.5)  # let every subscription go live
    result = await work  # type: ignore[misc]
    await asyncio.sleep(1.0)  # let the last events arrive
    stop.set()
    await asyncio.gather(*tasks)
    return result, latencies, counts


async def stalled(url: str, events: list[dict], daemon: BenchDaemon) -> tuple[float, int, int]:
    async with connect(url, max_size=None, max_queue=1, compression=None) as ws:
        await ws.send(msgspec.msgpack.encode({"op": "hello", "protocol": 1}))
        await ws.recv()
        await ws.send(msgspec.msgpack.encode({"op": "subscribe", "ref": 1}))
        await ws.recv()
        rss_before = daemon.rss_kib()
        elapsed, _ = await run_client(url, events, 1000, 8)
        rss_after = daemon.rss_kib()
    return len(events) / elapsed, rss_before, rss_after


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--paced-rate", type=int, default=5_000, help="events/s the writer sends in phase 2")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs the daemon")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(
        f"command: python bench/live.py --subscribers {args.subscribers} --events {args.events} "
        f"--paced-rate {args.paced_rate} --seconds {args.seconds}"
    )
    with tempfile.TemporaryDirectory(prefix="tracklog-live-") as tmp:
        with BenchDaemon(Path(tmp) / "a.db", python=args.python) as d:
            rate_alone = args.events / asyncio.run(run_client(d.url, make_events(args.events), 1000, 8))[0]
            rss_alone = d.rss_kib()
        print(
            f"1. ingest, no subscriber            {rate_alone:>10,.0f} events/s"
            f"   daemon RSS {rss_alone / 1024:.0f} MiB"
        )

        with BenchDaemon(Path(tmp) / "b.db", python=args.python) as d:
            cpu = d.cpu_seconds()
            sent, lat, counts = asyncio.run(
                with_subscribers(d.url, args.subscribers, paced_writer(d.url, args.paced_rate, args.seconds))
            )
            cpu = d.cpu_seconds() - cpu
        delivered = sum(counts)
        print(
            f"2. fan-out to {args.subscribers} subscribers, writer at {args.paced_rate:,}/s:"
            f" delivered {delivered:,} of "
            f"{int(sent) * args.subscribers:,} ({delivered / args.seconds:,.0f} events/s in total); "
            f"commit-to-delivery p50 {pct(lat, 0.5):.1f} ms, p99 {pct(lat, 0.99):.1f} ms; "
            f"daemon CPU {cpu / max(delivered, 1) * 1e6:.2f} us per delivery"
        )

        with BenchDaemon(Path(tmp) / "c.db", python=args.python) as d:
            events = make_events(args.events)
            cpu = d.cpu_seconds()
            (elapsed_lat, _), _, counts = asyncio.run(
                with_subscribers(d.url, args.subscribers, run_client(d.url, events, 1000, 8))
            )
            cpu = d.cpu_seconds() - cpu
            rate_fan = args.events / elapsed_lat
        print(
            f"3. ingest with {args.subscribers} subscribers reading  {rate_fan:>10,.0f} events/s   "
            f"({rate_fan / rate_alone:.0%} of phase 1;"
            f" every subscriber got {min(counts):,} to {max(counts):,} events); "
            f"daemon CPU {cpu / max(sum(counts), 1) * 1e6:.2f} us per delivery"
        )

        with BenchDaemon(Path(tmp) / "d.db", python=args.python) as d:
            rate_stalled, before, after = asyncio.run(stalled(d.url, make_events(args.events), d))
        print(
            f"4. ingest with a stalled subscriber {rate_stalled:>10,.0f} events/s"
            f"   ({rate_stalled / rate_alone:.0%} of phase 1); "
            f"daemon RSS {before / 1024:.0f} MiB before, {after / 1024:.0f} MiB after {args.events:,} events"
        )


if __name__ == "__main__":
    main()
