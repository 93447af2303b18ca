"""Metrics: a run's histories (read from their chunks, downsampled from the chunks' tiers
or point by point), metric summaries side by side (`compare`), and the chunk reads of an
export.

A series is stored as chunks of CHUNK_POINTS points, each four little-endian columns
(steps int64, values float64, epochs int64, ts float64). Reading one is a few hundred
blob reads and `numpy.frombuffer`; no row per point ever crosses into Python. The
downsampling itself is pure numpy (`daemon/series.py`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Final

import numpy as np

from tracklog.protocol import errors
from tracklog.protocol.messages import Query

from ...series import F64, Series, extremes_index
from ..readmodel import MAX_RUNS, ChunkColumns
from .dialect import Connection
from .rows import SUMMARY_COLUMNS, marks, require_run, summary_row
from .runref import resolve_live
from .schema import NO_EPOCH

#: Most points a `metrics` row holds when max_points is not given.
MAX_SERIES_POINTS: Final = 10_000_000


def query_metrics(conn: Connection, q: Query) -> tuple[list[Any], int | None]:
    """One row per metric of a run: columnar steps, values, epochs, ts; downsampled on request.

    Each row also carries the metric's `summary` (count, last, min, max and where, over the
    whole series), so a reader of a downsampled or step-ranged history still knows the
    true last value. Asking for a metric the run has not logged is `not_found`.
    """
    run = require_run(conn, q.run, q)
    if q.max_points is not None and q.max_points < 2:
        raise errors.BadQuery(
            "max_points: expected 2 or more (the first and the last points are always kept);"
            " leave it out for every point",
            q.ref,
        )
    if q.step_from is not None and q.step_to is not None and q.step_from > q.step_to:
        raise errors.BadQuery("step_from: greater than step_to", q.ref)
    summaries = {
        name: summary_row(tuple(summary))
        for name, *summary in conn.execute(
            f"SELECT name, {SUMMARY_COLUMNS} FROM metric_summaries WHERE run = ? ORDER BY name", (run,)
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


def _epoch_count(conn: Connection, run: str, name: str) -> int:
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


def query_compare(conn: Connection, q: Query) -> tuple[list[Any], int | None]:
    """Per run and metric: last, min, max, where min and max were reached, count, epochs."""
    refs = q.runs or ([q.run] if q.run else [])
    if not refs:
        raise errors.BadQuery("runs: required for q 'compare' (a list of run ids)", q.ref)
    if len(refs) > MAX_RUNS:
        raise errors.BadQuery(f"runs: at most {MAX_RUNS}", q.ref)
    runs = list(dict.fromkeys(resolve_live(conn, ref, q.deleted, "runs", q.ref).id for ref in refs))
    names_of = {
        run: name
        for run, name in conn.execute(f"SELECT run, name FROM runs WHERE run IN ({marks(runs)})", runs)
    }
    for run in runs:
        if run not in names_of:
            raise errors.NotFound(f"runs: no run '{run[:128]}'", q.ref)
    rows: list[dict[str, Any]] = []
    wanted = q.metrics if q.metrics is not None else q.names
    for run in runs:
        sql = f"SELECT name, {SUMMARY_COLUMNS} FROM metric_summaries WHERE run = ?"
        args: list[Any] = [run]
        if wanted is not None:
            sql += f" AND name IN ({marks(wanted)})"
            args.extend(wanted)
        for name, *summary in conn.execute(sql + " ORDER BY name", args):
            rows.append(
                {
                    "run": run,
                    "run_name": names_of[run],
                    "metric": name,
                    **summary_row(tuple(summary)),
                    "epochs": _epoch_count(conn, run, name),
                }
            )
    return rows, len(rows)


def read_series(
    conn: Connection, run: str, name: str, step_from: int | None = None, step_to: int | None = None
) -> Series:
    """The points of one metric of one run, in logging order, within [step_from, step_to]."""
    sql = "SELECT steps, vals, epochs, ts FROM metric_chunks WHERE run = ? AND name = ?"
    args: list[Any] = [run, name]
    # Chunks wholly outside the step range are never read.
    if step_from is not None:
        sql += " AND step_max >= ?"
        args.append(step_from)
    if step_to is not None:
        sql += " AND step_min <= ?"
        args.append(step_to)
    sql += " ORDER BY chunk"
    return series_of_chunks(conn.execute(sql, args).fetchall(), step_from, step_to)


def series_of_chunks(
    blobs: Sequence[Sequence[bytes]], step_from: int | None = None, step_to: int | None = None
) -> Series:
    """One series from its chunks' (steps, vals, epochs, ts) blobs in logging order, cut to
    [step_from, step_to] (the chunks may reach past it at either end)."""
    if not blobs:
        empty_i = np.empty(0, np.int64)
        empty_f = np.empty(0, np.float64)
        return Series(empty_i, empty_f, empty_i, empty_f)
    series = Series(
        np.frombuffer(b"".join(b[0] for b in blobs), np.int64),
        np.frombuffer(b"".join(b[1] for b in blobs), np.float64),
        np.frombuffer(b"".join(b[2] for b in blobs), np.int64),
        np.frombuffer(b"".join(b[3] for b in blobs), np.float64),
    )
    if step_from is not None or step_to is not None:
        keep = np.ones(len(series), dtype=bool)
        if step_from is not None:
            keep &= series.steps >= step_from
        if step_to is not None:
            keep &= series.steps <= step_to
        if not keep.all():
            series = series.take(np.flatnonzero(keep))
    return series


def _end_point(conn: Connection, run: str, name: str, chunk: int, at: int) -> tuple[int, float, int, float]:
    """Point `at` of one chunk (step, value, epoch, ts), read as four 8-byte slices of its blobs."""
    start = at * 8 + 1
    row = conn.execute(
        "SELECT substr(steps, ?, 8), substr(vals, ?, 8), substr(epochs, ?, 8), substr(ts, ?, 8)"
        " FROM metric_chunks WHERE run = ? AND name = ? AND chunk = ?",
        (start, start, start, start, run, name, chunk),
    ).fetchone()
    return (
        int(np.frombuffer(row[0], np.int64)[0]),
        float(np.frombuffer(row[1], np.float64)[0]),
        int(np.frombuffer(row[2], np.int64)[0]),
        float(np.frombuffer(row[3], np.float64)[0]),
    )


def downsample_from_tiers(
    conn: Connection,
    run: str,
    name: str,
    max_points: int,
    step_from: int | None = None,
    step_to: int | None = None,
) -> tuple[Series, int] | None:
    """Downsample a long series from its chunks' precomputed extremes, reading no points.

    As `extremes_index` does point by point: the first and the last point are kept (two
    8-byte slices of the end chunks' blobs), and the chunks are cut into
    (max_points - 2) // 2 buckets of whole chunks, from each of which the lowest and the
    highest point are kept. Returns (series, points in range), or None when the tiers
    cannot answer: no more chunks than buckets, or a step range that cuts through a
    chunk (those are read point by point instead).
    """
    sql = (
        "SELECT n, step_min, step_max, lo, lo_at, lo_step, lo_epoch, lo_ts,"
        " hi, hi_at, hi_step, hi_epoch, hi_ts, chunk"
        " FROM metric_tiers WHERE run = ? AND name = ?"
    )
    args: list[Any] = [run, name]
    if step_from is not None:
        sql += " AND step_max >= ?"
        args.append(step_from)
    if step_to is not None:
        sql += " AND step_min <= ?"
        args.append(step_to)
    rows = conn.execute(sql + " ORDER BY chunk", args).fetchall()
    buckets = (max_points - 2) // 2
    if not rows or len(rows) <= buckets:
        return None  # a chunk per bucket or less: reading the points gives a finer answer
    if (step_from is not None and any(r[1] < step_from for r in rows)) or (
        step_to is not None and any(r[2] > step_to for r in rows)
    ):
        return None
    columns = list(zip(*rows, strict=True))
    total = int(sum(columns[0]))
    last_at = rows[-1][0] - 1
    # Keyed by (index of the chunk among rows, index in the chunk): sorting gives logging order.
    picks: dict[tuple[int, int], tuple[int, float, int, float]] = {
        (0, 0): _end_point(conn, run, name, rows[0][13], 0),
        (len(rows) - 1, last_at): _end_point(conn, run, name, rows[-1][13], last_at),
    }
    if buckets > 0:
        per = -(-len(rows) // buckets)
        size = buckets * per

        def grid(values: tuple[Any, ...], fill: float) -> F64:
            out = np.full(size, fill)
            out[: len(values)] = [fill if v is None else v for v in values]
            return out.reshape(buckets, per)

        low = grid(columns[3], np.inf).argmin(axis=1)
        high = grid(columns[8], -np.inf).argmax(axis=1)
        base = np.arange(buckets) * per
        for chunks, value_col in ((base + low, 3), (base + high, 8)):
            for chunk in chunks.tolist():
                if chunk >= len(rows) or rows[chunk][value_col] is None:
                    continue
                row = rows[chunk]
                at, step, epoch, ts = row[value_col + 1 : value_col + 5]
                picks[(chunk, at)] = (step, row[value_col], epoch, ts)
    ordered = [picks[key] for key in sorted(picks)]
    series = Series(
        np.array([p[0] for p in ordered], np.int64),
        np.array([p[1] for p in ordered], np.float64),
        np.array([p[2] for p in ordered], np.int64),
        np.array([p[3] for p in ordered], np.float64),
    )
    return series, total


# -- export reads ------------------------------------------------------------------------


def metric_names(conn: Connection, run: str) -> list[tuple[str, int]]:
    """The run's metrics and their point counts, by name."""
    return list(conn.execute("SELECT name, count FROM metric_summaries WHERE run = ? ORDER BY name", (run,)))


def metric_chunks(conn: Connection, run: str, name: str) -> Iterator[ChunkColumns]:
    """Each chunk of a metric as (steps, values, epochs, ts) lists, in logging order."""
    for steps, vals, epochs, ts in conn.execute(
        "SELECT steps, vals, epochs, ts FROM metric_chunks WHERE run = ? AND name = ? ORDER BY chunk",
        (run, name),
    ):
        epoch_list: list[int | None] = np.frombuffer(epochs, np.int64).tolist()
        if NO_EPOCH in epoch_list:
            epoch_list = [None if e == NO_EPOCH else e for e in epoch_list]
        yield (
            np.frombuffer(steps, np.int64).tolist(),
            np.frombuffer(vals, np.float64).tolist(),
            epoch_list,
            np.frombuffer(ts, np.float64).tolist(),
        )
