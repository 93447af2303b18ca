"""Run exports (json, jsonl, csv, xml), written piece by piece so memory stays bounded.

An export is a generator of byte pieces of about PIECE_BYTES, read from one read
transaction on its own connection: metric histories chunk by chunk (never a whole
series), items in pages. However long the run, the daemon holds a few pieces at a time.
The JSON document has the same shape as before exports were streamed: each metric's
columns (`steps`, `values`, `epochs`, `ts`) as arrays, so each column is a pass over
the metric's chunks.
"""

from __future__ import annotations

import csv
import io
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final
from xml.sax.saxutils import escape, quoteattr

import msgspec
import numpy as np

from tracklog.protocol.events import finite_floats_as_strings
from tracklog.protocol.messages import Query

from .queries import query_run
from .reads import ITEM_COLUMNS, artifact_rows, item_dict
from .schema import NO_EPOCH

#: About how many bytes each piece handed to the connection holds.
PIECE_BYTES: Final = 256 * 1024
#: Items read per page.
ITEM_PAGE: Final = 1_000

EXPORT_TYPES: Final = {
    "json": "application/json",
    "jsonl": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "xml": "application/xml",
}

_json = msgspec.json.Encoder()
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _plain(value: Any) -> Any:
    return finite_floats_as_strings(msgspec.to_builtins(value))


def _encode(value: Any) -> bytes:
    return _json.encode(_plain(value))


# -- reading ------------------------------------------------------------------------------


def run_summary(conn: sqlite3.Connection, run: str) -> dict[str, Any]:
    """The run's fields (as the `run` query), without its artifacts (exported on their own)."""
    summary = dict(query_run(conn, Query(q="run", run=run))[0][0])
    summary.pop("artifacts", None)
    return summary


def metric_names(conn: sqlite3.Connection, run: str) -> list[tuple[str, int]]:
    return list(conn.execute("SELECT name, count FROM metric_summaries WHERE run = ? ORDER BY name", (run,)))


def metric_chunks(conn: sqlite3.Connection, run: str, name: str) -> Iterator[tuple[Any, ...]]:
    """Each chunk of a metric as (steps, values, epochs, ts) lists, in logging order."""
    for steps, vals, epochs, ts in conn.execute(
        "SELECT steps, vals, epochs, ts FROM metric_chunks WHERE run = ? AND name = ? ORDER BY chunk",
        (run, name),
    ):
        epoch_list: list[Any] = np.frombuffer(epochs, np.int64).tolist()
        if NO_EPOCH in epoch_list:
            epoch_list = [None if e == NO_EPOCH else e for e in epoch_list]
        yield (
            np.frombuffer(steps, np.int64).tolist(),
            np.frombuffer(vals, np.float64).tolist(),
            epoch_list,
            np.frombuffer(ts, np.float64).tolist(),
        )


def points(conn: sqlite3.Connection, run: str, name: str) -> Iterator[tuple[int, float, int | None, float]]:
    for steps, values, epochs, ts in metric_chunks(conn, run, name):
        yield from zip(steps, values, epochs, ts, strict=True)


def items(conn: sqlite3.Connection, run: str) -> Iterator[dict[str, Any]]:
    """The run's items, oldest first, a page at a time (by seq, so no OFFSET scans)."""
    after = -1
    while True:
        rows = conn.execute(
            f"SELECT {', '.join(ITEM_COLUMNS)} FROM items WHERE run = ? AND seq > ? ORDER BY seq LIMIT ?",
            (run, after, ITEM_PAGE),
        ).fetchall()
        for row in rows:
            yield item_dict(row)
        if len(rows) < ITEM_PAGE:
            return
        after = rows[-1][0]


# -- pieces -------------------------------------------------------------------------------


def pieces(parts: Iterable[bytes]) -> Iterator[bytes]:
    """Join small parts into pieces of about PIECE_BYTES."""
    buffer: list[bytes] = []
    size = 0
    for part in parts:
        buffer.append(part)
        size += len(part)
        if size >= PIECE_BYTES:
            yield b"".join(buffer)
            buffer.clear()
            size = 0
    if buffer:
        yield b"".join(buffer)


def in_transaction(conn: sqlite3.Connection, parts: Iterator[bytes]) -> Iterator[bytes]:
    """The parts, read in one read transaction: the export is one consistent state."""
    conn.execute("BEGIN")
    try:
        yield from parts
    finally:
        conn.execute("COMMIT")


# -- formats --------------------------------------------------------------------------------


def _json_array(chunks: Iterable[list[Any]]) -> Iterator[bytes]:
    yield b"["
    first = True
    for chunk in chunks:
        if not chunk:
            continue
        body = _encode(chunk)[1:-1]
        if not first:
            yield b","
        yield body
        first = False
    yield b"]"


def export_json(conn: sqlite3.Connection, run: str) -> Iterator[bytes]:
    """One JSON document: run, metrics (each with steps, values, epochs, ts), items, artifacts."""
    yield b'{"run":' + _encode(run_summary(conn, run)) + b',"metrics":['
    for index, (name, count) in enumerate(metric_names(conn, run)):
        head = {"run": run, "name": name, "points": count, "downsampled": False}
        yield (b"," if index else b"") + _encode(head)[:-1]
        for column, key in enumerate(("steps", "values", "epochs", "ts")):
            yield b',"' + key.encode() + b'":'
            yield from _json_array(chunk[column] for chunk in metric_chunks(conn, run, name))
        yield b"}"
    yield b'],"items":['
    for index, item in enumerate(items(conn, run)):
        yield (b"," if index else b"") + _encode(item)
    yield b'],"artifacts":'
    yield _encode(artifact_rows(conn, run))
    yield b"}"


def export_jsonl(conn: sqlite3.Connection, run: str) -> Iterator[bytes]:
    """A record per line: the run, each metric point, each item, each artifact."""
    yield _encode({"record": "run", **run_summary(conn, run)}) + b"\n"
    for name, _ in metric_names(conn, run):
        for step, value, epoch, ts in points(conn, run, name):
            record = {"record": "metric", "run": run, "name": name, "step": step, "epoch": epoch}
            record["value"] = value
            record["ts"] = ts
            yield _encode(record) + b"\n"
    for item in items(conn, run):
        yield _encode({"record": "item", **item}) + b"\n"
    for artifact in artifact_rows(conn, run):
        yield _encode({"record": "artifact", **artifact}) + b"\n"


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
#: A cell starting with one of these is a formula to a spreadsheet (OWASP, CSV injection).
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER: Final = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet reads as text: a leading formula character gets a `'` before it.

    Plain numbers such as `-1.5` stay numbers; anything else that starts with `=`, `+`,
    `-`, `@`, a tab or a carriage return is prefixed with a single quote, as OWASP
    recommends against formula injection.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def _text(value: Any) -> str:
    """A free-form value (item data, metadata) as one CSV cell: JSON, escaped."""
    return "" if value is None else csv_cell(_encode(value).decode())


def export_csv(conn: sqlite3.Connection, run: str) -> Iterator[bytes]:
    """One table: a row per metric point, then per item and artifact (`record` says which)."""
    out = io.StringIO()
    # CRLF, as RFC 4180 has it: the writer then quotes any cell holding a CR or an LF.
    writer = csv.writer(out, lineterminator="\r\n")

    def flush() -> bytes:
        text = out.getvalue()
        out.seek(0)
        out.truncate()
        return text.encode()

    writer.writerow(CSV_COLUMNS)
    run_cell = csv_cell(run)
    for name, _ in metric_names(conn, run):
        name_cell = csv_cell(name)
        for steps, values, epochs, ts in metric_chunks(conn, run, name):
            writer.writerows(
                (
                    "metric",
                    run_cell,
                    name_cell,
                    s,
                    "" if e is None else e,
                    repr(v),
                    repr(t),
                    "",
                    "",
                    "",
                    "",
                    "",
                )
                for s, v, e, t in zip(steps, values, epochs, ts, strict=True)
            )
            yield flush()
    for item in items(conn, run):
        writer.writerow(
            (
                "item",
                run_cell,
                csv_cell(item["item"] or ""),
                item["iteration"] or "",
                "",
                item["duration"] or "",
                repr(item["ts"]),
                csv_cell(item["kind"] or ""),
                csv_cell(item["stage"] or ""),
                csv_cell(item["status"]),
                csv_cell(item["path"] or ""),
                _text(item["data"]),
            )
        )
        if out.tell() >= PIECE_BYTES:
            yield flush()
    for art in artifact_rows(conn, run):
        writer.writerow(
            (
                "artifact",
                run_cell,
                csv_cell(art["digest"] or ""),
                "",
                "",
                art["size"] if art["size"] is not None else "",
                repr(art["ts"]),
                csv_cell(art["kind"]),
                "",
                "",
                csv_cell(art["path"]),
                _text(art["metadata"]),
            )
        )
    yield flush()


def _xml_text(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if not isinstance(value, str):
        value = _encode(value).decode()
    return _XML_BAD.sub("\ufffd", value)


def _xml_element(tag: str, attrs: dict[str, Any]) -> bytes:
    body = "".join(
        f" {key}={quoteattr(_xml_text(value))}" for key, value in attrs.items() if value is not None
    )
    return f"<{tag}{body} />".encode()


def export_xml(conn: sqlite3.Connection, run: str) -> Iterator[bytes]:
    """<run id> with its fields, <metrics> of <point>s, <items>, <artifacts>."""
    summary = run_summary(conn, run)
    yield b'<?xml version="1.0" encoding="UTF-8"?>\n'
    yield f"<run id={quoteattr(_xml_text(run))}>".encode()
    for key, value in summary.items():
        if key in ("id", "metrics") or value is None:
            continue
        yield f"<field name={quoteattr(key)}>{escape(_xml_text(value))}</field>".encode()
    yield b"<metrics>"
    for name, _ in metric_names(conn, run):
        yield f"<metric name={quoteattr(_xml_text(name))}>".encode()
        for steps, values, epochs, ts in metric_chunks(conn, run, name):
            yield "".join(
                f'<point step="{s}" value="{v!r}" ts="{t!r}" />'
                if e is None
                else f'<point step="{s}" value="{v!r}" ts="{t!r}" epoch="{e}" />'
                for s, v, e, t in zip(steps, values, epochs, ts, strict=True)
            ).encode()
        yield b"</metric>"
    yield b"</metrics><items>"
    for item in items(conn, run):
        yield _xml_element("item", item)
    yield b"</items><artifacts>"
    for art in artifact_rows(conn, run):
        yield _xml_element("artifact", art)
    yield b"</artifacts></run>"


EXPORTERS: Final[dict[str, Callable[[sqlite3.Connection, str], Iterator[bytes]]]] = {
    "json": export_json,
    "jsonl": export_jsonl,
    "csv": export_csv,
    "xml": export_xml,
}


def export(conn: sqlite3.Connection, run: str, fmt: str) -> Iterator[bytes]:
    """The export of run in fmt, as pieces of about PIECE_BYTES, from one read transaction."""
    return pieces(in_transaction(conn, EXPORTERS[fmt](conn, run)))
