"""Soak: the load of bench/load.py for a long time, checking the daemon's memory and fds stay flat.

    python bench/soak.py [--minutes 60] [--writers 50] [--subscribers 50] [--rate 100]
                         [--max-rss-mb-per-hour 50] [--max-fds-per-hour 10] [--warmup 0.2]

Not for CI (an hour by default). It runs one load of `--minutes`, samples the daemon's
RSS and open file descriptors every second, keeps the samples taken while the writers
write, drops the first `--warmup` share of them (caches and buffers filling up), fits a
least-squares line through the rest and fails (exit 1) when RSS grows faster than
`--max-rss-mb-per-hour` MiB/hour or the fds faster than `--max-fds-per-hour`, or when
the load itself reports an error or a loss.
Writes `--out`.json/.csv/.png (default bench/results/soak).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from load import Sample, run_load, write_samples


def slope_per_hour(samples: list[Sample], value: str) -> float:
    """The least-squares slope of a sampled value, per hour."""
    if len(samples) < 2:
        return 0.0
    xs = [s.t for s in samples]
    ys = [float(getattr(s, value)) for s in samples]
    return statistics.linear_regression(xs, ys).slope * 3600


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
    parser.add_argument("--warmup", type=float, default=0.2, help="share of the samples left out of the fit")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "soak")
    args = parser.parse_args()

    seen = [0]

    def progress(sample: Sample) -> None:
        seen[0] += 1
        if seen[0] % 60 == 0:
            rss, fds, load = sample.rss_mib, sample.fds, sample.load1
            print(f"{sample.t:7.0f} s  rss {rss:7.1f} MiB  fds {fds:4d}  load {load:5.1f}", flush=True)

    summary, samples = run_load(
        args.minutes * 60, args.writers, args.subscribers, args.rate, args.queriers, on_sample=progress
    )
    # Only while the writers write: draining after them is not the steady state.
    start, end = summary["load_window_s"]
    loaded = [s for s in samples if start <= s.t <= end]
    steady = loaded[int(len(loaded) * args.warmup) :]
    rss_slope = slope_per_hour(steady, "rss_mib")
    fds_slope = slope_per_hour(steady, "fds")
    summary["soak"] = {
        "minutes": args.minutes,
        "samples_fitted": len(steady),
        "rss_mib_per_hour": round(rss_slope, 1),
        "fds_per_hour": round(fds_slope, 1),
        "max_rss_mb_per_hour": args.max_rss_mb_per_hour,
        "max_fds_per_hour": args.max_fds_per_hour,
        "flat": rss_slope <= args.max_rss_mb_per_hour and fds_slope <= args.max_fds_per_hour,
    }
    title = f"soak: {args.writers} writers, {args.subscribers} subscribers, {args.minutes:g} min"
    summary["files"] = write_samples(samples, args.out, title)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] and summary["soak"]["flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
