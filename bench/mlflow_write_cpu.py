"""CPU per MLflow write request in the daemon: the tracking handlers on an in-process daemon.

    python bench/mlflow_write_cpu.py [--requests 400] [--rounds 3] [--profile]

Each MLflow write endpoint the client calls while a run logs (log-batch of one metric and
of 1,000, log-metric, log-parameter, set-tag, update-run) is called `--requests` times in a
row through `handle`, as the HTTP layer calls it (no sockets: the daemon's own cost, not
the client's or the kernel's). The figure is the process's CPU time (every thread: the
event loop, the writer, the readers) per request, and the wall time per request; the best
of `--rounds`. `--profile` prints where the time goes (yappi, every thread) for one round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _daemon import machine

from tracklog.daemon.mlflow import MlflowContext, handle
from tracklog.daemon.server import Daemon, Settings

NOW_MS = 1_767_225_600_000
SORT = "tsub"
PREFIX = "/api/2.0/mlflow/"


def workloads(run_id: str) -> dict[str, tuple[str, Callable[[int], dict[str, Any]]]]:
    """Each endpoint measured, and the body of its i-th request."""

    def one_metric(i: int) -> dict[str, Any]:
        metric = {"key": "loss", "value": 1.0 / (i + 1), "timestamp": NOW_MS + i, "step": i}
        return {"run_id": run_id, "metrics": [metric]}

    def thousand(i: int) -> dict[str, Any]:
        metrics = [
            {"key": "acc", "value": j / 1000, "timestamp": NOW_MS + i, "step": i * 1000 + j}
            for j in range(1000)
        ]
        return {"run_id": run_id, "metrics": metrics}

    return {
        "log-batch, 1 metric": ("runs/log-batch", one_metric),
        "log-batch, 1,000 metrics": ("runs/log-batch", thousand),
        "log-metric": (
            "runs/log-metric",
            lambda i: {"run_id": run_id, "key": "m", "value": i, "timestamp": NOW_MS + i, "step": i},
        ),
        "log-parameter": (
            "runs/log-parameter",
            lambda i: {"run_id": run_id, "key": f"p{i}", "value": str(i)},
        ),
        "set-tag": ("runs/set-tag", lambda i: {"run_id": run_id, "key": "t", "value": str(i)}),
        "update-run": ("runs/update", lambda i: {"run_id": run_id, "status": "RUNNING"}),
    }


async def call(context: MlflowContext, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = await handle("POST", PREFIX + endpoint, {}, body, context)
    assert status == 200, answer
    return answer


async def measure(db: Path, requests: int, run_metrics: int, profile: bool) -> dict[str, tuple[float, float]]:
    """{workload: (CPU ms per request, wall ms per request)} on a fresh daemon, on one run
    that already has `run_metrics` metrics, 20 params and 10 tags (as a training run has)."""
    daemon = Daemon(Settings(db=db, port=0, host="127.0.0.1"))
    await daemon.start()
    out: dict[str, tuple[float, float]] = {}
    try:
        context = MlflowContext(daemon.writer, daemon.readers)
        created = await call(context, "runs/create", {"experiment_id": "0", "start_time": NOW_MS})
        run_id = created["run"]["info"]["run_id"]
        for start in range(0, run_metrics, 1000):
            metrics = [
                {"key": f"metric_{i}", "value": 0.5, "timestamp": NOW_MS, "step": 0}
                for i in range(start, min(run_metrics, start + 1000))
            ]
            await call(context, "runs/log-batch", {"run_id": run_id, "metrics": metrics})
        await call(
            context,
            "runs/log-batch",
            {
                "run_id": run_id,
                "params": [{"key": f"param_{i}", "value": str(i)} for i in range(20)],
                "tags": [{"key": f"tag_{i}", "value": str(i)} for i in range(10)],
            },
        )
        for name, (endpoint, body_of) in workloads(run_id).items():
            count = requests // 20 if "1,000" in name else requests
            bodies = [body_of(i) for i in range(count)]
            await call(context, endpoint, bodies[0])  # warm: readers opened, statements cached
            if profile:
                import yappi

                yappi.set_clock_type("cpu")
                yappi.clear_stats()
                yappi.start()
            cpu, wall = time.process_time(), time.perf_counter()
            for body in bodies[1:]:
                await call(context, endpoint, body)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            if profile:
                yappi.stop()
                print(f"\n== {name}: top functions by CPU (all threads)")
                stats = yappi.get_func_stats()
                stats.sort(SORT).print_all(
                    columns={0: ("name", 90), 1: ("ncall", 8), 3: ("tsub", 8), 4: ("ttot", 8)},
                    out=sys.stdout,
                )
            out[name] = (cpu * 1000 / (count - 1), wall * 1000 / (count - 1))
    finally:
        await daemon.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--run-metrics", type=int, default=100, help="metrics the run has before the measured requests"
    )
    parser.add_argument("--profile", action="store_true", help="print a yappi profile (pip install yappi)")
    args = parser.parse_args()
    print(f"machine: {machine()}, load average {os.getloadavg()[0]:.1f}")
    print(
        f"{args.requests} requests of each kind, on a run with {args.run_metrics} metrics; best of the rounds"
    )
    best: dict[str, tuple[float, float]] = {}
    for round_number in range(1 if args.profile else args.rounds):
        with tempfile.TemporaryDirectory(prefix="tracklog-mlflow-cpu-") as tmp:
            found = asyncio.run(measure(Path(tmp) / "m.db", args.requests, args.run_metrics, args.profile))
        for name, (cpu, wall) in found.items():
            was = best.get(name)
            best[name] = (min(cpu, was[0]), min(wall, was[1])) if was else (cpu, wall)
        print(f"round {round_number + 1}: " + ", ".join(f"{n} {c:.2f}" for n, (c, _) in found.items()))
    print(f"{'request':<26} {'CPU ms/request':>15} {'wall ms/request':>16}")
    for name, (cpu, wall) in best.items():
        print(f"{name:<26} {cpu:>15.2f} {wall:>16.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
