"""Start and stop a tracklog daemon for a benchmark (loopback, free port, temp database)."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO


class BenchDaemon:
    def __init__(self, db: Path, *extra: str, python: str = sys.executable) -> None:
        self.db = db
        self.extra = extra
        #: The interpreter that runs the daemon (another build of it, for a comparison).
        self.python = python
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def __enter__(self) -> BenchDaemon:
        self.proc = subprocess.Popen(
            [self.python, "-m", "tracklog", "serve", "--db", str(self.db), "--port", "0", *self.extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == "listening":
                self.port = int(record["port"])
                break
        else:
            raise RuntimeError("daemon did not start")
        # Keep reading its log: a pipe nobody reads fills up (64 KiB) and the daemon then
        # blocks on its next log line, its event loop with it.
        self._drain = threading.Thread(target=self._read_log, args=(self.proc.stderr,), daemon=True)
        self._drain.start()
        return self

    @staticmethod
    def _read_log(stream: IO[str]) -> None:
        for _ in stream:
            pass

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def rss_kib(self) -> int:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the daemon has used so far: a cost less moved by other
        work on the machine than a rate is."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def machine() -> str:
    cpu = "unknown cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {system}"
