"""Items by stage and kind, and metric means, through the query op, REST and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.conftest import Client, DaemonProcess
from tests.integration.test_http import get_json


async def pipeline_items(client: Client) -> None:
    """Run "a": translate 4 docs (one failed), embed 2; run "b": translate 1 doc."""
    events: list[dict[str, Any]] = [
        {"type": "run.started", "run": "a", "data": {"name": "alpha"}},
        {"type": "run.started", "run": "b", "data": {"name": "beta"}},
    ]
    for i, (duration, status) in enumerate([(1.0, "ok"), (2.0, "ok"), (3.0, "failed"), (10.0, "ok")]):
        events.append(
            {
                "type": "item",
                "run": "a",
                "data": {
                    "item": f"d{i}",
                    "stage": "translate",
                    "kind": "doc",
                    "status": status,
                    "duration": duration,
                },
            }
        )
    events += [
        {"type": "item", "run": "a", "data": {"stage": "embed", "kind": "doc", "duration": 0.5}},
        {"type": "item", "run": "a", "data": {"stage": "embed", "kind": "doc"}},
        {"type": "item", "run": "b", "data": {"stage": "translate", "kind": "doc", "duration": 5.0}},
        {"type": "metrics", "run": "a", "data": {"values": {"loss": 1.0}, "step": 0}},
        {"type": "metrics", "run": "a", "data": {"values": {"loss": 2.0}, "step": 1}},
    ]
    reply = await client.append(events)
    assert reply["accepted"] == len(events)


EMBED_A = {
    "stage": "embed", "kind": "doc", "count": 2, "failed": 0, "timed": 1,
    "total": 0.5, "mean": 0.5, "p50": 0.5, "p95": 0.5,
}  # fmt: skip
TRANSLATE_A = {
    "stage": "translate", "kind": "doc", "count": 4, "failed": 1, "timed": 4,
    "total": 16.0, "mean": 4.0, "p50": 2.0, "p95": 3.0,
}  # fmt: skip
TRANSLATE_ALL = {
    "stage": "translate", "kind": "doc", "count": 5, "failed": 1, "timed": 5,
    "total": 21.0, "mean": 4.2, "p50": 3.0, "p95": 5.0,
}  # fmt: skip


async def test_the_stats_query_reports_items_by_stage_overall_and_per_run(client: Client) -> None:
    await pipeline_items(client)
    [overall] = (await client.query("stats"))["rows"]
    assert overall["stages"] == [EMBED_A, TRANSLATE_ALL]
    [one] = (await client.query("stats", run="a"))["rows"]
    assert one["run"] == "a" and one["items"] == 6 and one["items_by_status"] == {"failed": 1, "ok": 5}
    assert one["stages"] == [EMBED_A, TRANSLATE_A]
    missing = await client.query("stats", run="nope")
    assert missing["code"] == "not_found"
    [run] = (await client.query("run", run="a"))["rows"]
    assert run["metrics"]["loss"]["mean"] == 1.5


async def test_rest_answers_stats_overall_and_per_run(daemon: DaemonProcess, client: Client) -> None:
    await pipeline_items(client)
    status, body = get_json(daemon, "/api/stats")
    assert status == 200 and body["stages"] == [EMBED_A, TRANSLATE_ALL]
    status, body = get_json(daemon, "/api/runs/a/stats")
    assert status == 200 and body["stats"]["stages"] == [EMBED_A, TRANSLATE_A]
    status, body = get_json(daemon, "/api/runs/nope/stats")
    assert status == 404


async def test_cli_stats_prints_the_stage_table_overall_and_for_a_run(
    daemon: DaemonProcess, client: Client
) -> None:
    await pipeline_items(client)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tracklog", "stats", *args, "--url", daemon.url],
            capture_output=True,
            text=True,
            timeout=120,
        )

    result = cli("a")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("STAGE"))
    assert lines[header].split() == ["STAGE", "KIND", "ITEMS", "FAILED", "MEAN", "P50", "P95", "TOTAL"]
    assert lines[header + 2].split() == ["translate", "doc", "4", "1", "4", "2", "3", "16"]
    overall = cli()
    assert overall.returncode == 0 and "translate" in overall.stdout and "runs" in overall.stdout
    as_json = json.loads(cli("a", "--json").stdout)
    assert as_json["stages"][1] == TRANSLATE_A
    assert cli("nope").returncode == 1


async def test_cli_show_prints_each_metric_mean(daemon: DaemonProcess, client: Client) -> None:
    await pipeline_items(client)
    result = subprocess.run(
        [sys.executable, "-m", "tracklog", "show", "a", "--url", daemon.url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("METRIC"))
    assert lines[header].split()[:4] == ["METRIC", "COUNT", "LAST", "MEAN"]
    assert lines[header + 1].split()[:4] == ["loss", "2", "2", "1.5"]
