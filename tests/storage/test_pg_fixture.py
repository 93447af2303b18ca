"""The PostgreSQL fixture finds the server binaries or fails saying what to install (it
never skips), and gives each test a database of its own."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests import pg


def test_without_postgresql_installed_the_fixture_fails_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pg.shutil, "which", lambda name: None)
    monkeypatch.setattr(pg.glob, "glob", lambda pattern: [])
    with pytest.raises(pg.PostgresMissing, match=r"apt-get install -y postgresql"):
        pg.find_bin_dir()


def test_each_test_gets_an_empty_database_of_its_own(pg_server: pg.PgServer, pg_url: str) -> None:
    other = pg_server.create_database()
    try:
        assert other != pg_url
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE mine (a int)")
            (tables,) = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchall()
            assert tables == (1,)
        with psycopg.connect(other, autocommit=True) as conn:
            assert conn.execute("SELECT to_regclass('mine')").fetchone() == (None,)
    finally:
        pg_server.drop_database(other)


def test_a_server_whose_test_process_is_killed_is_stopped_and_deleted() -> None:
    """No teardown runs after a SIGKILL (or a `timeout`'s SIGTERM): the watchdog stops it."""
    script = (
        "import sys; sys.path.insert(0, '.'); from tests.pg import PgServer; s = PgServer().start();"
        " print(s.root, (s.data / 'postmaster.pid').read_text().split()[0], s._watchdog.pid, flush=True);"
        " sys.stdin.read()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        root, pid, watchdog = proc.stdout.readline().split()
        assert Path(root).is_dir() and pid_alive(int(pid))
        exits = [exit_of(int(pid)), exit_of(int(watchdog))]  # before the kill: no pid reuse
        proc.kill()
    # The watchdog stops the server (pg_ctl waits for it), deletes the directory, and ends.
    deadline = time.monotonic() + 60
    for fd in exits:
        if fd is not None:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            os.close(fd)
            assert ready, "the server outlived its test process"
    assert not Path(root).exists()


def exit_of(pid: int) -> int | None:
    """A descriptor that becomes readable when process `pid` ends (None: it has ended)."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
