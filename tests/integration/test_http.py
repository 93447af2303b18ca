"""HTTP on the daemon's port: the REST API, exports, Prometheus metrics."""

from __future__ import annotations

import csv
import io
import json
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from typing import Any

from tests.conftest import Client, DaemonProcess, on_every_backend


def get(daemon: DaemonProcess, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(daemon.http + path, timeout=30) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


def get_json(daemon: DaemonProcess, path: str) -> tuple[int, Any]:
    status, _, body = get(daemon, path)
    return status, json.loads(body)


async def two_runs(client: Client) -> None:
    await client.append(
        [
            {
                "type": "run.started",
                "run": "a",
                "ts": 1769817600.0,
                "data": {"name": "alpha", "pipeline": "train", "user": "ann", "config": {"lr": 0.1}},
            },
            {
                "type": "run.started",
                "run": "b/2",
                "ts": 1769904000.0,
                "data": {"name": "beta", "pipeline": "eval"},
            },
            *[
                {
                    "type": "metrics",
                    "run": "a",
                    "data": {"values": {"loss": 1 / (i + 1)}, "step": i, "epoch": i // 2},
                }
                for i in range(4)
            ],
            {
                "type": "item",
                "run": "a",
                "data": {"item": "i1", "kind": "text", "data": {"text": 'a <b> & "c"\x01'}},
            },
            {"type": "artifact", "run": "a", "data": {"kind": "checkpoint", "path": "/c/a.pt"}},
        ]
    )


@on_every_backend
async def test_api_runs_takes_a_filter_simple_fields_a_date_and_a_page(
    daemon: DaemonProcess, client: Client
) -> None:
    await two_runs(client)
    status, body = get_json(daemon, "/api/runs?filter=metrics.loss+%3C+0.5&order_by=name+desc&limit=10")
    assert status == 200 and [r["id"] for r in body["runs"]] == ["a"] and body["total"] == 1
    assert [r["id"] for r in get_json(daemon, "/api/runs?pipeline=eval")[1]["runs"]] == ["b/2"]
    assert [r["id"] for r in get_json(daemon, "/api/runs?user=ann&status=running")[1]["runs"]] == ["a"]
    assert [r["id"] for r in get_json(daemon, "/api/runs?date=2026-02-01")[1]["runs"]] == ["b/2"]
    assert [r["id"] for r in get_json(daemon, "/api/runs?limit=1&offset=1")[1]["runs"]] == ["b/2"]


async def test_a_bad_parameter_is_400_with_a_json_error(daemon: DaemonProcess) -> None:
    for path, words in [
        ("/api/runs?limit=0", "limit: expected 1 to 1000"),
        ("/api/runs?limit=1001", "limit: expected 1 to 1000"),
        ("/api/runs?limit=ten", "limit: expected an integer"),
        ("/api/runs?offset=-1", "offset"),
        ("/api/runs?date=2026-13-01", "date: expected YYYY-MM-DD"),
        ("/api/runs?filter=metrcs.x%3C1", "unknown field 'metrcs.x'"),
        ("/api/runs?order_by=nope", "order_by[0]"),
    ]:
        status, body = get_json(daemon, path)
        assert status == 400, path
        assert body["error"] == "bad_query" and words in body["message"], (path, body)


@on_every_backend
async def test_a_run_its_metrics_and_items_and_a_404_for_an_unknown_run(
    daemon: DaemonProcess, client: Client
) -> None:
    await two_runs(client)
    status, body = get_json(daemon, "/api/runs/a")
    assert (
        status == 200
        and body["run"]["config"] == {"lr": 0.1}
        and body["run"]["metrics"]["loss"]["count"] == 4
    )
    assert get_json(daemon, "/api/runs/b%2F2")[1]["run"]["name"] == "beta"
    status, body = get_json(daemon, "/api/runs/a/metrics?names=loss&max_points=2")
    assert status == 200 and len(body["metrics"][0]["steps"]) == 2
    status, body = get_json(daemon, "/api/runs/a/items")
    assert status == 200 and [i["item"] for i in body["items"]] == ["i1"]
    for path in (
        "/api/runs/nope",
        "/api/runs/nope/metrics",
        "/api/runs/nope/items",
        "/api/runs/nope/export/json",
    ):
        status, body = get_json(daemon, path)
        assert status == 404 and body["error"] == "not_found", path


@on_every_backend
async def test_exports_are_downloads_in_each_format(daemon: DaemonProcess, client: Client) -> None:
    await two_runs(client)
    status, headers, body = get(daemon, "/api/runs/a/export/json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert headers["Content-Disposition"].startswith('attachment; filename="run-a.json"')
    data = json.loads(body)
    assert (
        data["metrics"][0]["values"] == [1.0, 0.5, 1 / 3, 0.25] and data["artifacts"][0]["path"] == "/c/a.pt"
    )
    status, headers, body = get(daemon, "/api/runs/a/export/jsonl")
    assert headers["Content-Type"] == "application/x-ndjson"
    records = [json.loads(line) for line in body.decode().splitlines()]
    assert [r["record"] for r in records] == [
        "run",
        "metric",
        "metric",
        "metric",
        "metric",
        "item",
        "artifact",
    ]
    status, headers, body = get(daemon, "/api/runs/a/export/csv")
    assert headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert [(r["record"], r["step"], r["epoch"]) for r in rows[:2]] == [
        ("metric", "0", "0"),
        ("metric", "1", "0"),
    ]
    assert json.loads(rows[4]["data"]) == {"text": 'a <b> & "c"\x01'}
    status, headers, body = get(daemon, "/api/runs/a/export/xml")
    assert headers["Content-Type"] == "application/xml"
    root = ET.fromstring(body)
    assert root.get("id") == "a" and len(root.findall("./metrics/metric/point")) == 4
    status, headers, body = get(daemon, "/api/runs/b%2F2/export/csv")
    assert status == 200 and 'filename="run-b_2.csv"' in headers["Content-Disposition"]


async def test_an_unknown_export_format_is_400_naming_the_supported_ones(
    daemon: DaemonProcess, client: Client
) -> None:
    await two_runs(client)
    status, body = get_json(daemon, "/api/runs/a/export/parquet")
    assert status == 400 and "json, jsonl, csv, xml" in body["message"]


@on_every_backend
async def test_api_stats_and_prometheus_metrics(daemon: DaemonProcess, client: Client) -> None:
    await two_runs(client)
    status, body = get_json(daemon, "/api/stats")
    assert status == 200 and body["runs"] == 2 and body["daemon"]["connections"] == 1
    status, headers, text = get(daemon, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    lines = text.decode().splitlines()
    assert "tracklog_events_appended_total 8" in lines
    assert "tracklog_appends_total 1" in lines
    assert "tracklog_connections 1" in lines
    assert "tracklog_subscribers 0" in lines
    assert 'tracklog_ack_latency_seconds_bucket{le="+Inf"} 1' in lines
    assert "tracklog_ack_latency_seconds_count 1" in lines
    assert any(line.startswith("tracklog_database_bytes ") and int(line.split()[1]) > 0 for line in lines)


async def test_an_unknown_path_is_a_json_404(daemon: DaemonProcess) -> None:
    status, body = get_json(daemon, "/nope")
    assert status == 404 and body["error"] == "not_found"
