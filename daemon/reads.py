"""The query handlers for people's questions: runs, metrics, compare, best, items, search, stats.

Each handler takes a read-only connection inside the read transaction `queries.answer`
opened, and a `Query`; it returns (rows, total). Filters and orderings go through
`filters.compile_filter`, so every value reaches SQLite as a bound parameter.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from typing import Any, Final, get_args

import msgspec
import numpy as np

from tracklog.protocol import errors
from tracklog.protocol.events import ItemStatus
from tracklog.protocol.messages import Query

from .filters import compile_filter
from .runref import resolve_id, resolve_live
from .schema import NO_EPOCH
from .series import downsample_from_tiers, extremes_index, read_series

_json_decode = msgspec.json.Decoder().decode

DEFAULT_RUNS: Final = 100
MAX_RUNS: Final = 1000
DEFAULT_ITEMS: Final = 100
MAX_ITEMS: Final = 10_000
DEFAULT_SEARCH: Final = 20
MAX_SEARCH: Final = 1000
#: Most points a `metrics` row holds when max_points is not given.
MAX_SERIES_POINTS: Final = 10_000_000

RUN_SUMMARY_COLUMNS: Final = (
    "r.run, r.name, r.pipeline, r.user, r.host, r.session, r.notes, r.parent, r.status, r.error, r.config,"
    " r.started, r.finished, r.created_seq, r.updated_seq, r.last_ts, r.deleted, r.n_events, r.n_points,"
    " r.n_items, r.n_failed, r.n_artifacts"
)
_RUN_NAMES: Final = [c.strip().removeprefix("r.") for c in RUN_SUMMARY_COLUMNS.split(",")]


def _epoch(value: int | None) -> int | None:
    return None if value is None or value == NO_EPOCH else value


def _page(q: Query, default: int, most: int) -> tuple[int, int]:
    limit = default if q.limit is None else q.limit
    if not 0 <= limit <= most:
        raise errors.BadQuery(f"limit: expected 0 to {most}", q.ref)
    offset = q.offset or 0
    if offset < 0:
        raise errors.BadQuery("offset: expected 0 or more", q.ref)
    return limit, offset


def _run_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    out = dict(zip(_RUN_NAMES, row, strict=True))
    out["id"] = out.pop("run")
    out["config"] = _json_decode(out["config"]) if out["config"] else {}
    out["deleted"] = bool(out["deleted"])
    return out


def _marks(values: list[Any]) -> str:
    return ",".join("?" * len(values))


def _require_run(conn: sqlite3.Connection, run: str | None, q: Query) -> str:
    """The id of the run `run` names: an id, a unique id prefix or a name (daemon/runref.py)."""
    if not run:
        raise errors.BadQuery(f"run: required for q '{q.q}'", q.ref)
    return resolve_id(conn, run, "run", q.ref)


# -- runs ---------------------------------------------------------------------------


def query_runs(conn: sqlite3.Connection, q: Query) -> tuple[list[Any], int | None]:
    """A page of run summaries matching the filter, in the order asked, and the total."""
    limit, offset = _page(q, DEFAULT_RUNS, MAX_RUNS)
    try:
        compiled = compile_filter(q.filter, q.order_by)
    except errors.BadQuery as exc:
        raise errors.BadQuery(exc.message, q.ref) from None
    where = compiled.where if q.deleted else f"({compiled.where}) AND r.deleted = 0"
    head = [*compiled.join_params, *compiled.where_params]
    total = conn.execute(f"SELECT count(*) FROM {compiled.from_sql} WHERE {where}", head).fetchone()[0]
    # The page's ids first (through covering indexes where the filter allows), then
    # their rows: sorting thousands of matches never carries their whole rows along.
    ids = [
        run
        for (run,) in conn.execute(
            f"SELECT r.run FROM {compiled.from_sql} WHERE {where} ORDER BY {compiled.order} LIMIT ? OFFSET ?",
            [*compiled.params, limit, offset],
        )
    ]
    found = {
        row[0]: row
        for row in conn.execute(
            f"SELECT {RUN_SUMMARY_COLUMNS} FROM runs AS r WHERE r.run IN ({_marks(ids)})", ids
        )
    }
    runs = [_run_dict(found[run]) for run in ids]
    if runs:
        ids = [r["id"] for r in runs]
        by_id = {r["id"]: r for r in runs}
        for r in runs:
            r["tags"] = []
            r["metrics"] = {}
        for run, tag in conn.execute(
            f"SELECT run, tag FROM run_tags WHERE run IN ({_marks(ids)}) ORDER BY run, tag", ids
        ):
            by_id[run]["tags"].append(tag)
        for run, name, last, count in conn.execute(
            f"SELECT run, name, last, count FROM metric_summaries WHERE run IN ({_marks(ids)})"
            " ORDER BY run, name",
            ids,
        ):
            by_id[run]["metrics"][name] = math.nan if last is None and count else last
    return runs, total


# -- metrics ------------------------------------------------------------------------


def query_metrics(conn: sqlite3.Connection, q: Query) -> tuple[list[Any], int | None]:
    """One row per metric of a run: columnar steps, values, epochs, ts; downsampled on request.

    Each row also carries the metric's `summary` (count, last, min, max and where, over the
    whole series), so a reader of a downsampled or step-ranged history still knows the
    true last value. Asking for a metric the run has not logged is `not_found`.
    """
    run = _require_run(conn, q.run, q)
    if q.max_points is not None and q.max_points < 2:
        raise errors.BadQuery(
            "max_points: expected 2 or more (the first and the last points are always kept);"
            " leave it out for every point",
            q.ref,
        )
    if q.step_from is not None and q.step_to is not None and q.step_from > q.step_to:
        raise errors.BadQuery("step_from: greater than step_to", q.ref)
    summaries = {
        name: _summary_dict(tuple(summary))
        for name, *summary in conn.execute(
            f"SELECT name, {_SUMMARY_COLUMNS} FROM metric_summaries WHERE run = ? ORDER BY name", (run,)
        )
    }
    names = list(summaries) if q.names is None else list(dict.fromkeys(q.names))
    unknown = [name for name in names if name not in summaries]
    if unknown:
        shown = ", ".join(f"'{name[:128]}'" for name in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise errors.NotFound(f"names: run '{run[:128]}' has no metric {shown}{more}", q.ref)
    rows: list[dict[str, Any]] = []
    for name in names:
        summary = summaries[name]
        tiered = None
        if q.max_points is not None and summary["count"] > q.max_points:
            tiered = downsample_from_tiers(conn, run, name, q.max_points, q.step_from, q.step_to)
        if tiered is not None:
            series, points = tiered
            rows.append(
                {
                    "run": run,
                    "name": name,
                    "points": points,
                    "downsampled": True,
                    **series.columns(),
                    "summary": summary,
                }
            )
            continue
        series = read_series(conn, run, name, q.step_from, q.step_to)
        points = len(series)
        if q.max_points is not None and points > q.max_points:
            series = series.take(extremes_index(series.values, q.max_points))
        elif points > MAX_SERIES_POINTS:
            raise errors.BadQuery(f"metrics: {name} has {points} points; ask with max_points", q.ref)
        rows.append(
            {
                "run": run,
                "name": name,
                "points": points,
                "downsampled": len(series) < points,
                **series.columns(),
                "summary": summary,
            }
        )
    return rows, len(rows)


_SUMMARY_COLUMNS: Final = (
    "count, last, last_step, last_epoch, min, min_step, min_epoch, max, max_step, max_epoch, sum, summed"
)


def metric_mean(total: float | None, summed: int) -> float | None:
    """The mean of a metric's values other than NaN (None when there are none; NaN stays NaN)."""
    if not summed:
        return None
    return math.nan if total is None else total / summed


def _summary_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    (count, last, last_step, last_epoch, mn, mn_step, mn_epoch, mx, mx_step, mx_epoch, total, summed) = row
    return {
        "count": count,
        # SQLite stores NaN as NULL; only `last` can be NaN (min and max skip it).
        "last": math.nan if last is None and count else last,
        "last_step": last_step,
        "last_epoch": _epoch(last_epoch),
        "min": mn,
        "min_step": mn_step,
        "min_epoch": _epoch(mn_epoch),
        "max": mx,
        "max_step": mx_step,
        "max_epoch": _epoch(mx_epoch),
        "mean": metric_mean(total, summed),
    }


def _epoch_count(conn: sqlite3.Connection, run: str, name: str) -> int:
    blobs = [
        b
        for (b,) in conn.execute(
            "SELECT epochs FROM metric_chunks WHERE run = ? AND name = ? ORDER BY chunk", (run, name)
        )
    ]
    if not blobs:
        return 0
    epochs = np.frombuffer(b"".join(blobs), np.int64)
    distinct = np.unique(epochs)
    return int((distinct != NO_EPOCH).sum())


def query_compare(conn: sqlite3.Connection, q: Query) -> tuple[list[Any], int | None]:
    """Per run and metric: last, min, max, where min and max were reached, count, epochs."""
    refs = q.runs or ([q.run] if q.run else [])
    if not refs:
        raise errors.BadQuery("runs: required for q 'compare' (a list of run ids)", q.ref)
    if len(refs) > MAX_RUNS:
        raise errors.BadQuery(f"runs: at most {MAX_RUNS}", q.ref)
    runs = list(dict.fromkeys(resolve_live(conn, ref, q.deleted, "runs", q.ref).id for ref in refs))
    names_of = {
        run: name
        for run, name in conn.execute(f"SELECT run, name FROM runs WHERE run IN ({_marks(runs)})", runs)
    }
    for run in runs:
        if run not in names_of:
            raise errors.NotFound(f"runs: no run '{run[:128]}'", q.ref)
    rows: list[dict[str, Any]] = []
    wanted = q.metrics if q.metrics is not None else q.names
    for run in runs:
        sql = f"SELECT name, {_SUMMARY_COLUMNS} FROM metric_summaries WHERE run = ?"
        args: list[Any] = [run]
        if wanted is not None:
            sql += f" AND name IN ({_marks(wanted)})"
            args.extend(wanted)
        for name, *summary in conn.execute(sql + " ORDER BY name", args):
            rows.append(
                {
                    "run": run,
                    "run_name": names_of[run],
                    "metric": name,
                    **_summary_dict(tuple(summary)),
                    "epochs": _epoch_count(conn, run, name),
                }
            )
    return rows, len(rows)


def query_best(conn: sqlite3.Connection, q: Query) -> tuple[list[Any], int | None]:
    """The run with the lowest (min) or highest (max) value of a metric ever logged; earlier run on a tie."""
    if not q.metric:
        raise errors.BadQuery("metric: required for q 'best'", q.ref)
    mode = q.mode or "min"
    if mode not in ("min", "max"):
        raise errors.BadQuery("mode: expected 'min' or 'max'", q.ref)
    try:
        compiled = compile_filter(q.filter)
    except errors.BadQuery as exc:
        raise errors.BadQuery(exc.message, q.ref) from None
    direction = "ASC" if mode == "min" else "DESC"
    row = conn.execute(
        f"SELECT {RUN_SUMMARY_COLUMNS}, s.{mode}, s.{mode}_step, s.{mode}_epoch, s.count"
        f" FROM {compiled.from_sql} JOIN metric_summaries s ON s.run = r.run AND s.name = ?"
        f" WHERE ({compiled.where}){'' if q.deleted else ' AND r.deleted = 0'} AND s.{mode} IS NOT NULL"
        f" ORDER BY s.{mode} {direction}, r.created_seq, r.run LIMIT 1",
        [*compiled.join_params, q.metric, *compiled.where_params],
    ).fetchone()
    if row is None:
        return [], 0
    run = _run_dict(row[:-4])
    value, step, epoch, count = row[-4:]
    return [
        {
            "run": run["id"],
            "name": run["name"],
            "metric": q.metric,
            "mode": mode,
            "value": value,
            "step": step,
            "epoch": _epoch(epoch),
            "count": count,
            "summary": run,
        }
    ], 1


# -- items and artifacts -----------------------------------------------------------


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


def item_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    out = dict(zip(ITEM_COLUMNS, row, strict=True))
    out["data"] = _json_decode(out["data"]) if out["data"] is not None else None
    return out


def query_items(conn: sqlite3.Connection, q: Query) -> tuple[list[Any], int | None]:
    """Items, oldest first, of a run or of all, by stage and status."""
    limit, offset = _page(q, DEFAULT_ITEMS, MAX_ITEMS)
    where: list[str] = []
    args: list[Any] = []
    run = None if q.run is None else resolve_id(conn, q.run, "run", q.ref)
    for column, value in (("run", run), ("stage", q.stage), ("status", q.status)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    console_item_filters(q, where, args)
    clause = " WHERE " + " AND ".join(where) if where else ""
    total = conn.execute(f"SELECT count(*) FROM items{clause}", args).fetchone()[0]
    rows = conn.execute(
        f"SELECT {', '.join(ITEM_COLUMNS)} FROM items{clause} ORDER BY seq LIMIT ? OFFSET ?",
        [*args, limit, offset],
    ).fetchall()
    return [item_dict(r) for r in rows], total


def artifact_rows(conn: sqlite3.Connection, run: str) -> list[dict[str, Any]]:
    return [
        {
            "seq": seq,
            "run": run,
            "kind": kind,
            "path": path,
            "size": size,
            "digest": digest,
            "metadata": _json_decode(meta) if meta else None,
            "ts": ts,
        }
        for seq, kind, path, size, digest, meta, ts in conn.execute(
            "SELECT seq, kind, path, size, digest, metadata, ts FROM artifacts WHERE run = ? ORDER BY seq",
            (run,),
        )
    ]


def query_artifacts(conn: sqlite3.Connection, q: Query) -> tuple[list[Any], int | None]:
    run = _require_run(conn, q.run, q)
    rows = artifact_rows(conn, run)
    return rows, len(rows)


# -- search -------------------------------------------------------------------------


def fts_query(text: str) -> str:
    """The words of text as an FTS5 query of quoted terms (all must match; `word*` is a prefix).

    Quoting every word means FTS5 operators and punctuation in the text are plain words,
    so no input is a syntax error.
    """
    terms: list[str] = []
    for word in text.split():
        prefix = word.endswith("*")
        word = word.rstrip("*")
        if not word:
            continue
        terms.append('"' + word.replace('"', '""') + '"' + ("*" if prefix else ""))
    return " ".join(terms)


def query_search(conn: sqlite3.Connection, q: Query) -> tuple[list[Any], int | None]:
    """Runs, items and artifacts whose text matches, best first (bm25), each with a snippet."""
    if q.text is None or not q.text.strip():
        raise errors.BadQuery("text: required for q 'search'", q.ref)
    if len(q.text) > 10_000:
        raise errors.BadQuery("text: longer than 10000 characters", q.ref)
    limit, offset = _page(q, DEFAULT_SEARCH, MAX_SEARCH)
    match = fts_query(q.text)
    if not match:
        return [], 0
    rows = conn.execute(
        "SELECT d.doc, d.kind, d.run, r.name, d.title,"
        " snippet(search, 1, '[', ']', '...', 12), bm25(search, 5.0, 1.0) AS score"
        " FROM search JOIN search_docs d ON d.doc = search.rowid JOIN runs r ON r.run = d.run"
        f" WHERE search MATCH ?{'' if q.deleted else ' AND r.deleted = 0'}"
        " ORDER BY score, d.doc LIMIT ? OFFSET ?",
        (match, limit, offset),
    ).fetchall()
    out = []
    for doc, kind, run, run_name, title, snippet, score in rows:
        row: dict[str, Any] = {
            "kind": kind,
            "run": run,
            "run_name": run_name,
            "title": title,
            "snippet": snippet,
            "score": -score,
        }
        if kind != "run":
            row["seq"] = doc
        out.append(row)
    return out, None


# -- stats --------------------------------------------------------------------------


def _ingest_rate(conn: sqlite3.Connection, head: int, now: float, window: float = 60.0) -> float:
    """Events per second committed over the last `window` seconds (binary search on seq)."""
    if head == 0:
        return 0.0
    since = now - window
    low, high = 1, head  # find the first seq recorded at or after `since`
    first = conn.execute("SELECT recorded FROM events WHERE seq = ?", (high,)).fetchone()
    if first is None or first[0] < since:
        return 0.0
    while low < high:
        mid = (low + high) // 2
        row = conn.execute("SELECT recorded FROM events WHERE seq = ?", (mid,)).fetchone()
        if row is not None and row[0] >= since:
            high = mid
        else:
            low = mid + 1
    return (head - low + 1) / window


#: Databases up to this size have their log measured page by page (dbstat walks every page).
EXACT_LOG_BYTES_UNDER: Final = 64 * 1024 * 1024


def _log_bytes(conn: sqlite3.Connection, head: int, database_bytes: int) -> tuple[int | None, bool]:
    """The log's size in bytes, and whether it is exact: measured on small databases,
    estimated from the newest 1,000 events on large ones (measuring takes seconds there)."""
    if database_bytes <= EXACT_LOG_BYTES_UNDER:
        try:
            row = conn.execute(
                "SELECT coalesce(sum(pgsize), 0) FROM dbstat"
                " WHERE name IN ('events', 'events_id', 'events_run')"
            ).fetchone()
            return int(row[0]), True
        except sqlite3.Error:  # dbstat is compiled in most builds, not all
            pass
    row = conn.execute(
        "SELECT avg(length(data) + coalesce(length(id), 0) + coalesce(length(run), 0) + length(type) + 40)"
        " FROM events WHERE seq > ?",
        (head - 1000,),
    ).fetchone()
    return (int(row[0] * head) if row and row[0] is not None else 0), False


#: Every status an item can have (a closed set: the codec refuses others).
ITEM_STATUSES: Final = tuple(sorted(get_args(ItemStatus)))
#: Quantiles of item durations each stage reports, by name.
STAGE_QUANTILES: Final = (("p50", 0.5), ("p95", 0.95))


def _stage_row(
    stage: str | None, kind: str | None, count: int, failed: int, timed: int, total: float | None
) -> dict[str, Any]:
    return {
        "stage": stage,
        "kind": kind,
        "count": count,
        "failed": failed,
        "timed": timed,
        "total": total if timed else None,
        "mean": total / timed if timed and total is not None else None,
        "p50": None,
        "p95": None,
    }


def stage_summaries(conn: sqlite3.Connection) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Items by (stage, kind) over every run: count, failed, and their durations' total,
    mean, p50 and p95; and the items by status (from the same scan).

    Computed in SQL on the covering index `items_stage(stage, kind, duration, status)`:
    the counts and sums are one scan of the index; each quantile is one seek to its rank
    inside a (stage, kind) range, which the index keeps ordered by duration. A quantile q
    is the duration at rank floor(q * (n - 1)) of the n durations in order (numpy's
    "lower" method): always a duration that was logged.
    """
    by_status = ", ".join(f"sum(status = '{status}')" for status in ITEM_STATUSES)
    rows = []
    items_by_status = dict.fromkeys(ITEM_STATUSES, 0)
    for stage, kind, count, timed, total, *statuses in conn.execute(
        f"SELECT stage, kind, count(*), count(duration), sum(duration), {by_status}"
        " FROM items GROUP BY stage, kind ORDER BY stage, kind"
    ):
        counts = dict(zip(ITEM_STATUSES, statuses, strict=True))
        rows.append(_stage_row(stage, kind, count, counts["failed"], timed, total))
        for status, n in counts.items():
            items_by_status[status] += n
    for row in rows:
        for name, quantile in STAGE_QUANTILES:
            if row["timed"]:
                row[name] = conn.execute(
                    "SELECT duration FROM items WHERE stage IS ? AND kind IS ? AND duration IS NOT NULL"
                    " ORDER BY duration LIMIT 1 OFFSET ?",
                    (row["stage"], row["kind"], int(quantile * (row["timed"] - 1))),
                ).fetchone()[0]
    return rows, {status: n for status, n in sorted(items_by_status.items()) if n}


def run_stage_summaries(conn: sqlite3.Connection, run: str) -> list[dict[str, Any]]:
    """`stage_summaries` of one run's items, computed with numpy over the run's durations
    (read through the `items_run` index); the quantiles are the same "lower" ranks."""
    groups: dict[tuple[str | None, str | None], tuple[list[float], list[int]]] = {}
    for stage, kind, failed, duration in conn.execute(
        "SELECT stage, kind, status = 'failed', duration FROM items WHERE run = ?", (run,)
    ):
        durations, fails = groups.setdefault((stage, kind), ([], [0, 0]))
        fails[0] += 1
        fails[1] += failed
        if duration is not None:
            durations.append(duration)
    rows = []
    for (stage, kind), (durations, (count, failed)) in sorted(
        groups.items(), key=lambda g: (g[0][0] is not None, g[0][0] or "", g[0][1] is not None, g[0][1] or "")
    ):
        values = np.sort(np.array(durations, np.float64))
        row = _stage_row(
            stage, kind, count, failed, len(values), float(values.sum()) if len(values) else None
        )
        if len(values):
            for name, quantile in STAGE_QUANTILES:
                row[name] = float(values[int(quantile * (len(values) - 1))])
        rows.append(row)
    return rows


def query_run_stats(conn: sqlite3.Connection, q: Query, run: str) -> tuple[list[Any], int | None]:
    """The `stats` of one run: its items by status and by stage and kind."""
    items_by_status = dict(
        conn.execute(
            "SELECT status, count(*) FROM items WHERE run = ? GROUP BY status ORDER BY status", (run,)
        )
    )
    row = {
        "run": run,
        "items": sum(items_by_status.values()),
        "items_by_status": items_by_status,
        "stages": run_stage_summaries(conn, run),
        "time": time.time(),
    }
    return [row], 1


def query_stats(conn: sqlite3.Connection, q: Query) -> tuple[list[Any], int | None]:
    """Counts by status and kind, items by stage, the most used tags, recent runs, sizes and
    the ingest rate; with `run`, that run's items by status and by stage."""
    if q.run is not None:
        return query_run_stats(conn, q, _require_run(conn, q.run, q))
    head = conn.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
    now = time.time()
    live = "" if q.deleted else "WHERE deleted = 0"  # deleted runs are left out unless asked for
    runs_by_status = dict(
        conn.execute(f"SELECT status, count(*) FROM runs {live} GROUP BY status ORDER BY status")
    )
    stages, items_by_status = stage_summaries(conn)
    artifacts_by_kind = dict(conn.execute("SELECT kind, count(*) FROM artifacts GROUP BY kind ORDER BY kind"))
    tags = [
        {"tag": t, "runs": n}
        for t, n in conn.execute(
            "SELECT tag, count(*) AS n FROM run_tags GROUP BY tag ORDER BY n DESC, tag LIMIT 10"
        )
    ]
    recent = [
        {"id": run, "name": name, "status": status, "last_ts": last_ts}
        for run, name, status, last_ts in conn.execute(
            f"SELECT run, name, status, last_ts FROM runs {live} ORDER BY last_ts DESC LIMIT 10"
        )
    ]
    points, deleted = conn.execute(
        "SELECT coalesce(sum(n_points), 0), coalesce(sum(deleted), 0) FROM runs"
    ).fetchone()
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    page_count = conn.execute("PRAGMA page_count").fetchone()[0]
    path = conn.execute("PRAGMA database_list").fetchone()[2]
    wal = 0
    if path:
        try:
            wal = os.path.getsize(path + "-wal")
        except OSError:
            wal = 0
    log_bytes, log_exact = _log_bytes(conn, head, page_size * page_count)
    row = {
        "head": head,
        "events": head,
        "runs": sum(runs_by_status.values()),
        "deleted_runs": deleted,
        "runs_by_status": runs_by_status,
        "items": sum(items_by_status.values()),
        "items_by_status": items_by_status,
        "stages": stages,
        "artifacts": sum(artifacts_by_kind.values()),
        "artifacts_by_kind": artifacts_by_kind,
        "metric_points": points,
        "metric_series": conn.execute("SELECT count(*) FROM metric_summaries").fetchone()[0],
        "top_tags": tags,
        "recent_runs": recent,
        "database_bytes": page_size * page_count,
        "wal_bytes": wal,
        "log_bytes": log_bytes,
        "log_bytes_exact": log_exact,
        "ingest_rate": _ingest_rate(conn, head, now),
        "time": now,
    }
    return [row], 1


# -- the web console's item facets ----------------------------------------------------


def console_item_filters(q: Query, where: list[str], args: list[Any]) -> None:
    """The `items` query's model and backend filters (an extension the web console uses)."""
    for column, value in (("model", q.model), ("backend", q.backend)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)


#: The item columns the console offers as filters, each with its values counted.
FACET_COLUMNS: Final = ("stage", "status", "model", "backend", "kind")


def query_item_facets(conn: sqlite3.Connection, q: Query) -> tuple[list[Any], int | None]:
    """The values of a run's item stages, statuses, models, backends and kinds, each with its
    item count, failures and mean duration: the console's item filters and per-stage summary."""
    run = _require_run(conn, q.run, q)
    rows: list[dict[str, Any]] = []
    for column in FACET_COLUMNS:
        for value, count, failed, mean in conn.execute(
            f"SELECT {column}, count(*), sum(status = 'failed'), avg(duration) FROM items"
            f" WHERE run = ? GROUP BY {column} ORDER BY {column}",
            (run,),
        ):
            rows.append({"field": column, "value": value, "count": count, "failed": failed, "mean": mean})
    return rows, len(rows)


HANDLERS: Final = {
    "runs": query_runs,
    "metrics": query_metrics,
    "compare": query_compare,
    "best": query_best,
    "items": query_items,
    "artifacts": query_artifacts,
    "search": query_search,
    "stats": query_stats,
    "item_facets": query_item_facets,
}
