"""Row mappings shared by the topic modules: one per concept (a run, a metric summary, an
item, an artifact), so every question that returns one returns the same shape; and the
paging and placeholder helpers their SQL uses.
"""

from __future__ import annotations

import math
from typing import Any, Final

import msgspec

from tracklog.protocol import errors
from tracklog.protocol.messages import Query

from ..readmodel import DEFAULT_SEARCH, MAX_SEARCH
from .dialect import Connection
from .runref import resolve_id
from .schema import NO_EPOCH

json_decode: Final = msgspec.json.Decoder().decode
msgpack_decode: Final = msgspec.msgpack.Decoder().decode

# -- runs -----------------------------------------------------------------------------

#: A run summary's columns, read from the runs table as `r`.
RUN_SUMMARY_COLUMNS: Final = (
    "r.run, r.name, r.pipeline, r.user, r.host, r.session, r.notes, r.parent, r.status, r.error, r.config,"
    " r.started, r.finished, r.created_seq, r.updated_seq, r.last_ts, r.deleted, r.n_events, r.n_points,"
    " r.n_items, r.n_failed, r.n_artifacts, r.experiment"
)
RUN_SUMMARY_NAMES: Final = [c.strip().removeprefix("r.") for c in RUN_SUMMARY_COLUMNS.split(",")]


def run_row(row: tuple[Any, ...]) -> dict[str, Any]:
    """A run summary from a row of RUN_SUMMARY_COLUMNS: `id` for the run, config decoded."""
    out = dict(zip(RUN_SUMMARY_NAMES, row, strict=True))
    out["id"] = out.pop("run")
    out["config"] = json_decode(out["config"]) if out["config"] else {}
    out["deleted"] = bool(out["deleted"])
    return out


# -- metric summaries ---------------------------------------------------------------------

#: A metric summary's columns in metric_summaries, in the order `summary_row` takes them.
SUMMARY_COLUMNS: Final = (
    "count, last, last_step, last_epoch, last_ts, min, min_step, min_epoch, max, max_step, max_epoch,"
    " sum, summed"
)


def epoch_or_none(value: int | None) -> int | None:
    """An epoch as stored (NO_EPOCH when none was logged) as the wire has it (None)."""
    return None if value is None or value == NO_EPOCH else value


def metric_mean(total: float | None, summed: int) -> float | None:
    """The mean of a metric's values other than NaN (None when there are none; NaN stays NaN)."""
    if not summed:
        return None
    return math.nan if total is None else total / summed


def summary_row(row: tuple[Any, ...], *, with_last_ts: bool = False) -> dict[str, Any]:
    """A metric summary from a row of SUMMARY_COLUMNS (`last_ts` only when asked: the `run`
    query has always carried it, `metrics` and `compare` never have)."""
    (
        count,
        last,
        last_step,
        last_epoch,
        last_ts,
        mn,
        mn_step,
        mn_epoch,
        mx,
        mx_step,
        mx_epoch,
        total,
        summed,
    ) = row
    out: dict[str, Any] = {
        "count": count,
        # SQLite stores NaN as NULL; only `last` can be NaN (min and max skip it).
        "last": math.nan if last is None and count else last,
        "last_step": last_step,
        "last_epoch": epoch_or_none(last_epoch),
    }
    if with_last_ts:
        out["last_ts"] = last_ts
    out.update(
        {
            "min": mn,
            "min_step": mn_step,
            "min_epoch": epoch_or_none(mn_epoch),
            "max": mx,
            "max_step": mx_step,
            "max_epoch": epoch_or_none(mx_epoch),
            "mean": metric_mean(total, summed),
        }
    )
    return out


# -- items and artifacts --------------------------------------------------------------------

ITEM_COLUMNS: Final = (
    "seq",
    "run",
    "item",
    "kind",
    "stage",
    "iteration",
    "status",
    "data",
    "path",
    "model",
    "backend",
    "duration",
    "error",
    "ts",
)


def item_row(row: tuple[Any, ...]) -> dict[str, Any]:
    """An item from a row of ITEM_COLUMNS, its data decoded."""
    out = dict(zip(ITEM_COLUMNS, row, strict=True))
    out["data"] = json_decode(out["data"]) if out["data"] is not None else None
    return out


ARTIFACT_COLUMNS: Final = "seq, run, kind, path, size, digest, metadata, ts, blob"


def artifact_row(row: tuple[Any, ...]) -> dict[str, Any]:
    """An artifact from a row of ARTIFACT_COLUMNS, its metadata decoded; `blob` only when
    the bytes are in the daemon's artifact store."""
    seq, run, kind, path, size, digest, meta, ts, blob = row
    out = {
        "seq": seq,
        "run": run,
        "kind": kind,
        "path": path,
        "size": size,
        "digest": digest,
        "metadata": json_decode(meta) if meta else None,
        "ts": ts,
    }
    if blob is not None:
        out["blob"] = blob
    return out


def stored_blobs(conn: Connection) -> list[dict[str, Any]]:
    """Every artifact whose bytes are in the artifact store: `{run, path, size, blob}`, oldest first."""
    return [
        {"run": run, "path": path, "size": size, "blob": blob}
        for run, path, size, blob in conn.execute(
            "SELECT run, path, size, blob FROM artifacts WHERE blob IS NOT NULL ORDER BY seq"
        )
    ]


def artifact_rows(conn: Connection, run: str) -> list[dict[str, Any]]:
    """The run's artifacts, oldest first."""
    return [
        artifact_row(row)
        for row in conn.execute(
            f"SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE run = ? ORDER BY seq", (run,)
        )
    ]


# -- paging and placeholders -------------------------------------------------------------------


def page(q: Query, default: int, most: int) -> tuple[int, int]:
    """The (limit, offset) a query asks for, checked against the question's bounds."""
    limit = default if q.limit is None else q.limit
    if not 0 <= limit <= most:
        raise errors.BadQuery(f"limit: expected 0 to {most}", q.ref)
    offset = q.offset or 0
    if offset < 0:
        raise errors.BadQuery("offset: expected 0 or more", q.ref)
    return limit, offset


def search_page(q: Query) -> tuple[int, int]:
    """The (limit, offset) of a `search`, its text checked (the same on every backend)."""
    if q.text is None or not q.text.strip():
        raise errors.BadQuery("text: required for q 'search'", q.ref)
    if len(q.text) > 10_000:
        raise errors.BadQuery("text: longer than 10000 characters", q.ref)
    return page(q, DEFAULT_SEARCH, MAX_SEARCH)


def search_words(text: str) -> list[tuple[str, bool]]:
    """The words of a search text, each with whether it is a prefix (`word*`); a lone `*` is no word."""
    words = [(word.rstrip("*"), word.endswith("*")) for word in text.split()]
    return [(word, prefix) for word, prefix in words if word]


def search_row(
    doc: int, kind: str, run: str, run_name: str | None, title: str, snippet: str, score: float
) -> dict[str, Any]:
    """A `search` hit: what matched (`seq` for an item or artifact), a snippet, a score
    (higher is better)."""
    row: dict[str, Any] = {
        "kind": kind,
        "run": run,
        "run_name": run_name,
        "title": title,
        "snippet": snippet,
        "score": score,
    }
    if kind != "run":
        row["seq"] = doc
    return row


def marks(values: list[Any] | frozenset[Any]) -> str:
    """One `?` per value, comma-separated, for an `IN (...)`; `NULL` for none (which
    matches nothing, and PostgreSQL refuses an empty `IN ()`)."""
    return ",".join("?" * len(values)) or "NULL"


def require_run(conn: Connection, run: str | None, q: Query) -> str:
    """The id of the run `run` names: an id, a unique id prefix or a name (runref.py)."""
    if not run:
        raise errors.BadQuery(f"run: required for q '{q.q}'", q.ref)
    return resolve_id(conn, run, "run", q.ref)
