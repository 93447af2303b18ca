"""`tracklog backup DEST`: an online copy while the daemon writes, consistent and complete
up to the seq it names, and never a half database under DEST."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.conftest import Client, DaemonProcess


def tracklog(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracklog", *args], capture_output=True, text=True, timeout=120
    )


async def append_batch(client: Client, start: int) -> list[int]:
    """50 metric events with ids; the seqs they were acked at."""
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
    return list(range(ack["first_seq"], ack["last_seq"] + 1))


async def test_a_backup_taken_while_the_daemon_writes_is_whole_and_verifies(
    daemon: DaemonProcess, client: Client, db_path: Path, tmp_path: Path
) -> None:
    acked = await append_batch(client, 0)
    dest = tmp_path / "copy.db"
    copying = asyncio.create_task(asyncio.to_thread(tracklog, "backup", str(dest), "--db", str(db_path)))
    start = 50
    while not copying.done():  # the daemon keeps writing during the copy
        acked += await append_batch(client, start)
        start += 50
    result = await copying
    assert result.returncode == 0, result.stdout + result.stderr
    head = int(re.search(r"up to seq (\d+)", result.stdout).group(1))  # type: ignore[union-attr]
    assert head >= 50
    with sqlite3.connect(dest) as conn:
        seqs = [seq for (seq,) in conn.execute("SELECT seq FROM events ORDER BY seq")]
    # One consistent state: every event up to the seq it names, gapless, and nothing after.
    assert seqs == list(range(1, head + 1))
    assert set(seqs) <= set(acked)
    verify = tracklog("verify", "--db", str(dest))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert not (tmp_path / "copy.db.partial").exists()


async def test_a_backup_refuses_an_existing_destination_and_leaves_it_untouched(
    daemon: DaemonProcess, client: Client, db_path: Path, tmp_path: Path
) -> None:
    await append_batch(client, 0)
    dest = tmp_path / "taken.db"
    dest.write_text("not yours")
    result = tracklog("backup", str(dest), "--db", str(db_path))
    assert result.returncode == 2 and "exists" in result.stderr
    assert dest.read_text() == "not yours"
