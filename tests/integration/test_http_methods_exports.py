"""HTTP methods are checked (405 with Allow); exports are streamed and safe in a spreadsheet."""

from __future__ import annotations

import csv
import http.client
import io
import json

from tests.conftest import Client, DaemonProcess, on_every_backend
from tracklog.daemon.exports import csv_cell


def request(daemon: DaemonProcess, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    try:
        conn.request(method, path)
        reply = conn.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read()
    finally:
        conn.close()


async def a_run(client: Client, run: str = "a") -> None:
    ack = await client.append(
        [
            {"type": "run.started", "run": run, "data": {"name": '=HYPERLINK("http://x")', "pipeline": "p"}},
            *[
                {"type": "metrics", "run": run, "data": {"values": {"loss": -0.5 * i, "+m": 1.0}, "step": i}}
                for i in range(3)
            ],
            {
                "type": "item",
                "run": run,
                "data": {
                    "item": "@SUM(1+1)",
                    "kind": "-2+3",
                    "stage": "\tstage",
                    "path": "\rp",
                    "data": "=1+2",
                },
            },
            {"type": "artifact", "run": run, "data": {"kind": "+k", "path": "-1", "metadata": {"=": 1}}},
        ]
    )
    assert ack["accepted"] == 6


# -- methods --------------------------------------------------------------------------------


async def test_every_route_answers_405_with_allow_for_a_method_it_does_not_take(
    daemon: DaemonProcess, client: Client
) -> None:
    await a_run(client)
    for method in ("POST", "DELETE", "PUT", "PATCH"):
        for path in (
            "/api/runs",
            "/api/runs/a",
            "/api/runs/a/metrics",
            "/api/runs/a/items",
            "/api/runs/a/export/csv",
            "/api/stats",
            "/metrics",
            "/healthz",
            "/ws",
            "/",
            "/static/app.js",
        ):
            if (method, path) == ("DELETE", "/api/runs/a"):
                continue  # deleting a run is a route of its own (tests/integration/test_delete.py)
            allowed = "GET, DELETE" if path == "/api/runs/a" else "GET"
            status, headers, body = request(daemon, method, path)
            assert status == 405, (method, path)
            assert headers["Allow"] == allowed, (method, path)
            assert json.loads(body)["error"] == "method_not_allowed"
    # The run is still there: nothing but its own route changes it.
    status, _, _ = request(daemon, "GET", "/api/runs/a")
    assert status == 200
    # An unknown path stays a 404 whatever the method.
    assert request(daemon, "DELETE", "/nope")[0] == 404


# -- CSV formula injection ---------------------------------------------------------------------


def test_csv_cells_that_a_spreadsheet_would_run_get_a_quote_and_numbers_stay_numbers() -> None:
    for text in ("=1+2", "+1+2", "-1+2", "@SUM(A1)", "\tx", "\rx", "-", "+", "=", "-inf", "-1e5x"):
        assert csv_cell(text) == "'" + text
    for text in ("-1", "-1.5", "+2", "-0.25e-3", ".5", "plain", "", "a=b"):
        assert csv_cell(text) == text
    assert csv_cell(-3) == -3


@on_every_backend
async def test_the_csv_export_escapes_user_strings(daemon: DaemonProcess, client: Client) -> None:
    await a_run(client)
    status, headers, body = request(daemon, "GET", "/api/runs/a/export/csv")
    assert status == 200 and headers["Transfer-Encoding"] == "chunked"
    rows = list(csv.DictReader(io.StringIO(body.decode(), newline="")))
    metric_rows = [r for r in rows if r["record"] == "metric"]
    assert {r["name"] for r in metric_rows} == {"'+m", "loss"}
    assert [r["value"] for r in metric_rows if r["name"] == "loss"] == ["-0.0", "-0.5", "-1.0"]  # numbers
    item = next(r for r in rows if r["record"] == "item")
    assert (item["name"], item["kind"], item["stage"], item["path"]) == (
        "'@SUM(1+1)",
        "'-2+3",
        "'\tstage",
        "'\rp",
    )
    assert item["data"] == '"=1+2"'  # JSON text starts with a quote: not a formula
    artifact = next(r for r in rows if r["record"] == "artifact")
    assert (artifact["kind"], artifact["path"]) == ("'+k", "-1")  # "-1" is a plain number


# -- streaming ----------------------------------------------------------------------------------


@on_every_backend
async def test_exports_are_chunked_and_whole(daemon: DaemonProcess, client: Client) -> None:
    events = [
        {
            "type": "metrics",
            "run": "big",
            "data": {"values": {"x": float(i), "y": -float(i)}, "step": i, "epoch": i // 7},
        }
        for i in range(30_000)
    ]
    for start in range(0, len(events), 5000):
        assert (await client.append(events[start : start + 5000]))["accepted"] == 5000
    status, headers, body = request(daemon, "GET", "/api/runs/big/export/json")
    assert status == 200 and headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in headers
    data = json.loads(body)
    x = next(m for m in data["metrics"] if m["name"] == "x")
    assert x["steps"] == list(range(30_000)) and x["values"] == [float(i) for i in range(30_000)]
    assert x["epochs"][:8] == [0] * 7 + [1] and len(x["ts"]) == 30_000 and x["points"] == 30_000
    status, _, body = request(daemon, "GET", "/api/runs/big/export/jsonl")
    lines = body.decode().splitlines()
    assert len(lines) == 1 + 60_000 and json.loads(lines[-1])["value"] == -29_999.0
    status, _, body = request(daemon, "GET", "/api/runs/big/export/xml")
    assert body.count(b"<point ") == 60_000 and body.rstrip().endswith(b"</run>")
    status, _, body = request(daemon, "GET", "/api/runs/big/export/csv")
    assert len(body.decode().splitlines()) == 1 + 60_000
    # Errors found before the body starts are still plain JSON answers.
    assert request(daemon, "GET", "/api/runs/nope/export/csv")[0] == 404
    assert request(daemon, "GET", "/api/runs/big/export/parquet")[0] == 400
