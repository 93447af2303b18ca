"""The same MLflow client code against an `mlflow server` (SQLite store) and against tracklog.

    python bench/mlflow_compat.py [--mlflow PATH/TO/mlflow] [--async-metrics 1000] [--batches 5]

Two workloads, each timed end to end (from the first call until every metric is stored,
then checked by reading the history back):

- fluent `mlflow.log_metric(..., synchronous=False)` in a loop, then `flush_async_logging`
  (MLflow's asynchronous logging: batches sent from a thread pool);
- `MlflowClient.log_batch` of 1,000 metrics, `--batches` times.

The client is `mlflow` (mlflow-skinny, tracklog's dev extra). The server side needs the
full `mlflow` package: `--mlflow` (or $TRACKLOG_MLFLOW_SERVER) names its `mlflow` command,
for example one installed in a temporary venv. Without one, only tracklog is measured and
the script says so. Each target runs in a process of its own; both on this machine, in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _daemon import BenchDaemon, machine
from _mlflow_server import start_mlflow_server, stop_mlflow_server


@contextlib.contextmanager
def mlflow_server(command: str, work: Path) -> Any:
    """`mlflow server` with its SQLite store on a free loopback port, once it says it
    listens (bench/_mlflow_server.py, shared with the tests); its URI."""
    proc, uri = start_mlflow_server(command, work)
    try:
        yield uri
    finally:
        stop_mlflow_server(proc)


def client_workload(uri: str, async_metrics: int, batches: int) -> dict[str, Any]:
    """The MLflow client code, unchanged whatever it points at (run in a child process)."""
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(f"bench-{time.time_ns()}")
    out: dict[str, Any] = {}

    with mlflow.start_run(experiment_id=experiment_id) as run:
        started = time.perf_counter()
        for step in range(async_metrics):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step, synchronous=False)
        mlflow.flush_async_logging()
        took = time.perf_counter() - started
        run_id = run.info.run_id
    stored = len(client.get_metric_history(run_id, "loss"))
    out["async"] = {"metrics": async_metrics, "seconds": took, "stored": stored}

    run_id = client.create_run(experiment_id).info.run_id
    now = int(time.time() * 1000)
    started = time.perf_counter()
    for batch in range(batches):
        metrics = [Metric("acc", i / 1000, now + batch, batch * 1000 + i) for i in range(1000)]
        client.log_batch(run_id, metrics=metrics)
    took = time.perf_counter() - started
    stored = len(client.get_metric_history(run_id, "acc"))
    client.set_terminated(run_id)
    out["batch"] = {"metrics": batches * 1000, "seconds": took, "stored": stored}
    return out


def run_client(uri: str, async_metrics: int, batches: int) -> dict[str, Any]:
    """client_workload in a fresh Python process (MLflow's client keeps global state)."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import mlflow_compat as b;"
        " print(json.dumps(b.client_workload(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))"
    )
    env = dict(os.environ, MLFLOW_HTTP_REQUEST_TIMEOUT="600")
    env.pop("MLFLOW_TRACKING_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), uri, str(async_metrics), str(batches)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def rate(part: dict[str, Any]) -> float:
    return float(part["metrics"] / part["seconds"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mlflow", default=os.environ.get("TRACKLOG_MLFLOW_SERVER") or shutil.which("mlflow")
    )
    parser.add_argument("--async-metrics", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=5)
    args = parser.parse_args()

    print(f"machine: {machine()}")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="tracklog-mlflow-bench-") as tmp:
        work = Path(tmp)
        server_ok = False
        if args.mlflow:
            try:
                with mlflow_server(args.mlflow, work) as uri:
                    server_ok = True
                    results["mlflow server (SQLite)"] = run_client(uri, args.async_metrics, args.batches)
            except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
                print(f"mlflow server: not measured ({exc})")
        if not server_ok and not args.mlflow:
            print("mlflow server: not measured (no `mlflow` command with the server: pass --mlflow)")
        with BenchDaemon(work / "tracklog.db", "--log-format", "json") as daemon:
            results["tracklog"] = run_client(
                f"http://127.0.0.1:{daemon.port}", args.async_metrics, args.batches
            )

    print(f"{'target':<24} {'workload':<34} {'metrics':>8} {'seconds':>8} {'metrics/s':>10}")
    for target, parts in results.items():
        for name, label in (("async", "fluent log_metric, asynchronous"), ("batch", "log_batch of 1,000")):
            part = parts[name]
            assert part["stored"] == part["metrics"], f"{target} {name}: stored {part['stored']}"
            print(
                f"{target:<24} {label:<34} {part['metrics']:>8} {part['seconds']:>8.2f} {rate(part):>10,.0f}"
            )
    if len(results) == 2:
        server, ours = results["mlflow server (SQLite)"], results["tracklog"]
        for name in ("async", "batch"):
            print(f"ratio tracklog / mlflow server, {name}: {rate(ours[name]) / rate(server[name]):,.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
