"""Tracker's questions and the CLI for people, against a real daemon."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import tracklog
from tests.conftest import Client, DaemonProcess
from tracklog.cli_queries import sparkline
from tracklog.daemon.storage.sqlite.readonly import read_only_authorizer


def tracklog_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracklog", *args], capture_output=True, text=True, timeout=120
    )


async def some_runs(client: Client) -> None:
    await client.append(
        [
            {
                "type": "run.started",
                "run": "a",
                "data": {"name": "alpha", "pipeline": "train", "tags": ["base"]},
            },
            {"type": "run.started", "run": "b", "data": {"name": "beta", "pipeline": "train"}},
            *[
                {"type": "metrics", "run": r, "data": {"values": {"loss": v}, "step": i, "epoch": 0}}
                for r, vals in (("a", [3.0, 2.0, 1.0]), ("b", [5.0, 0.5, 4.0]))
                for i, v in enumerate(vals)
            ],
            {
                "type": "item",
                "run": "a",
                "data": {"item": "i1", "kind": "caption", "data": "a quick brown fox"},
            },
            {"type": "artifact", "run": "a", "data": {"kind": "plot", "path": "/p/loss.png"}},
        ]
    )


async def test_tracker_questions_return_plain_objects(
    daemon: DaemonProcess, client: Client, tmp_path: Path
) -> None:
    await some_runs(client)
    with tracklog.connect(daemon.url, spool_dir=tmp_path / "spool") as tracker:
        runs = tracker.runs(filter="metrics.loss < 5", order_by="metrics.loss desc")
        assert [r["id"] for r in runs] == ["b", "a"] and runs.total == 2 and runs.seq == 10
        assert tracker.get_run("a")["tags"] == ["base"]
        histories = tracker.metrics("b", max_points=2)
        assert histories["loss"]["values"] == [5.0, 4.0]  # the first and the last are always kept
        assert histories["loss"]["summary"]["min"] == 0.5 and histories["loss"]["points"] == 3
        assert [(r["run"], r["min"]) for r in tracker.compare(["a", "b"])] == [("a", 1.0), ("b", 0.5)]
        assert tracker.best("loss")["run"] == "b" and tracker.best("loss", mode="max")["value"] == 5.0
        assert [i["item"] for i in tracker.items("a")] == ["i1"]
        assert [a["path"] for a in tracker.artifacts("a")] == ["/p/loss.png"]
        assert [r["kind"] for r in tracker.search("foxes")] == ["item"]
        assert len(tracker.events(from_seq=8)) == 2
        assert tracker.daemon_stats()["runs"] == 2
        with pytest.raises(tracklog.protocol.errors.NotFound):
            tracker.get_run("nope")
        with pytest.raises(tracklog.protocol.errors.BadQuery, match="at 0"):
            tracker.runs(filter="nope = 1")


async def test_cli_tables_and_json(daemon: DaemonProcess, client: Client) -> None:
    await some_runs(client)
    url = ["--url", daemon.url]
    result = tracklog_cli("runs", *url, "--order-by", "name desc")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATUS", "PIPELINE", "STARTED", "METRICS"]
    assert [line.split()[0] for line in lines[1:3]] == ["b", "a"]
    assert json.loads(tracklog_cli("runs", *url, "--json").stdout)["total"] == 2
    assert "alpha" in tracklog_cli("show", "a", *url).stdout
    plot = tracklog_cli("metrics", "a", *url, "--plot").stdout
    assert "█" in plot and "▁" in plot
    assert "step 1" in tracklog_cli("compare", "a", "b", *url).stdout
    assert "beta" in tracklog_cli("best", "loss", *url).stdout
    assert "i1" in tracklog_cli("items", "a", *url).stdout
    assert "[fox]" in tracklog_cli("search", "fox", *url).stdout
    assert json.loads(tracklog_cli("stats", *url, "--json").stdout)["runs"] == 2
    bad = tracklog_cli("runs", *url, "--filter", "status = ")
    assert bad.returncode == 1 and "bad_query" in bad.stderr


async def test_cli_export_writes_a_file(daemon: DaemonProcess, client: Client, tmp_path: Path) -> None:
    await some_runs(client)
    out = tmp_path / "a.csv"
    result = tracklog_cli("export", "a", "--url", daemon.url, "--format", "csv", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_text().splitlines()[0].startswith("record,run,name,step")
    missing = tracklog_cli("export", "nope", "--url", daemon.url)
    assert missing.returncode == 1 and "no run" in missing.stderr


async def test_cli_sql_reads_and_refuses_writes_attach_and_pragma_changes(
    client: Client, db_path: Path
) -> None:
    await some_runs(client)
    ok = tracklog_cli("sql", "--db", str(db_path), "SELECT run, name FROM runs ORDER BY run", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == [{"run": "a", "name": "alpha"}, {"run": "b", "name": "beta"}]
    for statement in (
        "DELETE FROM runs",
        "UPDATE runs SET name = 'x'",
        "DROP TABLE runs",
        "ATTACH DATABASE ':memory:' AS x",
        "PRAGMA journal_mode = DELETE",
        "CREATE TABLE t(x)",
        "SELECT 1; DELETE FROM runs",
    ):
        refused = tracklog_cli("sql", "--db", str(db_path), statement)
        assert refused.returncode != 0, statement
    assert tracklog_cli("sql", "--db", str(db_path), "PRAGMA table_info(runs)").returncode == 0
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (2,)


async def test_cli_schema_lists_tables_and_ddl(client: Client, db_path: Path) -> None:
    await some_runs(client)
    tables = json.loads(tracklog_cli("schema", "--db", str(db_path)).stdout)
    assert {"events", "runs", "metric_chunks", "search_docs"} <= set(tables)
    assert {"name": "run", "type": "TEXT", "notnull": False, "pk": 1} in tables["runs"]
    ddl = tracklog_cli("schema", "--db", str(db_path), "--ddl").stdout
    assert "CREATE TABLE runs" in ddl and "CREATE VIRTUAL TABLE search" in ddl


def test_the_authorizer_allows_reads_and_denies_everything_else() -> None:
    assert read_only_authorizer(sqlite3.SQLITE_SELECT, None, None, None, None) == sqlite3.SQLITE_OK
    assert read_only_authorizer(sqlite3.SQLITE_PRAGMA, "user_version", None, None, None) == sqlite3.SQLITE_OK
    assert read_only_authorizer(sqlite3.SQLITE_PRAGMA, "user_version", "3", None, None) == sqlite3.SQLITE_DENY
    assert read_only_authorizer(sqlite3.SQLITE_ATTACH, ":memory:", None, None, None) == sqlite3.SQLITE_DENY
    assert read_only_authorizer(sqlite3.SQLITE_INSERT, "runs", None, "main", None) == sqlite3.SQLITE_DENY


def test_a_sparkline_keeps_a_spike_and_spans_the_range() -> None:
    line = sparkline([1.0] * 500 + [9.0] + [1.0] * 499 + [float("nan")], width=20)
    assert len(line) == 20 and line.count("█") == 1 and set(line) == {"▁", "█"}


async def test_cli_metrics_shows_the_true_last_value_and_refuses_an_unknown_name(
    daemon: DaemonProcess, client: Client
) -> None:
    """LAST and LAST STEP come from the summary, not from the downsampled history."""
    values = [float(i % 97) for i in range(5000)]
    await client.append(
        [
            {"type": "metrics", "run": "m", "data": {"values": {"v": v}, "step": i}}
            for i, v in enumerate(values)
        ]
    )
    result = tracklog_cli("metrics", "m", "--url", daemon.url, "--max-points", "5")
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()[:2]
    assert header.split() == ["METRIC", "POINTS", "LAST", "STEP", "LAST", "MIN", "MAX"]
    assert row.split() == ["v", "5000", "4999", "52", "0", "96"]  # 4999 % 97 == 52
    missing = tracklog_cli("metrics", "m", "--url", daemon.url, "--names", "v,nope")
    assert missing.returncode == 1 and "not_found" in missing.stderr and "'nope'" in missing.stderr


async def test_cli_schema_through_the_daemon_matches_the_file(
    daemon: DaemonProcess, client: Client, db_path: Path
) -> None:
    await some_runs(client)
    asked = tracklog_cli("schema", "--url", daemon.url)
    assert asked.returncode == 0, asked.stderr
    assert json.loads(asked.stdout) == json.loads(tracklog_cli("schema", "--db", str(db_path)).stdout)
    ddl = tracklog_cli("schema", "--url", daemon.url, "--ddl").stdout
    assert ddl == tracklog_cli("schema", "--db", str(db_path), "--ddl").stdout


def test_cli_sql_on_a_missing_file_says_so(tmp_path: Path) -> None:
    missing = tracklog_cli("sql", "--db", str(tmp_path / "absent.db"), "SELECT 1")
    assert missing.returncode == 2 and "no database" in missing.stderr


@pytest.mark.parametrize("backend_db", ["postgresql"], indirect=True)
async def test_cli_sql_and_schema_read_a_postgresql_database_offline(
    daemon: DaemonProcess, client: Client, backend_db: str
) -> None:
    await some_runs(client)
    ok = tracklog_cli("sql", "--db", backend_db, "SELECT run, name FROM runs ORDER BY run", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == [{"run": "a", "name": "alpha"}, {"run": "b", "name": "beta"}]
    for statement in ("DELETE FROM runs", "SELECT pg_read_file('/etc/passwd')", "SELECT 1; DELETE FROM runs"):
        refused = tracklog_cli("sql", "--db", backend_db, statement)
        assert refused.returncode == 1 and refused.stderr.startswith("tracklog sql: sql: "), statement
    tables = json.loads(tracklog_cli("schema", "--db", backend_db).stdout)
    assert {"name": "run", "type": "TEXT", "notnull": True, "pk": 1} in tables["runs"]
    assert json.loads(tracklog_cli("schema", "--url", daemon.url).stdout) == tables
    unreachable = tracklog_cli("sql", "--db", "postgresql://127.0.0.1:1/none", "SELECT 1")
    assert unreachable.returncode == 1 and "cannot connect" in unreachable.stderr
