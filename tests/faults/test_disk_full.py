"""A real full disk under a real daemon: it says so, stops acking, keeps what it acked, recovers.

The database lives on a small tmpfs mounted for the test, and a filler file takes the
rest of its space. Mounting needs root (CI runs as root); without it the test skips, and
tests/daemon/test_writer.py::test_a_full_disk_is_disk_full_logged_once_reported_and_recovered_from
covers the store through SQLite's `max_page_count`. As root, a mount that fails is a
failure, not a skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Client, DaemonProcess, open_client

FS_SIZE = "24m"
#: Appends tried before the disk must have filled up (each is about 400 kB of items).
MAX_APPENDS = 400
ITEM_TEXT = "x" * 2000
EVENTS_PER_APPEND = 200


@contextlib.contextmanager
def small_filesystem() -> Iterator[Path]:
    """A fresh tmpfs of FS_SIZE, unmounted (and its folder removed) afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the store's own disk-full test covers the rest")
    folder = Path(tempfile.mkdtemp(prefix="tracklog-full-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE},mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    assert mounted.returncode == 0, f"root, yet mount failed: {mounted.stderr}"
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
        folder.rmdir()


def fill(path: Path) -> int:
    """Write path until the filesystem has no room left; the bytes written."""
    chunk = b"\0" * 65536
    written = 0
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk) or 0
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                # Smaller pieces take the last bytes too.
                if len(chunk) == 1:
                    return written
                chunk = chunk[: len(chunk) // 16 or 1]


def healthz(http: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(http + "/healthz", timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Appender:
    """Sends appends of big items with ids of its own; keeps the ids of every acked event."""

    def __init__(self, client: Client, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.sent = 0
        self.acked: set[str] = set()

    async def append(self) -> dict[str, Any]:
        events = [
            {
                "id": f"{self.prefix}-{self.sent + i}",
                "type": "item",
                "run": self.prefix,
                "data": {"stage": "s", "data": {"text": ITEM_TEXT}},
            }
            for i in range(EVENTS_PER_APPEND)
        ]
        self.sent += EVENTS_PER_APPEND
        reply: dict[str, Any] = await self.client.append(events)
        if reply["op"] == "ack":
            assert reply["accepted"] == EVENTS_PER_APPEND and not reply.get("rejected"), reply
            self.acked.update(e["id"] for e in events)
        return reply

    async def until_disk_full(self) -> dict[str, Any]:
        for _ in range(MAX_APPENDS):
            reply = await self.append()
            if reply["op"] == "error":
                return reply
        raise AssertionError(f"{MAX_APPENDS} appends acked on a full {FS_SIZE} filesystem")


def stored_ids(db: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [row[0] for row in conn.execute("SELECT id FROM events WHERE id IS NOT NULL")]
    finally:
        conn.close()


async def test_a_full_disk_is_reported_refused_lossless_and_recovered_from() -> None:
    with small_filesystem() as fs:
        db = fs / "tracklog.db"
        filler = fs / "filler"
        daemon = DaemonProcess(db).start()
        try:
            client, _ = await open_client(daemon.url)
            appender = Appender(client, "full")
            assert (await appender.append())["op"] == "ack"
            await asyncio.to_thread(fill, filler)

            # Full: the daemon refuses with disk_full, says so on /healthz, and keeps refusing.
            refused = await appender.until_disk_full()
            assert refused["code"] == "disk_full" and "full" in refused["message"], refused
            for _ in range(3):
                again = await appender.append()
                assert again["op"] == "error" and again["code"] == "disk_full", again
            status, body = await asyncio.to_thread(healthz, daemon.http)
            assert status == 503 and body["status"] == "disk_full", body
            assert any("disk full" in line for line in daemon.log)

            # Space returns: the next append is acked and the daemon is healthy again.
            filler.unlink()
            ack = await appender.append()
            assert ack["op"] == "ack", ack
            assert await asyncio.to_thread(healthz, daemon.http) == (
                200,
                {"status": "ok", "head": ack["last_seq"]},
            )

            # Full again, and this time the daemon is killed while full: nothing acked is lost.
            await asyncio.to_thread(fill, filler)
            assert (await appender.until_disk_full())["code"] == "disk_full"
            await client.ws.close()
            daemon.kill()
            filler.unlink()
            daemon.start()
            client, _ = await open_client(daemon.url)
            after = Appender(client, "after")
            assert (await after.append())["op"] == "ack"
            assert daemon.stop() == 0
        finally:
            daemon.kill()
        ids = stored_ids(db)
        assert len(ids) == len(set(ids))
        assert appender.acked | after.acked <= set(ids)
        assert not {i for i in ids if i.startswith("full-")} - appender.acked, "an event refused yet stored"
        verify = subprocess.run(
            [sys.executable, "-m", "tracklog", "verify", "--db", str(db)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
