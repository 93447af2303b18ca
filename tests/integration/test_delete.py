"""Deleting and restoring runs, and naming runs by id prefix or name, end to end: the
Python client, the CLI and the REST API against a real daemon."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import tracklog
from tests.conftest import Client, DaemonProcess
from tracklog.protocol import errors


def tracklog_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracklog", *args], capture_output=True, text=True, timeout=120
    )


def http(
    daemon: DaemonProcess, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    request = urllib.request.Request(daemon.http + path, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


async def lost_and_live_runs(client: Client) -> None:
    reply = await client.append(
        [
            {"type": "run.started", "run": "0190aaaa-1111", "data": {"name": "baseline"}},
            {"type": "metrics", "run": "0190aaaa-1111", "data": {"values": {"loss": 0.1}}},
            {"type": "run.finished", "run": "0190aaaa-1111", "data": {"status": "lost"}},
            {"type": "run.started", "run": "0190bbbb-2222", "data": {"name": "tuned"}},
            {"type": "metrics", "run": "0190bbbb-2222", "data": {"values": {"loss": 0.2}}},
            {"type": "run.finished", "run": "0190bbbb-2222", "data": {"status": "completed"}},
        ]
    )
    assert reply["op"] == "ack", reply


async def test_the_client_deletes_and_restores_a_run_by_name_keeping_it_lost(
    daemon: DaemonProcess, client: Client, tmp_path: Path
) -> None:
    await lost_and_live_runs(client)
    with tracklog.connect(daemon.url, spool_dir=tmp_path / "spool") as tl:
        assert tl.delete_run("baseline") == "0190aaaa-1111"
        assert [r["id"] for r in tl.runs()] == ["0190bbbb-2222"]
        assert [r["id"] for r in tl.runs(deleted=True)] == ["0190aaaa-1111", "0190bbbb-2222"]
        assert tl.best("loss")["run"] == "0190bbbb-2222"
        assert tl.get_run("0190a")["status"] == "lost"  # a deleted lost run stays lost
        assert tl.restore_run("0190a") == "0190aaaa-1111"
        run = tl.get_run("0190aaaa-1111")
        assert (run["status"], run["deleted"]) == ("lost", False)
        assert tl.best("loss")["run"] == "0190aaaa-1111"
        with pytest.raises(errors.BadQuery, match="ambiguous"):
            tl.delete_run("0190")
        with pytest.raises(errors.NotFound):
            tl.delete_run("nope")
    types = [e["type"] for e in (await client.query("events", run="0190aaaa-1111"))["rows"]]
    assert types[-2:] == ["run.deleted", "run.restored"]


async def test_the_cli_deletes_restores_and_takes_prefixes_and_names(
    daemon: DaemonProcess, client: Client
) -> None:
    await lost_and_live_runs(client)
    url = ["--url", daemon.url]
    deleted = tracklog_cli("delete", "tuned", *url)
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.strip() == "deleted 0190bbbb-2222 (tuned)"
    assert "0190bbbb" not in tracklog_cli("runs", *url).stdout
    assert "0190bbbb" in tracklog_cli("runs", "--deleted", *url).stdout
    shown = tracklog_cli("show", "0190b", *url)
    assert "deleted" in shown.stdout and "completed" in shown.stdout
    refused = tracklog_cli("compare", "baseline", "tuned", *url)
    assert refused.returncode == 1 and "is deleted" in refused.stderr
    assert tracklog_cli("restore", "0190b", *url).stdout.strip() == "restored 0190bbbb-2222 (tuned)"
    compared = tracklog_cli("compare", "0190a", "tuned", *url)
    assert compared.returncode == 0, compared.stderr
    header, *rows = compared.stdout.splitlines()
    assert header.split()[:3] == ["RUN", "NAME", "METRIC"]
    assert [row.split()[:2] for row in rows] == [["0190aaaa-1111", "baseline"], ["0190bbbb-2222", "tuned"]]
    ambiguous = tracklog_cli("show", "0190", *url)
    assert ambiguous.returncode == 1 and "0190aaaa-1111 (baseline)" in ambiguous.stderr


async def test_a_shared_name_takes_the_latest_run_and_says_so(daemon: DaemonProcess, client: Client) -> None:
    await lost_and_live_runs(client)
    await client.append([{"type": "run.started", "run": "0190cccc-3333", "data": {"name": "baseline"}}])
    shown = tracklog_cli("show", "baseline", "--url", daemon.url, "--json")
    assert json.loads(shown.stdout)["id"] == "0190cccc-3333"
    assert "2 runs are named 'baseline'; using the latest, 0190cccc-3333" in shown.stderr


async def test_rest_delete_and_restore(daemon: DaemonProcess, client: Client) -> None:
    await lost_and_live_runs(client)
    status, body = http(daemon, "DELETE", "/api/runs/baseline")
    assert status == 200 and body["run"] == "0190aaaa-1111" and body["deleted"] is True
    assert [r["id"] for r in http(daemon, "GET", "/api/runs")[1]["runs"]] == ["0190bbbb-2222"]
    status, body = http(daemon, "GET", "/api/runs/0190a")
    assert status == 200 and (body["run"]["status"], body["run"]["deleted"]) == ("lost", True)
    status, body = http(daemon, "POST", "/api/runs/0190aaaa-1111/restore")
    assert status == 200 and body["deleted"] is False
    assert len(http(daemon, "GET", "/api/runs")[1]["runs"]) == 2
    assert http(daemon, "GET", "/api/runs/0190a")[1]["run"]["status"] == "lost"
    assert http(daemon, "DELETE", "/api/runs/nope")[0] == 404
    assert http(daemon, "PUT", "/api/runs/0190a")[0] == 405
    status, body = http(daemon, "DELETE", "/api/runs/tuned", {"Origin": "http://evil.example"})
    assert status == 403 and body["error"] == "forbidden"
    assert len(http(daemon, "GET", "/api/runs")[1]["runs"]) == 2
