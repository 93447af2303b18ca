"""Start and stop a real `mlflow server` (SQLite store, loopback, free port) for a comparison.

bench/mlflow_compat.py and tests/daemon/mlflow_compat/test_real_client.py both start one
this way (the test loads this file by its path). Only the standard library: the server is
the full `mlflow` package, in another environment, named by its `mlflow` command.

The server is ready when it says it listens (uvicorn's "Uvicorn running on
http://127.0.0.1:PORT", or gunicorn's "Listening at: http://127.0.0.1:PORT"): that line is
waited for, not polled for, and a thread keeps the server's output drained for as long as
it runs (a pipe nobody reads fills up and stops the server at its next log line).
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

#: Seconds the server may take to say it listens (it imports all of MLflow first).
SERVER_START_TIMEOUT = 180.0
#: Seconds the server may take to stop after SIGTERM, before SIGKILL.
SERVER_STOP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_mlflow_server(
    command: str, work: Path, timeout: float = SERVER_START_TIMEOUT
) -> tuple[subprocess.Popen[bytes], str]:
    """`command server` with its store and artifacts under `work`, once it listens: (the
    process, its URI). RuntimeError if it exits or stays silent for `timeout` seconds."""
    port = free_port()
    proc = subprocess.Popen(
        [
            command,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{work / 'mlflow.db'}",
            "--artifacts-destination",
            str(work / "mlflow-artifacts"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # Its own process group: the server's workers are stopped with it.
        start_new_session=True,
    )
    # Lines as the thread reads them; None: the output ended (the server exited).
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        with proc.stdout:  # closed here, at the end of the output, not left to the collector
            for raw in proc.stdout:
                lines.put(raw.decode(errors="replace"))
        lines.put(None)

    threading.Thread(target=pump, name="mlflow-server-output", daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        if line is None:
            stop_mlflow_server(proc)
            raise RuntimeError("mlflow server did not start (it exited, or did not say it listens in time)")
        if f"127.0.0.1:{port}" in line:
            return proc, f"http://127.0.0.1:{port}"


def stop_mlflow_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group, SIGKILL if it has not gone in time."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(SERVER_STOP_TIMEOUT)
            return
        except subprocess.TimeoutExpired:
            continue
