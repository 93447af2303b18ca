"""The daemon's peak memory while it exports a long run as JSON and as CSV.

    python bench/export.py                      # one run of 10 million points (10 metrics x 1M steps)
    python bench/export.py --points 1000000     # smaller
    python bench/export.py --db run.db --python /other/venv/bin/python   # another build of the daemon

It builds the database directly with the log store (no daemon), then starts a daemon on
it (loopback, free port), reads each export over HTTP to the end (counting bytes, keeping
none), and samples the daemon's resident memory every 20 ms meanwhile. Reported: the
daemon's RSS before the export, the highest sample during it, and the time it took.
`--python` runs the daemon with another interpreter (a checkout of an older version) on
the same database, for a before/after comparison.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _daemon import BenchDaemon, machine

from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog
from tracklog.protocol.events import Metrics, MetricsData, RunStarted, RunStartedData
from tracklog.protocol.messages import Append

RUN = "long"


def build(path: Path, points: int, metrics: int) -> None:
    """One run with `points` metric points: `metrics` metrics logged at each step."""
    started = time.perf_counter()
    store = SqliteEventLog(path)
    store.catch_up()
    names = [f"m{k}" for k in range(metrics)]
    batch: list[Any] = [RunStarted(run=RUN, ts=1.7e9, data=RunStartedData(name="long", pipeline="bench"))]
    for step in range(points // metrics):
        values = {name: 1.0 / (step + 1 + k) for k, name in enumerate(names)}
        batch.append(
            Metrics(run=RUN, ts=1.7e9 + step, data=MetricsData(values=values, step=step, epoch=step // 1000))
        )
        if len(batch) >= 5_000:
            store.append_group([Append(events=batch)])
            batch = []
    if batch:
        store.append_group([Append(events=batch)])
    store.close()
    print(f"built {path}: {points:,} points in {time.perf_counter() - started:.0f} s", flush=True)


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def export(daemon: BenchDaemon, fmt: str) -> tuple[int, int, int, float]:
    """(RSS before, peak RSS during, bytes, seconds) of one export read to the end."""
    assert daemon.proc is not None
    pid = daemon.proc.pid
    before = rss_kib(pid)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_kib(pid))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    size = 0
    try:
        url = f"http://127.0.0.1:{daemon.port}/api/runs/{RUN}/export/{fmt}"
        with urllib.request.urlopen(url, timeout=3600) as reply:
            while chunk := reply.read(1 << 20):
                size += len(chunk)
    finally:
        took = time.perf_counter() - started
        done.set()
        sampler.join()
    return before, peak, size, took


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=10_000_000)
    parser.add_argument("--metrics", type=int, default=10)
    parser.add_argument("--db", type=Path, default=None, help="use (or build, if absent) this database")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs the daemon")
    parser.add_argument("--formats", default="json,csv")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="tracklog-bench-export-") as tmp:
        db = args.db or Path(tmp) / "export.db"
        if not db.exists():
            build(db, args.points, args.metrics)
        print(f"database {db.stat().st_size / 1e6:.0f} MB; daemon: {args.python}", flush=True)
        for fmt in args.formats.split(","):
            with BenchDaemon(db, python=args.python) as daemon:
                try:
                    before, peak, size, took = export(daemon, fmt)
                except Exception as exc:  # an older daemon may fail on a long run
                    print(f"{fmt}: failed: {exc!r}", flush=True)
                    continue
                print(
                    f"{fmt}: {size / 1e6:,.0f} MB in {took:.1f} s; daemon RSS {before / 1024:.0f} MiB before,"
                    f" peak {peak / 1024:.0f} MiB during (+{(peak - before) / 1024:.0f} MiB)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
