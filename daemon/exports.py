"""Run exports (json, jsonl, csv, xml), written piece by piece so memory stays bounded.

An export is a generator of byte pieces of about PIECE_BYTES, read through a ReadModel
of its own inside one snapshot: metric histories chunk by chunk (never a whole
series), items in pages. However long the run, the daemon holds a few pieces at a time.
The JSON document has the same shape as before exports were streamed: each metric's
columns (`steps`, `values`, `epochs`, `ts`) as arrays, so each column is a pass over
the metric's chunks.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final
from xml.sax.saxutils import escape, quoteattr

import msgspec

from tracklog.protocol.events import finite_floats_as_strings

from .storage.readmodel import ReadModel

#: About how many bytes each piece handed to the connection holds.
PIECE_BYTES: Final = 256 * 1024

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


def in_snapshot(model: ReadModel, parts: Iterator[bytes]) -> Iterator[bytes]:
    """The parts, read in one snapshot: the export is one consistent state."""
    with model.snapshot("export"):
        yield from parts


def points(model: ReadModel, run: str, name: str) -> Iterator[tuple[int, float, int | None, float]]:
    """A metric's points one by one, in logging order."""
    for steps, values, epochs, ts in model.metric_chunks(run, name):
        yield from zip(steps, values, epochs, ts, strict=True)


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


def export_json(model: ReadModel, run: str) -> Iterator[bytes]:
    """One JSON document: run, metrics (each with steps, values, epochs, ts), items, artifacts."""
    yield b'{"run":' + _encode(model.run_summary(run)) + b',"metrics":['
    for index, (name, count) in enumerate(model.metric_names(run)):
        head = {"run": run, "name": name, "points": count, "downsampled": False}
        yield (b"," if index else b"") + _encode(head)[:-1]
        for column, key in enumerate(("steps", "values", "epochs", "ts")):
            yield b',"' + key.encode() + b'":'
            yield from _json_array(chunk[column] for chunk in model.metric_chunks(run, name))
        yield b"}"
    yield b'],"items":['
    for index, item in enumerate(model.item_rows(run)):
        yield (b"," if index else b"") + _encode(item)
    yield b'],"artifacts":'
    yield _encode(model.artifact_rows(run))
    yield b"}"


def export_jsonl(model: ReadModel, run: str) -> Iterator[bytes]:
    """A record per line: the run, each metric point, each item, each artifact."""
    yield _encode({"record": "run", **model.run_summary(run)}) + b"\n"
    for name, _ in model.metric_names(run):
        for step, value, epoch, ts in points(model, run, name):
            record = {"record": "metric", "run": run, "name": name, "step": step, "epoch": epoch}
            record["value"] = value
            record["ts"] = ts
            yield _encode(record) + b"\n"
    for item in model.item_rows(run):
        yield _encode({"record": "item", **item}) + b"\n"
    for artifact in model.artifact_rows(run):
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


def export_csv(model: ReadModel, run: str) -> Iterator[bytes]:
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
    for name, _ in model.metric_names(run):
        name_cell = csv_cell(name)
        for steps, values, epochs, ts in model.metric_chunks(run, name):
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
    for item in model.item_rows(run):
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
    for art in model.artifact_rows(run):
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


def export_xml(model: ReadModel, run: str) -> Iterator[bytes]:
    """<run id> with its fields, <metrics> of <point>s, <items>, <artifacts>."""
    summary = model.run_summary(run)
    yield b'<?xml version="1.0" encoding="UTF-8"?>\n'
    yield f"<run id={quoteattr(_xml_text(run))}>".encode()
    for key, value in summary.items():
        if key in ("id", "metrics") or value is None:
            continue
        yield f"<field name={quoteattr(key)}>{escape(_xml_text(value))}</field>".encode()
    yield b"<metrics>"
    for name, _ in model.metric_names(run):
        yield f"<metric name={quoteattr(_xml_text(name))}>".encode()
        for steps, values, epochs, ts in model.metric_chunks(run, name):
            yield "".join(
                f'<point step="{s}" value="{v!r}" ts="{t!r}" />'
                if e is None
                else f'<point step="{s}" value="{v!r}" ts="{t!r}" epoch="{e}" />'
                for s, v, e, t in zip(steps, values, epochs, ts, strict=True)
            ).encode()
        yield b"</metric>"
    yield b"</metrics><items>"
    for item in model.item_rows(run):
        yield _xml_element("item", item)
    yield b"</items><artifacts>"
    for art in model.artifact_rows(run):
        yield _xml_element("artifact", art)
    yield b"</artifacts></run>"


EXPORTERS: Final[dict[str, Callable[[ReadModel, str], Iterator[bytes]]]] = {
    "json": export_json,
    "jsonl": export_jsonl,
    "csv": export_csv,
    "xml": export_xml,
}


def export(model: ReadModel, run: str, fmt: str) -> Iterator[bytes]:
    """The export of run in fmt, as pieces of about PIECE_BYTES, from one snapshot."""
    return pieces(in_snapshot(model, EXPORTERS[fmt](model, run)))
