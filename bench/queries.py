"""Query latency on a large database, and ingest with and without a query load beside it.

    python bench/queries.py            # 2,000 runs, 2 million points (a few minutes at most)
    python bench/queries.py --full     # 10,000 runs, 10 million points (the issue's size)
    python bench/queries.py --db PATH  # keep the database and reuse it on the next run
    python bench/queries.py --stats    # `stats` by stage and kind over 1 million items
    python bench/queries.py --stats --index-cost   # item ingest with and without items_stage

The database is written through SqliteEventLog directly (the daemon's own append path, without
the socket), then a daemon serves it and every query goes over a WebSocket, end to end:
a 1-million-point history downsampled to 1,000 points; a `runs` filter on a metric with
an ordering and a page of 50; `best` over all runs; a full-text search. Then a client
appends metrics as fast as acks come back, alone and with a second client sending those
queries back to back, and the two ingest rates are compared.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).parent))
from _common import Conn, LogBuilder, add_finished_run, median_ms, served_database, time_awaits
from _daemon import machine

from tracklog.protocol.events import (
    Item,
    ItemData,
    Metrics,
    MetricsData,
    RunStarted,
    RunStartedData,
)

WORDS = [
    "translation",
    "fox",
    "river",
    "model",
    "tensor",
    "gradient",
    "image",
    "caption",
    "harbor",
    "mountain",
    "quantum",
    "lattice",
    "violet",
    "cipher",
    "orbit",
    "meadow",
    "signal",
    "ember",
    "glacier",
    "lantern",
]
BIG_RUN = "big"
BIG_POINTS = 1_000_000


def build(path: Path, runs: int, points: int) -> None:
    """A database of `runs` runs holding `points` metric points, one run with 1M of them."""
    rng = random.Random(7)
    ts = 1_700_000_000.0
    per_run = max(3, max(0, points - BIG_POINTS) // max(1, runs - 1))
    steps = per_run // 3
    with LogBuilder(path) as log:
        log.add(
            RunStarted(
                run=BIG_RUN, ts=ts, data=RunStartedData(name="the long one", pipeline="train", tags=["long"])
            )
        )
        for step in range(BIG_POINTS):
            value = 1.0 / (1 + step / 1000) + rng.random() * 0.01
            if step == 777_777:
                value = 50.0  # a spike the downsampling must keep
            log.add(Metrics(run=BIG_RUN, ts=ts + step, data=MetricsData(values={"loss": value}, step=step)))
        for r in range(1, runs):
            add_finished_run(log.add, rng, f"run-{r:05d}", ts + r, steps, WORDS)
    print(
        f"built {path}: {runs} runs, {BIG_POINTS + (runs - 1) * steps * 3:,} points,"
        f" {path.stat().st_size / 1e6:.0f} MB in {log.seconds:.0f} s"
    )


QUERIES: dict[str, dict[str, Any]] = {
    "metrics: 1M points downsampled to 1,000": {
        "q": "metrics",
        "run": BIG_RUN,
        "names": ["loss"],
        "max_points": 1000,
    },
    "runs: metric filter, ordered, page of 50": {
        "q": "runs",
        "filter": "metrics.loss < 0.05 and status = 'completed'",
        "order_by": ["metrics.loss asc"],
        "limit": 50,
    },
    "best: min loss over all runs": {"q": "best", "metric": "loss", "mode": "min"},
    "search: full text": {"q": "search", "text": "fox river", "limit": 20},
}


async def latencies(url: str, repeat: int) -> dict[str, float]:
    conn = await Conn.open(url, "bench-queries")
    out: dict[str, float] = {}
    try:
        for label, q in QUERIES.items():
            reply = await conn.query(**q)  # warm the page cache
            if q["q"] == "metrics":
                row = reply["rows"][0]
                assert len(row["values"]) <= 1000 and 50.0 in row["values"], "the spike was lost"
            out[label] = median_ms(await time_awaits(lambda q=q: conn.query(**q), repeat))
    finally:
        await conn.close()
    return out


async def ingest(url: str, events: int, with_queries: bool) -> tuple[float, int]:
    """Events per second for one client appending `events` metric events; and queries answered meanwhile."""
    frames = [
        msgspec.msgpack.encode(
            {
                "op": "append",
                "ref": k,
                "events": [
                    {
                        "type": "metrics",
                        "run": f"ingest-{with_queries}",
                        "data": {"values": {"loss": 1.0, "acc": 0.5}, "step": i},
                    }
                    for i in range(k * 1000, (k + 1) * 1000)
                ],
            }
        )
        for k in range(events // 1000)
    ]
    writer = await Conn.open(url)
    done = asyncio.Event()
    answered = 0

    async def load() -> None:
        nonlocal answered
        conn = await Conn.open(url)
        try:
            while not done.is_set():
                for q in QUERIES.values():
                    await conn.query(**q)
                    answered += 1
        finally:
            await conn.close()

    loader = asyncio.create_task(load()) if with_queries else None
    inflight = asyncio.Semaphore(8)

    async def receive() -> None:
        for _ in frames:
            await writer.ws.recv()
            inflight.release()

    started = time.perf_counter()
    receiver = asyncio.create_task(receive())
    for frame in frames:
        await inflight.acquire()
        await writer.ws.send(frame)
    await receiver
    elapsed = time.perf_counter() - started
    done.set()
    if loader is not None:
        await loader
    await writer.close()
    return len(frames) * 1000 / elapsed, answered


STAGE_KINDS = [(stage, kind) for stage in ("fetch", "parse", "translate", "embed", "score")
               for kind in ("doc", "page", "sentence", "image")]  # fmt: skip
ITEM_RUNS = 100


def build_items(path: Path, items: int) -> float:
    """A database of `items` items over 100 runs and 20 (stage, kind) pairs, 5% failed,
    durations exponential (mean 0.1 s), 10% without one; returns the seconds it took."""
    rng = random.Random(11)
    with LogBuilder(path) as log:
        for r in range(ITEM_RUNS):
            log.add(RunStarted(run=f"items-{r:03d}", ts=1_700_000_000.0, data=RunStartedData(name=f"r{r}")))
        for i in range(items):
            stage, kind = rng.choice(STAGE_KINDS)
            log.add(
                Item(
                    run=f"items-{i % ITEM_RUNS:03d}",
                    ts=1_700_000_000.0 + i,
                    data=ItemData(
                        item=f"i{i}",
                        stage=stage,
                        kind=kind,
                        status="failed" if rng.random() < 0.05 else "ok",
                        duration=None if rng.random() < 0.1 else rng.expovariate(10),
                    ),
                )
            )
    return log.seconds


async def measure_stats(url: str, repeat: int) -> None:
    conn = await Conn.open(url, "bench-queries")
    try:
        for label, q in (
            ("stats: all items by stage and kind (SQL)", {"q": "stats"}),
            (
                f"stats RUN: one run's items by stage (numpy, 1/{ITEM_RUNS})",
                {"q": "stats", "run": "items-007"},
            ),
        ):
            reply = await conn.query(**q)
            assert reply["rows"][0]["stages"], "no stages"
            seconds = await time_awaits(lambda q=q: conn.query(**q), repeat)
            print(f"  {label:55s} median {median_ms(seconds):7.1f} ms")
    finally:
        await conn.close()


def index_cost(items: int = 200_000) -> None:
    """Item ingest (SqliteEventLog alone) with and without the `items_stage` index, twice each."""
    import tracklog.daemon.storage.sqlite.eventlog as store_module

    with_index = store_module.PROJECTION_DDL
    index = "CREATE INDEX IF NOT EXISTS items_stage ON items(stage, kind, duration, status);"
    assert index in with_index
    try:
        for label, ddl in [
            ("without items_stage", with_index.replace(index, "")),
            ("with items_stage", with_index),
        ] * 2:
            store_module.PROJECTION_DDL = ddl  # type: ignore[misc]
            with tempfile.TemporaryDirectory(prefix="tracklog-bench-") as tmp:
                seconds = build_items(Path(tmp) / "items.db", items)
            print(f"  ingest of {items:,} items {label:22s} {items / seconds:10,.0f} items/s")
    finally:
        store_module.PROJECTION_DDL = with_index  # type: ignore[misc]


def main_stats(items: int, repeat: int, db: Path | None) -> None:
    print(f"tracklog stats benchmark: {machine()}")

    def build(path: Path) -> None:
        seconds = build_items(path, items)
        print(f"built {path}: {items:,} items in {seconds:.0f} s ({items / seconds:,.0f} items/s)")

    with served_database(db, build, "items.db") as daemon:
        asyncio.run(measure_stats(daemon.url, repeat))


async def measure(url: str, repeat: int, ingest_events: int) -> None:
    for label, ms in (await latencies(url, repeat)).items():
        print(f"  {label:45s} median {ms:7.1f} ms")
    alone, _ = await ingest(url, ingest_events, False)
    loaded, answered = await ingest(url, ingest_events, True)
    print(f"  ingest alone                                  {alone:10,.0f} events/s")
    print(
        f"  ingest with a query load ({answered} queries)     {loaded:10,.0f} events/s"
        f"  ({100 * loaded / alone:.0f}% of alone)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="10,000 runs and 10 million points")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--points", type=int, default=None)
    parser.add_argument("--db", type=Path, default=None, help="database to build once and reuse")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--ingest-events", type=int, default=200_000)
    parser.add_argument("--stats", action="store_true", help="only the `stats` by stage case")
    parser.add_argument("--items", type=int, default=1_000_000, help="items for --stats")
    parser.add_argument(
        "--index-cost", action="store_true", help="with --stats: ingest with/without the index"
    )
    args = parser.parse_args()
    if args.stats and args.index_cost:
        index_cost()
        return
    if args.stats:
        main_stats(args.items, args.repeat, args.db)
        return
    runs = args.runs or (10_000 if args.full else 2_000)
    points = args.points or (10_000_000 if args.full else 2_000_000)
    print(f"tracklog query benchmark: {machine()}")
    with served_database(args.db, lambda path: build(path, runs, points)) as daemon:
        asyncio.run(measure(daemon.url, args.repeat, args.ingest_events))


if __name__ == "__main__":
    main()
