"""`tracklog watch` for real: in a tmux pane, against a real daemon, read back with capture-pane."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Client, DaemonProcess

TMUX = shutil.which("tmux")
#: Generous: the pane starts a Python process that connects and draws.
DEADLINE = 30.0
SCREEN_DIR = Path(os.environ.get("TRACKLOG_SCREENSHOTS", "/tmp/tracklog-screenshots"))

pytestmark = [
    pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install tmux)"),
]
pytest.importorskip("rich", reason="rich is not installed (pip install 'tracklog[daemon]')")


class Pane:
    """A detached tmux session on its own server socket, so nothing else is touched."""

    def __init__(self, command: list[str]) -> None:
        assert TMUX is not None
        self.socket = f"tracklog-test-{uuid.uuid4().hex[:12]}"
        self.base = [TMUX, "-L", self.socket, "-f", "/dev/null"]
        env = dict(os.environ, TERM="xterm-256color")
        subprocess.run(
            [*self.base, "new-session", "-d", "-s", "watch", "-x", "140", "-y", "32", shlex.join(command)],
            check=True,
            env=env,
            timeout=30,
        )

    def capture(self) -> str:
        done = subprocess.run(
            [*self.base, "capture-pane", "-p", "-t", "watch"], capture_output=True, text=True, timeout=30
        )
        return done.stdout

    async def wait_for(self, condition: Callable[[str], bool], what: str) -> str:
        deadline = time.monotonic() + DEADLINE
        while True:
            text = self.capture()
            if condition(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"pane never showed {what}:\n{text}")
            await asyncio.sleep(0.1)

    def alive(self) -> bool:
        return (
            subprocess.run(
                [*self.base, "has-session", "-t", "watch"], capture_output=True, timeout=30
            ).returncode
            == 0
        )

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=30)


def line_with(text: str, needle: str) -> str:
    return next((line for line in text.splitlines() if needle in line), "")


def metrics(run: str, start: int, count: int) -> list[dict[str, Any]]:
    return [
        {"type": "metrics", "run": run, "data": {"values": {"loss": 2.0 / (1 + i)}, "step": i}}
        for i in range(start, start + count)
    ]


async def test_watch_in_tmux_shows_runs_as_they_start_grow_and_fail(
    daemon: DaemonProcess, client: Client
) -> None:
    await client.append(
        [{"type": "run.started", "run": "r-before", "data": {"name": "earlier", "pipeline": "etl"}}]
    )
    pane = Pane([sys.executable, "-m", "tracklog", "watch", "--url", daemon.url, "--refresh", "10"])
    try:
        await pane.wait_for(lambda t: "earlier" in t and " live " in t, "the run from the initial query")
        await client.append(
            [
                {"type": "run.started", "run": "r-tmux", "data": {"name": "tmux-run", "pipeline": "etl"}},
                *metrics("r-tmux", 0, 12),
                *[{"type": "item", "run": "r-tmux", "data": {"item": f"i{i}"}} for i in range(8)],
            ]
        )
        # tmux may capture a half-drawn screen: wait for the whole row that is asserted, not one part.
        grown = ("0.1667", "running", "etl", "loss", "▁", "█")
        text = await pane.wait_for(
            lambda t: all(part in line_with(t, "tmux-run") for part in grown), "the run's last loss"
        )
        row = line_with(text, "tmux-run")
        assert all(part in row for part in grown)

        await client.append(
            [
                {"type": "item", "run": "r-tmux", "data": {"status": "failed", "error": "bad input"}},
                {"type": "run.finished", "run": "r-tmux", "data": {"status": "failed", "error": "exploded"}},
            ]
        )
        text = await pane.wait_for(
            lambda t: "(1 failed)" in line_with(t, "tmux-run") and "exploded" in t, "the failure"
        )
        assert "(1 failed)" in line_with(text, "tmux-run") and "exploded" in text
        SCREEN_DIR.mkdir(parents=True, exist_ok=True)
        (SCREEN_DIR / "watch-tmux.txt").write_text(text)

        subprocess.run([*pane.base, "send-keys", "-t", "watch", "C-c"], check=True, timeout=30)
        deadline = time.monotonic() + DEADLINE
        while pane.alive():
            assert time.monotonic() < deadline, "watch did not exit on Ctrl-C"
            await asyncio.sleep(0.1)
    finally:
        pane.close()
