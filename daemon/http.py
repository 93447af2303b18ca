"""HTTP on the daemon's port: the REST API, run exports, and Prometheus metrics.

Served from the websockets server's `process_request` hook (no second server). Every
answer that reads the database runs on the Readers pool, so the event loop never waits
on SQLite; parameters are checked here and turned into the same `Query` the WebSocket
protocol uses, so both paths share one implementation and one set of errors.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import os
import re
import sqlite3
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import parse_qs, quote, unquote, urlsplit

import msgspec
from tracklog.protocol import errors
from tracklog.protocol.events import finite_floats_as_strings
from tracklog.protocol.messages import Query
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from . import reads
from .filters import compile_filter
from .queries import query_run
from .webconsole import console_response, is_console_path

_json = msgspec.json.Encoder()

EXPORT_TYPES: Final = {
    "json": "application/json",
    "jsonl": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "xml": "application/xml",
}
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


class BadParameter(errors.BadQuery):
    """A URL parameter that is not what the endpoint takes (400)."""


def json_response(status: HTTPStatus, body: Any) -> Response:
    payload = _json.encode(finite_floats_as_strings(msgspec.to_builtins(body)))
    return _response(status, payload, "application/json")


def _response(
    status: HTTPStatus, payload: bytes, content_type: str, extra: Sequence[tuple[str, str]] = ()
) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(payload))),
            ("Cache-Control", "no-store"),
            *extra,
        ]
    )
    return Response(status.value, status.phrase, headers, payload)


def error_response(exc: errors.ProtocolError) -> Response:
    status = {
        errors.NOT_FOUND: HTTPStatus.NOT_FOUND,
        errors.BAD_QUERY: HTTPStatus.BAD_REQUEST,
        errors.BAD_MESSAGE: HTTPStatus.BAD_REQUEST,
    }.get(exc.code, HTTPStatus.INTERNAL_SERVER_ERROR)
    return json_response(status, {"error": exc.code, "message": exc.message})


# -- parameters -------------------------------------------------------------------------


class Params:
    """URL query parameters, read with checks that raise BadParameter naming the parameter."""

    def __init__(self, query: str) -> None:
        try:
            self.values = parse_qs(query, keep_blank_values=True, strict_parsing=False, max_num_fields=200)
        except ValueError as exc:
            raise BadParameter(f"query string: {exc}") from None

    def text(self, name: str) -> str | None:
        values = self.values.get(name)
        return values[-1] if values else None

    def texts(self, name: str) -> list[str] | None:
        """A list given as repeated parameters, or comma-separated in one."""
        values = self.values.get(name)
        if not values:
            return None
        return [part for value in values for part in value.split(",") if part]

    def integer(self, name: str, low: int | None = None, high: int | None = None) -> int | None:
        value = self.text(name)
        if value is None or value == "":
            return None
        try:
            number = int(value)
        except ValueError:
            raise BadParameter(f"{name}: expected an integer, got '{value[:40]}'") from None
        if (low is not None and number < low) or (high is not None and number > high):
            span = f"{low} to {high}" if high is not None else f"{low} or more"
            raise BadParameter(f"{name}: expected {span}, got {number}")
        return number


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def runs_query(params: Params) -> Query:
    """The `runs` query an /api/runs URL asks for: filter, order_by, page and simple fields."""
    text = params.text("filter")
    if text is not None:
        compile_filter(text)  # report positions in the caller's filter, before it is combined
    clauses = [f"({text})"] if text and text.strip() else []
    for name in ("pipeline", "status", "user", "session"):
        value = params.text(name)
        if value is not None:
            clauses.append(f"{name} = {_quoted(value)}")
    date = params.text("date")
    if date is not None:
        try:
            day = dt.date.fromisoformat(date)
        except ValueError:
            raise BadParameter(f"date: expected YYYY-MM-DD, got '{date[:40]}'") from None
        clauses.append(
            f"started >= {_quoted(day.isoformat())}"
            f" and started < {_quoted((day + dt.timedelta(days=1)).isoformat())}"
        )
    order_by = params.texts("order_by")
    if order_by:
        compile_filter(None, order_by)
    return Query(
        q="runs",
        filter=" and ".join(clauses) or None,
        order_by=order_by,
        limit=params.integer("limit", 1, reads.MAX_RUNS),
        offset=params.integer("offset", 0),
        deleted=params.text("deleted") in ("1", "true", "yes"),
    )


# -- exports ----------------------------------------------------------------------------


def gather_export(conn: sqlite3.Connection, run: str) -> dict[str, Any]:
    """A run with its full metric histories, items and artifacts, from one read transaction."""
    conn.execute("BEGIN")
    try:
        summary = dict(query_run(conn, Query(q="run", run=run))[0][0])
        metrics = reads.query_metrics(conn, Query(q="metrics", run=run))[0]
        items: list[Any] = []
        while True:
            page = reads.query_items(
                conn, Query(q="items", run=run, limit=reads.MAX_ITEMS, offset=len(items))
            )[0]
            items.extend(page)
            if len(page) < reads.MAX_ITEMS:
                break
        artifacts = reads.artifact_rows(conn, run)
    finally:
        conn.execute("COMMIT")
    summary.pop("artifacts", None)
    return {"run": summary, "metrics": metrics, "items": items, "artifacts": artifacts}


def _plain(value: Any) -> Any:
    return finite_floats_as_strings(msgspec.to_builtins(value))


def export_json(data: dict[str, Any]) -> bytes:
    return _json.encode(_plain(data))


def export_jsonl(data: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    run_id = data["run"]["id"]
    out.write(_json.encode(_plain({"record": "run", **data["run"]})) + b"\n")
    for series in data["metrics"]:
        for step, value, epoch, ts in zip(
            series["steps"], series["values"], series["epochs"], series["ts"], strict=True
        ):
            out.write(
                _json.encode(
                    _plain(
                        {
                            "record": "metric",
                            "run": run_id,
                            "name": series["name"],
                            "step": step,
                            "epoch": epoch,
                            "value": value,
                            "ts": ts,
                        }
                    )
                )
                + b"\n"
            )
    for item in data["items"]:
        out.write(_json.encode(_plain({"record": "item", **item})) + b"\n")
    for artifact in data["artifacts"]:
        out.write(_json.encode(_plain({"record": "artifact", **artifact})) + b"\n")
    return out.getvalue()


CSV_COLUMNS: Final = (
    "record",
    "run",
    "name",
    "step",
    "epoch",
    "value",
    "ts",
    "kind",
    "stage",
    "status",
    "path",
    "data",
)


def export_csv(data: dict[str, Any]) -> bytes:
    """One table: a row per metric point, then per item and artifact (`record` says which)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    run_id = data["run"]["id"]
    for series in data["metrics"]:
        for step, value, epoch, ts in zip(
            series["steps"], series["values"], series["epochs"], series["ts"], strict=True
        ):
            writer.writerow(
                (
                    "metric",
                    run_id,
                    series["name"],
                    step,
                    "" if epoch is None else epoch,
                    repr(value),
                    repr(ts),
                    "",
                    "",
                    "",
                    "",
                    "",
                )
            )
    for item in data["items"]:
        writer.writerow(
            (
                "item",
                run_id,
                item["item"] or "",
                item["iteration"] or "",
                "",
                item["duration"] or "",
                repr(item["ts"]),
                item["kind"] or "",
                item["stage"] or "",
                item["status"],
                item["path"] or "",
                "" if item["data"] is None else _json.encode(_plain(item["data"])).decode(),
            )
        )
    for art in data["artifacts"]:
        writer.writerow(
            (
                "artifact",
                run_id,
                art["digest"] or "",
                "",
                "",
                art["size"] if art["size"] is not None else "",
                repr(art["ts"]),
                art["kind"],
                "",
                "",
                art["path"],
                "" if art["metadata"] is None else _json.encode(_plain(art["metadata"])).decode(),
            )
        )
    return out.getvalue().encode()


def _xml_text(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if not isinstance(value, str):
        value = _json.encode(_plain(value)).decode()
    return _XML_BAD.sub("\ufffd", value)


def export_xml(data: dict[str, Any]) -> bytes:
    run = data["run"]
    root = ET.Element("run", {"id": _xml_text(run["id"])})
    for key, value in run.items():
        if key in ("id", "metrics") or value is None:
            continue
        ET.SubElement(root, "field", {"name": key}).text = _xml_text(value)
    metrics = ET.SubElement(root, "metrics")
    for series in data["metrics"]:
        node = ET.SubElement(metrics, "metric", {"name": _xml_text(series["name"])})
        for step, value, epoch, ts in zip(
            series["steps"], series["values"], series["epochs"], series["ts"], strict=True
        ):
            attrs = {"step": str(step), "value": repr(value), "ts": repr(ts)}
            if epoch is not None:
                attrs["epoch"] = str(epoch)
            ET.SubElement(node, "point", attrs)
    items = ET.SubElement(root, "items")
    for item in data["items"]:
        ET.SubElement(items, "item", {k: _xml_text(v) for k, v in item.items() if v is not None})
    artifacts = ET.SubElement(root, "artifacts")
    for art in data["artifacts"]:
        ET.SubElement(artifacts, "artifact", {k: _xml_text(v) for k, v in art.items() if v is not None})
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(
        root, encoding="utf-8", xml_declaration=False
    )


EXPORTERS: Final[dict[str, Callable[[dict[str, Any]], bytes]]] = {
    "json": export_json,
    "jsonl": export_jsonl,
    "csv": export_csv,
    "xml": export_xml,
}


def content_disposition(run: str, fmt: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", run)[:100] or "run"
    encoded = quote(f"run-{run}.{fmt}", safe="")
    return f"attachment; filename=\"run-{safe}.{fmt}\"; filename*=UTF-8''{encoded}"


# -- the router -------------------------------------------------------------------------


class HttpApi:
    """Answers the HTTP paths of PROTOCOL.md; `daemon` gives readers, writer, hub and counts."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon

    async def respond(self, request: Request) -> Response:
        parts = urlsplit(request.path)
        path = parts.path
        try:
            params = Params(parts.query)
            if is_console_path(path):
                page = console_response(path, params.text("token"))
                if page is not None:
                    return page
            if path == "/metrics":
                return _response(
                    HTTPStatus.OK, self.prometheus().encode(), "text/plain; version=0.0.4; charset=utf-8"
                )
            if path == "/api/stats":
                result = await self.daemon.readers.query(Query(q="stats"))
                row = dict(result.rows[0])
                row["daemon"] = self.daemon_stats()
                return json_response(HTTPStatus.OK, row)
            if path in ("/api/runs", "/api/runs/"):
                result = await self.daemon.readers.query(runs_query(params))
                return json_response(
                    HTTPStatus.OK, {"seq": result.seq, "total": result.total, "runs": result.rows}
                )
            if path.startswith("/api/runs/"):
                return await self._run_path(path.removeprefix("/api/runs/"), params)
        except errors.ProtocolError as exc:
            return error_response(exc)
        return json_response(
            HTTPStatus.NOT_FOUND, {"error": "not_found", "message": f"no such path: {path[:200]}"}
        )

    async def _run_path(self, rest: str, params: Params) -> Response:
        segments = rest.split("/")
        run = unquote(segments[0])
        tail = segments[1:]
        readers = self.daemon.readers
        if not run:
            raise errors.NotFound("no run id in the path")
        if not tail:
            result = await readers.query(Query(q="run", run=run))
            return json_response(HTTPStatus.OK, {"seq": result.seq, "run": result.rows[0]})
        if tail == ["metrics"]:
            q = Query(
                q="metrics",
                run=run,
                names=params.texts("names"),
                max_points=params.integer("max_points", 2),
                step_from=params.integer("step_from"),
                step_to=params.integer("step_to"),
            )
            result = await readers.query(q)
            return json_response(HTTPStatus.OK, {"seq": result.seq, "metrics": result.rows})
        if tail == ["items"]:
            await readers.query(Query(q="artifacts", run=run))  # 404 for an unknown run
            q = Query(
                q="items",
                run=run,
                stage=params.text("stage"),
                status=params.text("status"),
                limit=params.integer("limit", 0, reads.MAX_ITEMS),
                offset=params.integer("offset", 0),
            )
            result = await readers.query(q)
            return json_response(
                HTTPStatus.OK, {"seq": result.seq, "total": result.total, "items": result.rows}
            )
        if len(tail) == 2 and tail[0] == "export":
            fmt = tail[1]
            if fmt not in EXPORTERS:
                raise BadParameter(
                    f"format: '{fmt[:40]}' is not supported; expected one of {', '.join(EXPORTERS)}"
                )
            data = await readers.call(gather_export, run)
            payload = EXPORTERS[fmt](data)
            return _response(
                HTTPStatus.OK,
                payload,
                EXPORT_TYPES[fmt],
                [("Content-Disposition", content_disposition(run, fmt))],
            )
        raise errors.NotFound(f"no such path: /api/runs/{rest[:200]}")

    # -- metrics ----------------------------------------------------------------------

    def daemon_stats(self) -> dict[str, Any]:
        daemon = self.daemon
        stats = daemon.writer.stats
        hub = getattr(daemon, "hub", None)
        return {
            "connections": daemon.connections,
            "subscribers": hub.subscribers if hub is not None else 0,
            "events_appended": stats.events,
            "appends": stats.appends,
            "commits": stats.commits,
            "uptime": max(0.0, time.time() - daemon.started_at),
        }

    def prometheus(self) -> str:
        """The Prometheus text exposition of the daemon's counters and gauges."""
        daemon = self.daemon
        stats = daemon.writer.stats
        hub = getattr(daemon, "hub", None)
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, value: float) -> None:
            lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value:g}"])

        metric("tracklog_events_appended_total", "counter", "Events committed to the log.", stats.events)
        metric("tracklog_appends_total", "counter", "Append messages committed.", stats.appends)
        metric("tracklog_commits_total", "counter", "Group commits.", stats.commits)
        metric(
            "tracklog_duplicate_events_total",
            "counter",
            "Events not appended again (known id).",
            stats.duplicates,
        )
        metric("tracklog_rejected_events_total", "counter", "Events rejected as invalid.", stats.rejected)
        metric(
            "tracklog_commit_seconds_total", "counter", "Time spent in group commits.", stats.commit_seconds
        )
        histogram = getattr(stats, "ack_latency", None)
        if histogram is not None:
            lines.extend(
                histogram.exposition(
                    "tracklog_ack_latency_seconds", "Time from an append reaching the writer to its commit."
                )
            )
        writer = daemon.writer
        metric("tracklog_head_seq", "gauge", "Seq of the newest committed event.", writer.head)
        metric("tracklog_writer_up", "gauge", "1 while the writer runs, else 0.", int(writer.alive))
        metric(
            "tracklog_writer_oldest_request_seconds",
            "gauge",
            "How long the oldest request not yet committed has waited.",
            writer.oldest_request_seconds(),
        )
        metric("tracklog_writer_queued_requests", "gauge", "Requests waiting for the writer.", writer.queued)
        metric(
            "tracklog_writer_failures_total",
            "counter",
            "Exceptions the writer caught around a request or a group (each one a bug).",
            writer.failures,
        )
        episodes, refusals = writer.disk_full_counts()
        disk_full = int(writer.disk_full is not None)
        metric("tracklog_disk_full", "gauge", "1 while appends are refused for a full disk.", disk_full)
        metric("tracklog_disk_full_episodes_total", "counter", "Times the disk became full.", episodes)
        metric("tracklog_disk_full_refusals_total", "counter", "Requests answered disk_full.", refusals)
        metric("tracklog_connections", "gauge", "Open WebSocket connections.", daemon.connections)
        metric(
            "tracklog_subscribers", "gauge", "Live subscriptions.", hub.subscribers if hub is not None else 0
        )
        lag = hub.lag() if hub is not None and hasattr(hub, "lag") else 0
        metric("tracklog_subscriber_lag_events", "gauge", "Most events a subscriber has waiting.", lag)
        metric(
            "tracklog_database_bytes",
            "gauge",
            "Size of the database file and its WAL.",
            database_bytes(str(daemon.settings.db)),
        )
        return "\n".join(lines) + "\n"


def database_bytes(path: str) -> int:
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.path.getsize(path + suffix)
    return total
