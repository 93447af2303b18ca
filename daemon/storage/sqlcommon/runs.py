"""Runs: pages of run summaries by filter and order, one run in full, run references,
the best run by a metric, and every run's pipeline and status for the hub.

Filters and orderings go through `filters.compile_filter`, so every value reaches the
database as a bound parameter, and are spelled for the connection's dialect.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from tracklog.protocol import errors
from tracklog.protocol.messages import Query

from ..readmodel import DEFAULT_RUNS, MAX_RUNS
from .dialect import SQLITE, Connection, Dialect
from .filters import compile_filter
from .rows import (
    RUN_SUMMARY_COLUMNS,
    SUMMARY_COLUMNS,
    artifact_rows,
    epoch_or_none,
    marks,
    page,
    run_row,
    summary_row,
)
from .runref import resolve


def query_runs(conn: Connection, q: Query, dialect: Dialect = SQLITE) -> tuple[list[Any], int | None]:
    """A page of run summaries matching the filter, in the order asked, and the total."""
    limit, offset = page(q, DEFAULT_RUNS, MAX_RUNS)
    try:
        compiled = compile_filter(q.filter, q.order_by, dialect)
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
            f"SELECT {RUN_SUMMARY_COLUMNS} FROM runs AS r WHERE r.run IN ({marks(ids)})", ids
        )
    }
    runs = [run_row(found[run]) for run in ids]
    if runs:
        ids = [r["id"] for r in runs]
        by_id = {r["id"]: r for r in runs}
        for r in runs:
            r["tags"] = []
            r["tag_values"] = {}
            r["metrics"] = {}
        for run, tag, value in conn.execute(
            f"SELECT run, tag, value FROM run_tags WHERE run IN ({marks(ids)}) ORDER BY run, tag", ids
        ):
            by_id[run]["tags"].append(tag)
            if value is not None:
                by_id[run]["tag_values"][tag] = value
        for run, name, last, count in conn.execute(
            f"SELECT run, name, last, count FROM metric_summaries WHERE run IN ({marks(ids)})"
            " ORDER BY run, name",
            ids,
        ):
            by_id[run]["metrics"][name] = math.nan if last is None and count else last
    return runs, total


def query_run(conn: Connection, q: Query) -> tuple[list[Any], int | None]:
    """One run: its summary, tags, every metric's summary (with `last_ts`) and artifacts."""
    if not q.run:
        raise errors.BadQuery("run: required for q 'run'", q.ref)
    run = resolve(conn, q.run, "run", q.ref).id
    row = conn.execute(f"SELECT {RUN_SUMMARY_COLUMNS} FROM runs AS r WHERE r.run = ?", (run,)).fetchone()
    out = run_row(row)
    tags = conn.execute("SELECT tag, value FROM run_tags WHERE run = ? ORDER BY tag", (run,)).fetchall()
    out["tags"] = [tag for tag, _ in tags]
    out["tag_values"] = {tag: value for tag, value in tags if value is not None}
    out["metrics"] = {
        name: summary_row(tuple(summary), with_last_ts=True)
        for name, *summary in conn.execute(
            f"SELECT name, {SUMMARY_COLUMNS} FROM metric_summaries WHERE run = ? ORDER BY name", (run,)
        )
    }
    # The run's own id is not repeated in each of its artifacts.
    out["artifacts"] = [
        {key: value for key, value in artifact.items() if key != "run"}
        for artifact in artifact_rows(conn, run)
    ]
    return [out], 1


def query_resolve(conn: Connection, q: Query) -> tuple[list[Any], int | None]:
    """The run a reference names (`run`: an id, a unique id prefix or a name), and how it
    matched: `{ref, id, name, deleted, by, same_name}`; not_found, or bad_query when ambiguous."""
    return [msgspec.structs.asdict(resolve(conn, q.run, "run", q.ref))], 1


def query_best(conn: Connection, q: Query, dialect: Dialect = SQLITE) -> tuple[list[Any], int | None]:
    """The run with the lowest (min) or highest (max) value of a metric ever logged; earlier run on a tie."""
    if not q.metric:
        raise errors.BadQuery("metric: required for q 'best'", q.ref)
    mode = q.mode or "min"
    if mode not in ("min", "max"):
        raise errors.BadQuery("mode: expected 'min' or 'max'", q.ref)
    try:
        compiled = compile_filter(q.filter, dialect=dialect)
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
    run = run_row(row[:-4])
    value, step, epoch, count = row[-4:]
    return [
        {
            "run": run["id"],
            "name": run["name"],
            "metric": q.metric,
            "mode": mode,
            "value": value,
            "step": step,
            "epoch": epoch_or_none(epoch),
            "count": count,
            "summary": run,
        }
    ], 1


def run_pipelines(conn: Connection) -> tuple[dict[str, str | None], dict[str, str]]:
    """Every run's pipeline and status, for the hub's filters and the liveness check."""
    pipelines: dict[str, str | None] = {}
    statuses: dict[str, str] = {}
    for run, pipeline, status in conn.execute("SELECT run, pipeline, status FROM runs"):
        pipelines[run] = pipeline
        statuses[run] = status
    return pipelines, statuses
