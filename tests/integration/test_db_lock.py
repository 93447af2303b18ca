"""The database lock: one `serve` per database; rebuild and replay refuse a served one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import Client, DaemonProcess


def tracklog(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracklog", *args], capture_output=True, text=True, timeout=120
    )


async def some_events(client: Client) -> None:
    ack = await client.append(
        [
            {"type": "metrics", "run": "r", "data": {"values": {"loss": 1 / (i + 1)}, "step": i}}
            for i in range(50)
        ]
    )
    assert ack["accepted"] == 50


async def test_rebuild_replay_and_a_second_serve_refuse_a_served_database_naming_its_pid(
    daemon: DaemonProcess, client: Client, db_path: Path
) -> None:
    await some_events(client)
    assert daemon.proc is not None
    pid = str(daemon.proc.pid)
    for args in (
        ("rebuild", "--db", str(db_path)),
        ("replay", "--db", str(db_path), "--to", "10", "--out", str(db_path)),
        ("serve", "--db", str(db_path), "--port", "0"),
    ):
        result = tracklog(*args)
        assert result.returncode != 0, args
        assert f"in use by process {pid}" in result.stderr, (args, result.stderr)
    # The daemon is untouched: it still takes appends, and the tables still equal the log.
    await some_events(client)
    result = tracklog("verify", "--db", str(db_path))
    assert result.returncode == 0, result.stdout + result.stderr


async def test_verify_runs_against_a_running_daemon_while_it_writes(
    daemon: DaemonProcess, client: Client, db_path: Path
) -> None:
    await some_events(client)
    import asyncio

    verify = asyncio.create_task(asyncio.to_thread(tracklog, "verify", "--db", str(db_path)))
    while not verify.done():
        await some_events(client)  # the daemon keeps writing during the verify
    result = await verify
    assert result.returncode == 0, result.stdout + result.stderr
    assert "equal a rebuild" in result.stdout


async def test_the_lock_goes_with_a_killed_daemon(
    daemon: DaemonProcess, client: Client, db_path: Path
) -> None:
    await some_events(client)
    daemon.kill()  # SIGKILL: the OS releases the lock
    result = tracklog("rebuild", "--db", str(db_path))
    assert result.returncode == 0, result.stderr
    second = DaemonProcess(db_path).start()
    try:
        assert tracklog("rebuild", "--db", str(db_path)).returncode != 0
    finally:
        second.stop()
    result = tracklog("verify", "--db", str(db_path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_replay_into_a_new_path_still_works(tmp_path: Path) -> None:
    db = tmp_path / "src.db"
    proc = DaemonProcess(db).start()
    proc.stop()
    result = tracklog("replay", "--db", str(db), "--to", "0", "--out", str(tmp_path / "out.db"))
    assert result.returncode == 0, result.stderr
