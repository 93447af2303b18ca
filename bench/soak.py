"""Soak: the load of bench/load.py for a long time, checking the daemon's memory and fds stay flat.

    python bench/soak.py [--minutes 60] [--writers 50] [--subscribers 50] [--rate 100]
                         [--max-rss-mb-per-hour 50] [--max-fds-per-hour 10] [--warmup 0.5]
                         [--memdebug FRAMES]

Not for CI (an hour by default). It runs one load of `--minutes`, samples the daemon's
RSS and open file descriptors every second, keeps the samples taken while the writers
write, drops the first `--warmup` share of them (caches and buffers filling up to their
bounds: by default the first half), fits a least-squares line through the rest and fails
(exit 1) when RSS grows faster than `--max-rss-mb-per-hour` MiB/hour or the fds faster
than `--max-fds-per-hour`, or when the load itself reports an error or a loss. So a
warm-up that ends within the first half passes and growth that goes on fails.

`--memdebug FRAMES` runs the daemon with `TRACKLOG_MEMDEBUG=FRAMES` (daemon/memdebug.py),
has it dump its memory at minute 1, 3, 5, ... and writes `--out`-memory.txt: at each dump
the RSS beside the bytes SQLite holds (its page caches), glibc's heap in use and free but
kept, and the daemon's per-connection structures; with FRAMES above 0 (tracemalloc on:
slower, so not for the verdict) also the Python heap traced and the allocation sites (by
traceback and by line) that grew most since the first dump and over the last interval.
Writes `--out`.json/.csv/.png (default bench/results/soak).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from load import Sample, run_load, write_samples

#: Memory dumps at minute 1, then every this many minutes.
DUMP_EVERY_MIN = 2
#: Allocation sites listed per comparison.
TOP_SITES = 12
MIB = 2**-20


def slope_per_hour(samples: list[Sample], value: str) -> float:
    """The least-squares slope of a sampled value, per hour."""
    if len(samples) < 2:
        return 0.0
    xs = [s.t for s in samples]
    ys = [float(getattr(s, value)) for s in samples]
    return statistics.linear_regression(xs, ys).slope * 3600


def timeline(samples: list[Sample], points: int = 9) -> list[dict[str, float]]:
    """RSS and fds at evenly spaced moments of the run: the curve in a few numbers."""
    if not samples:
        return []
    picks = sorted({round(i * (len(samples) - 1) / (points - 1)) for i in range(points)})
    return [
        {"t": samples[i].t, "rss_mib": round(samples[i].rss_mib, 1), "fds": samples[i].fds} for i in picks
    ]


def _interesting(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    """The snapshot without tracemalloc's and the import system's own allocations."""
    return snapshot.filter_traces(
        [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
            tracemalloc.Filter(False, "<unknown>"),
        ]
    )


def _site(stat: tracemalloc.StatisticDiff) -> str:
    """A growing site: its size change and its traceback, innermost frame first."""
    frames = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(stat.traceback[-6:]))
    return (
        f"  {stat.size_diff * MIB:+8.2f} MiB  {stat.count_diff:+9d} blocks"
        f"  (now {stat.size * MIB:7.2f} MiB)  {frames}"
    )


def memory_report(directory: Path, minutes_at: list[float]) -> tuple[str, list[dict[str, Any]]]:
    """The daemon's memory dumps side by side, and the allocation sites that grew most."""
    dumps = [json.loads(p.read_text()) for p in sorted(directory.glob("memory-*.json"))]
    lines = ["minute    RSS  SQLite  malloc in use  malloc free kept  Python traced  (MiB)   sizes"]
    table: list[dict[str, Any]] = []
    for minute, dump in zip(minutes_at, dumps, strict=False):
        malloc = dump["malloc"]
        row = {
            "minute": minute,
            "rss_mib": round(dump["rss"] * MIB, 1),
            "sqlite_mib": round((dump["sqlite"] or 0) * MIB, 1),
            "malloc_in_use_mib": round(malloc.get("in_use", 0) * MIB, 1),
            "malloc_free_kept_mib": round(malloc.get("free_kept", 0) * MIB, 1),
            "python_traced_mib": round(dump.get("python_traced", 0) * MIB, 1),
            "sizes": dump["sizes"],
        }
        table.append(row)
        lines.append(
            f"{minute:6.1f} {row['rss_mib']:6.1f} {row['sqlite_mib']:7.1f} {row['malloc_in_use_mib']:14.1f}"
            f" {row['malloc_free_kept_mib']:17.1f} {row['python_traced_mib']:14.1f}         {dump['sizes']}"
        )
    paths = sorted(directory.glob("snapshot-*.tracemalloc"))
    snapshots = [_interesting(tracemalloc.Snapshot.load(str(p))) for p in paths]
    last = len(snapshots) - 1
    for title, old in [("since the first dump", 0), ("over the last interval", last - 1)]:
        if old < 0 or old >= last:
            continue
        span = f"minute {minutes_at[old]:g} -> {minutes_at[last]:g}"
        for group in ("traceback", "lineno"):
            lines.append(f"\nPython heap growth {title} ({span}), by {group}:")
            lines += [_site(d) for d in snapshots[last].compare_to(snapshots[old], group)[:TOP_SITES]]
    return "\n".join(lines) + "\n", table


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--writers", type=int, default=50)
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--queriers", type=int, default=1)
    parser.add_argument("--rate", type=float, default=100.0, help="events/s each writer logs")
    parser.add_argument("--max-rss-mb-per-hour", type=float, default=50.0)
    parser.add_argument("--max-fds-per-hour", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=0.5, help="share of the samples left out of the fit")
    parser.add_argument(
        "--memdebug",
        type=int,
        metavar="FRAMES",
        help="dump the daemon's memory (FRAMES > 0: tracemalloc too)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "soak")
    args = parser.parse_args()

    dump_dir = Path(tempfile.mkdtemp(prefix="tracklog-soak-memdebug-"))
    if args.memdebug is not None:
        os.environ["TRACKLOG_MEMDEBUG"] = str(args.memdebug)
        os.environ["TRACKLOG_MEMDEBUG_DIR"] = str(dump_dir)
    daemon_pid = [0]
    seen = [0]
    #: The minute of each dump asked for.
    dumps_at: list[float] = []
    next_dump = [60.0]

    def progress(sample: Sample) -> None:
        seen[0] += 1
        if seen[0] % 60 == 0:
            rss, fds, load = sample.rss_mib, sample.fds, sample.load1
            print(f"{sample.t:7.0f} s  rss {rss:7.1f} MiB  fds {fds:4d}  load {load:5.1f}", flush=True)
        if args.memdebug is not None and next_dump[0] <= sample.t <= args.minutes * 60 + 30:
            os.kill(daemon_pid[0], signal.SIGUSR1)
            dumps_at.append(round(sample.t / 60, 1))
            next_dump[0] += DUMP_EVERY_MIN * 60

    def remember(pid: int) -> None:
        daemon_pid[0] = pid

    summary, samples = run_load(
        args.minutes * 60,
        args.writers,
        args.subscribers,
        args.rate,
        args.queriers,
        on_sample=progress,
        on_daemon=remember,
    )
    # Only while the writers write: draining after them is not the steady state.
    start, end = summary["load_window_s"]
    loaded = [s for s in samples if start <= s.t <= end]
    steady = loaded[int(len(loaded) * args.warmup) :]
    rss_slope = slope_per_hour(steady, "rss_mib")
    fds_slope = slope_per_hour(steady, "fds")
    summary["soak"] = {
        "minutes": args.minutes,
        "fitted_from_s": steady[0].t if steady else None,
        "samples_fitted": len(steady),
        "rss_mib_per_hour": round(rss_slope, 1),
        "fds_per_hour": round(fds_slope, 1),
        "max_rss_mb_per_hour": args.max_rss_mb_per_hour,
        "max_fds_per_hour": args.max_fds_per_hour,
        "flat": rss_slope <= args.max_rss_mb_per_hour and fds_slope <= args.max_fds_per_hour,
        "timeline": timeline(loaded),
    }
    if args.memdebug is not None:
        report, table = memory_report(dump_dir, dumps_at)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report_path = args.out.with_name(args.out.name + "-memory.txt")
        report_path.write_text(report)
        summary["memdebug"] = {"frames": args.memdebug, "dumps": table, "report": str(report_path)}
        print(report)
    shutil.rmtree(dump_dir)
    title = f"soak: {args.writers} writers, {args.subscribers} subscribers, {args.minutes:g} min"
    summary["files"] = write_samples(samples, args.out, title)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] and summary["soak"]["flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
