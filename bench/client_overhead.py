"""What logging a metric costs the caller, and how fast it reaches the store: tracklog
beside MLflow's asynchronous logging, in the same run, both on loopback with SQLite.

    python bench/client_overhead.py [--events 200000] [--mlflow-events 20000]
                                    [--mlflow-python /tmp/bench-venv/bin/python]

tracklog: a daemon on a free port and a temporary database; one `run.log_metric` per
step in a tight loop. "ns/call" is the wall time of the loop divided by the calls, on
the caller's thread (it includes the time the sender thread holds the GIL); "e2e" is
calls divided by the time from the first call until `flush()` says every event is
acked, that is committed by the daemon.

MLflow: `mlflow server` on 127.0.0.1 with an SQLite backend store, and `log_metric(...,
synchronous=False)` with MLFLOW_ENABLE_ASYNC_LOGGING on (asynchronous logging, which
batches in a background thread), both as the fluent `mlflow.log_metric` and as
`MlflowClient.log_metric`; "e2e" ends when `flush_async_logging()` returns. Both sides
check afterwards that every point was stored. MLflow gets fewer calls by default
(--mlflow-events) because it is slow; the rates are per second either way.

MLflow is imported only if it is installed in this interpreter; otherwise the MLflow
part runs in `--mlflow-python` (a separate venv with mlflow installed, default
$TRACKLOG_BENCH_MLFLOW_PYTHON) or is skipped with a message. This script is not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> dict[str, str]:
    cpu = "unknown cpu"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


@contextlib.contextmanager
def process(args: list[str], ready: Any, what: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server, wait for ready() to be true, SIGTERM it at the end."""
    quiet = subprocess.DEVNULL
    proc = subprocess.Popen(args, stdin=quiet, stdout=quiet, stderr=quiet)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}: {shlex.join(args)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start in {START_TIMEOUT:.0f} s")
            time.sleep(0.1)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


# -- tracklog ----------------------------------------------------------------------------


def bench_tracklog(n: int, tmp: Path) -> dict[str, Any]:
    import tracklog

    tmp = tmp / f"tracklog-{n}"
    tmp.mkdir()

    port = free_port()
    args = [sys.executable, "-m", "tracklog", "serve", "--db", str(tmp / "tracklog.db"), "--port", str(port),
            "--log-level", "warning"]
    with process(args, lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), "tracklog serve"):
        url = f"ws://127.0.0.1:{port}/ws"
        with tracklog.connect(url, spool_dir=tmp / "spool") as tl:
            run = tl.start_run("bench", pipeline="client_overhead")
            log_metric = run.log_metric
            for step in range(1_000):  # warm up: connection made, code paths hot
                log_metric("warmup", 0.5, step=step)
            if not tl.flush(60):
                raise RuntimeError("tracklog: warm-up not acked")
            acked_before = tl.stats()["acked"]

            start = time.perf_counter()
            cpu_start = time.thread_time()
            for step in range(n):
                log_metric("loss", 0.5, step=step)
            cpu = time.thread_time() - cpu_start
            logged = time.perf_counter()
            if not tl.flush(600):
                raise RuntimeError(f"tracklog: not every event was acked: {tl.stats()}")
            done = time.perf_counter()
            stats = tl.stats()
            run.finish()
            tl.flush(60)
        stored = _tracklog_points(url, run.id)
    if stats["acked"] - acked_before != n or stored != n + 1_000:
        raise RuntimeError(f"tracklog: {stats['acked'] - acked_before} acked, {stored} stored, expected {n}")
    return {
        "system": f"tracklog {tracklog.__version__}",
        "events": n,
        "ns_per_call": (logged - start) / n * 1e9,
        "cpu_ns_per_call": cpu / n * 1e9,
        "e2e_per_s": n / (done - start),
        "seconds": done - start,
        "spooled": stats["spooled_total"],
    }


def _tracklog_points(url: str, run: str) -> int:
    import asyncio

    import msgspec
    from websockets.asyncio.client import connect

    async def ask() -> int:
        async with connect(url) as ws:
            await ws.send(msgspec.msgpack.encode({"op": "hello", "protocol": 1, "client": "bench"}))
            await ws.recv()
            await ws.send(msgspec.msgpack.encode({"op": "query", "q": "run", "run": run, "ref": 1}))
            reply = msgspec.msgpack.decode(await ws.recv())
            return int(reply["rows"][0]["n_points"])

    return asyncio.run(ask())


# -- MLflow ------------------------------------------------------------------------------


def bench_mlflow(n: int, tmp: Path) -> list[dict[str, Any]]:
    """Two rows: the fluent `mlflow.log_metric` (what scripts call) and `MlflowClient.log_metric`
    (no active-run lookups per call), both with synchronous=False."""
    os.environ["MLFLOW_ENABLE_ASYNC_LOGGING"] = "true"
    import mlflow
    from mlflow.tracking import MlflowClient

    port = free_port()
    args = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
            "--default-artifact-root", str(tmp / "mlruns"), "--workers", "1"]
    rows = []
    with process(args, lambda: http_ok(f"http://127.0.0.1:{port}/health"), "mlflow server"):
        mlflow.set_tracking_uri(f"http://127.0.0.1:{port}")
        mlflow.set_experiment("client_overhead")
        client = MlflowClient()
        for style in ("fluent", "client"):
            with mlflow.start_run() as active:
                run_id = active.info.run_id
                if style == "fluent":
                    def log(step: int, key: str = "loss") -> None:
                        mlflow.log_metric(key, 0.5, step=step, synchronous=False)
                else:
                    def log(step: int, key: str = "loss", run_id: str = run_id) -> None:
                        client.log_metric(run_id, key, 0.5, step=step, synchronous=False)
                for step in range(100):  # warm up
                    log(step, "warmup")
                mlflow.flush_async_logging()

                start = time.perf_counter()
                cpu_start = time.thread_time()
                for step in range(n):
                    log(step)
                cpu = time.thread_time() - cpu_start
                logged = time.perf_counter()
                mlflow.flush_async_logging()
                done = time.perf_counter()
            stored = len(client.get_metric_history(run_id, "loss"))
            if stored != n:
                raise RuntimeError(f"mlflow: {stored} points stored, expected {n}")
            name = "mlflow.log_metric" if style == "fluent" else "MlflowClient.log_metric"
            rows.append({
                "system": f"{name} {mlflow.__version__}",
                "events": n,
                "ns_per_call": (logged - start) / n * 1e9,
                "cpu_ns_per_call": cpu / n * 1e9,
                "e2e_per_s": n / (done - start),
                "seconds": done - start,
            })
    return rows


def mlflow_result(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]] | str:
    """The MLflow rows, or why there are none."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        pass
    else:
        return bench_mlflow(args.mlflow_events, tmp)
    python = args.mlflow_python
    if not python:
        return ("mlflow is not importable here; skipped. Install it in a separate venv and pass "
                "--mlflow-python /tmp/bench-venv/bin/python (or set TRACKLOG_BENCH_MLFLOW_PYTHON)")
    out = subprocess.run(
        [python, __file__, "--mlflow-only", "--mlflow-events", str(args.mlflow_events)],
        capture_output=True, text=True, timeout=3600,
    )
    if out.returncode != 0:
        return f"mlflow run failed in {python}:\n{out.stderr[-2000:]}"
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000, help="tracklog log_metric calls")
    parser.add_argument("--small-events", type=int, default=50_000,
                        help="a second tracklog run that fits in the queue (0: skip)")
    parser.add_argument("--mlflow-events", type=int, default=3_000, help="MLflow log_metric calls (each way)")
    parser.add_argument("--mlflow-python", default=os.environ.get("TRACKLOG_BENCH_MLFLOW_PYTHON"),
                        help="an interpreter with mlflow installed, when this one has none")
    parser.add_argument("--mlflow-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tracklog-bench-") as name:
        tmp = Path(name)
        if args.mlflow_only:  # the child run in the MLflow venv: one JSON line
            print(json.dumps(bench_mlflow(args.mlflow_events, tmp)))
            return
        ours = bench_tracklog(args.events, tmp)
        small = bench_tracklog(args.small_events, tmp) if args.small_events else None
        theirs = mlflow_result(args, tmp)
    m = machine()

    print(f"machine: {m['nproc']} cores (nproc), {m['cpu']}, Python {m['python']}, {m['os']}")
    print(f"command: python {shlex.join(sys.argv)}")
    print()
    header = (
        f"{'client':<32} {'calls':>8} {'ns/call':>10} {'cpu ns/call':>12} {'e2e events/s':>13} {'e2e s':>7}"
    )
    print(header)
    print("-" * len(header))
    rows = [ours] + ([small] if small else []) + (theirs if isinstance(theirs, list) else [])
    for r in rows:
        print(f"{r['system']:<32} {r['events']:>8} {r['ns_per_call']:>10,.0f} {r['cpu_ns_per_call']:>12,.0f} "
              f"{r['e2e_per_s']:>13,.0f} {r['seconds']:>7.2f}")
    print()
    for r in [ours] + ([small] if small else []):
        print(f"tracklog, {r['events']:,} calls: {r['spooled']:,} events went through the spool"
              + (" (the caller outran the daemon; the queue holds 100,000)" if r["spooled"] else ""))
    if isinstance(theirs, list):
        for r in theirs:
            less = r["ns_per_call"] / ours["ns_per_call"]
            more = ours["e2e_per_s"] / r["e2e_per_s"]
            print(f"tracklog vs {r['system']}: {less:,.0f}x less time per call,"
                  f" {more:,.0f}x the end-to-end rate")
    else:
        print(f"MLflow: {theirs}")


if __name__ == "__main__":
    main()
