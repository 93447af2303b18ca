"""`tracklog log export` beside a running daemon (read-only, one consistent log up to the
head it began at) and `log import` / `migrate` refused while the daemon holds the database."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import Client, DaemonProcess


def tracklog(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "tracklog", *args], input=stdin, capture_output=True, timeout=120
    )


async def append_batch(client: Client, start: int) -> None:
    ack = await client.append(
        [
            {
                "id": f"b-{i}",
                "type": "metrics",
                "run": "r",
                "data": {"values": {"loss": 1 / (i + 1)}, "step": i},
            }
            for i in range(start, start + 50)
        ]
    )
    assert ack["accepted"] == 50


async def test_an_export_while_the_daemon_writes_is_the_log_up_to_a_seq_and_imports_whole(
    daemon: DaemonProcess, client: Client, db_path: Path, tmp_path: Path
) -> None:
    await append_batch(client, 0)
    exporting = asyncio.create_task(asyncio.to_thread(tracklog, "log", "export", str(db_path)))
    start = 50
    while not exporting.done():  # the daemon keeps writing during the export
        await append_batch(client, start)
        start += 50
    result = await exporting
    assert result.returncode == 0, result.stderr
    head = int(re.search(rb"head was (\d+)", result.stderr).group(1))  # type: ignore[union-attr]
    lines = result.stdout.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(1, head + 1))
    assert [json.loads(line)["id"] for line in lines] == [f"b-{i}" for i in range(head)]

    copy = tmp_path / "copy.db"
    imported = tracklog("log", "import", str(copy), stdin=result.stdout)
    assert imported.returncode == 0, imported.stderr
    assert f"imported {head} events".encode() in imported.stderr
    again = tracklog("log", "import", str(copy), stdin=result.stdout)
    assert b"imported 0 events" in again.stderr
    assert tracklog("verify", "--db", str(copy)).returncode == 0
    assert tracklog("log", "export", str(copy)).stdout == result.stdout


async def test_an_import_or_a_migration_into_a_served_database_is_refused_naming_the_daemon(
    daemon: DaemonProcess, client: Client, db_path: Path, tmp_path: Path
) -> None:
    await append_batch(client, 0)
    exported = tracklog("log", "export", str(db_path)).stdout
    refused = tracklog("log", "import", str(db_path), stdin=exported)
    assert refused.returncode == 2
    assert b"in use by process" in refused.stderr and b"needs the daemon stopped" in refused.stderr
    source = tmp_path / "other.db"
    assert tracklog("log", "import", str(source), stdin=exported).returncode == 0
    migrating = tracklog("migrate", str(source), str(db_path))
    assert migrating.returncode == 2 and b"needs the target's daemon stopped" in migrating.stderr
    purging = tracklog("purge", "--older-than", "0", "--db", str(db_path))
    assert purging.returncode == 2 and b"needs the daemon stopped" in purging.stderr
    assert f"in use by process {daemon.proc.pid}".encode() in purging.stderr  # type: ignore[union-attr]
    # The daemon's own database can be the source of a migration while it runs.
    copied = tracklog("migrate", str(db_path), str(tmp_path / "copy.db"))
    assert copied.returncode == 0, copied.stdout + copied.stderr
