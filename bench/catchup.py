"""Subscribers catching up on a long log together: the daemon's CPU and the time until every
subscriber has every event.

    python bench/catchup.py [--events 200000] [--subscribers 30] [--per-process 10]

A log of `events` metrics events is written through the daemon's own append path, then
served; `subscribers` subscriptions from seq 0 (in processes of `per-process`, the load
benchmark's subscriber role: gapless, once, checked) read it to the head. Reported: the
wall time until all have it, and the daemon's CPU seconds over that time (what sharing
the log's pages between subscribers saves).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import LogBuilder, served_database
from _daemon import machine

from tracklog.protocol.events import Metrics, MetricsData, RunStarted, RunStartedData

HERE = Path(__file__).resolve().parent


def build(events: int):  # type: ignore[no-untyped-def]
    def write(path: Path) -> None:
        with LogBuilder(path) as log:
            log.add(RunStarted(run="r", ts=0.0, data=RunStartedData(name="r")))
            for step in range(events - 1):
                log.add(
                    Metrics(
                        run="r",
                        ts=float(step),
                        data=MetricsData(values={"loss": 1.0 / (1 + step)}, step=step),
                    )
                )

    return write


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--subscribers", type=int, default=30)
    parser.add_argument("--per-process", type=int, default=10)
    args = parser.parse_args()
    with served_database(None, build(args.events)) as daemon:
        counts = [args.per_process] * (args.subscribers // args.per_process)
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(HERE / "load.py"),
                    "--role",
                    "subscriber",
                    "--url",
                    daemon.url,
                    "--count",
                    str(n),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for n in counts
        ]
        cpu_before = daemon.cpu_seconds()
        began = time.perf_counter()
        for proc in procs:
            assert proc.stdout is not None and proc.stdin is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"stop {args.events}\n")
            proc.stdin.flush()
        states = [s for proc in procs for s in json.loads(proc.communicate(timeout=1800)[0].splitlines()[-1])]
        wall = time.perf_counter() - began
        cpu = daemon.cpu_seconds() - cpu_before
    errors = sum(len(s["errors"]) for s in states) + sum(1 for s in states if s["last"] != args.events)
    print(
        json.dumps(
            {
                "machine": machine(),
                "events": args.events,
                "subscribers": len(states),
                "wall_seconds": round(wall, 2),
                "daemon_cpu_seconds": round(cpu, 2),
                "daemon_cpu_us_per_delivery": round(cpu / (args.events * len(states)) * 1e6, 3),
                "errors": errors,
            }
        )
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
