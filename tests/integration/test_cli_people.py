"""The CLI as people use it: piped into head, help texts, times, sql and schema through
the daemon."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.conftest import Client, DaemonProcess
from tracklog.cli_queries import when


def tracklog_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracklog", *args], capture_output=True, text=True, timeout=120, env=env
    )


async def many_items(client: Client, n: int) -> None:
    events = [{"type": "run.started", "run": "r-1", "data": {"name": "piped"}}]
    events += [
        {"type": "item", "run": "r-1", "data": {"item": f"item-{i:05d}", "kind": "translation", "stage": "s"}}
        for i in range(n)
    ]
    assert (await client.append(events))["op"] == "ack"


async def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(
    daemon: DaemonProcess, client: Client
) -> None:
    await many_items(
        client, 3000
    )  # ~200 KB of table: more than a pipe holds, so a write meets the closed end
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracklog", "items", "piped", "--limit", "3000", "--url", daemon.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    assert first.split()[:2] == ["SEQ", "ITEM"]
    proc.stdout.close()  # as `| head -1` does
    code = proc.wait(timeout=120)
    err = proc.stderr.read()
    proc.stderr.close()
    assert code == 0 and err == "", (code, err)


def test_tail_and_watch_help_show_the_tracklog_url_default_like_the_others() -> None:
    env = dict(os.environ, TRACKLOG_URL="ws://example.invalid:9/ws", COLUMNS="200")
    for command in ("tail", "watch", "runs", "sql"):
        text = tracklog_cli(command, "--help", env=env).stdout
        assert "$TRACKLOG_URL or ws://example.invalid:9/ws" in text, (command, text)


def test_times_are_printed_for_people_in_local_iso_8601() -> None:
    ts = 1_796_120_000.0
    expected = dt.datetime.fromtimestamp(ts).astimezone().isoformat(sep=" ", timespec="seconds")
    assert when(ts) == expected and "e+09" not in when(ts)


async def test_stats_prints_times_for_people(daemon: DaemonProcess, client: Client) -> None:
    await many_items(client, 1)
    result = tracklog_cli("stats", "--url", daemon.url)
    assert result.returncode == 0, result.stderr
    [time_line] = [line for line in result.stdout.splitlines() if line.startswith("time ")]
    assert "e+09" not in time_line and dt.datetime.fromisoformat(time_line.split(None, 1)[1].strip())
    assert "LAST ACTIVE" in result.stdout and "piped" in result.stdout


async def test_sql_and_schema_go_through_the_daemon_read_only(
    daemon: DaemonProcess, client: Client, db_path: Path
) -> None:
    await many_items(client, 3)
    url = ["--url", daemon.url]
    ok = tracklog_cli("sql", "SELECT run, name FROM runs ORDER BY run", "--json", *url)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == [{"run": "r-1", "name": "piped"}]
    limited = tracklog_cli("sql", "SELECT item FROM items ORDER BY seq", "--limit", "2", *url)
    assert limited.stdout.splitlines()[-1] == "(first 2 rows; --limit for more)"
    for statement in (
        "DELETE FROM runs",
        "UPDATE runs SET name = 'x'",
        "DROP TABLE runs",
        "ATTACH DATABASE ':memory:' AS x",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA wal_checkpoint",
        "CREATE TABLE t(x)",
        "SELECT 1; DELETE FROM runs",
        "COMMIT",
    ):
        refused = tracklog_cli("sql", statement, *url)
        assert refused.returncode == 1 and "bad_query" in refused.stderr, (statement, refused.stderr)
    assert tracklog_cli("sql", "PRAGMA table_info(runs)", *url).returncode == 0
    # the daemon's reader is still fine after the refusals
    assert json.loads(tracklog_cli("sql", "SELECT count(*) AS n FROM items", "--json", *url).stdout) == [
        {"n": 3}
    ]
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (1,)
    tables = json.loads(tracklog_cli("schema", *url).stdout)
    assert {"name": "run", "type": "TEXT", "notnull": False, "pk": 1} in tables["runs"]
    offline = json.loads(tracklog_cli("schema", "--db", str(db_path)).stdout)
    assert offline == tables
    ddl = tracklog_cli("schema", "--ddl", *url).stdout
    assert "CREATE TABLE runs" in ddl and "CREATE VIRTUAL TABLE search" in ddl
