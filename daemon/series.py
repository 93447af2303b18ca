"""Metric series read from their chunks with numpy, and downsampled so that spikes survive.

A series is stored as chunks of CHUNK_POINTS points, each four little-endian columns
(steps int64, values float64, epochs int64, ts float64). Reading one is a few hundred
blob reads and `numpy.frombuffer`; no row per point ever crosses into Python.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .schema import NO_EPOCH

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass
class Series:
    steps: I64
    values: F64
    epochs: I64
    ts: F64

    def __len__(self) -> int:
        return len(self.steps)

    def take(self, index: npt.NDArray[np.intp] | slice) -> Series:
        return Series(self.steps[index], self.values[index], self.epochs[index], self.ts[index])

    def columns(self) -> dict[str, list[Any]]:
        """The series as the plain lists of a `metrics` row (epochs None where none was logged)."""
        epochs = self.epochs.tolist()
        if (self.epochs == NO_EPOCH).any():
            epochs = [None if e == NO_EPOCH else e for e in epochs]
        return {
            "steps": self.steps.tolist(),
            "values": self.values.tolist(),
            "epochs": epochs,
            "ts": self.ts.tolist(),
        }


def read_series(
    conn: sqlite3.Connection, run: str, name: str, step_from: int | None = None, step_to: int | None = None
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
    rows = conn.execute(sql, args).fetchall()
    if not rows:
        empty_i = np.empty(0, np.int64)
        empty_f = np.empty(0, np.float64)
        return Series(empty_i, empty_f, empty_i, empty_f)
    series = Series(
        np.frombuffer(b"".join(r[0] for r in rows), np.int64),
        np.frombuffer(b"".join(r[1] for r in rows), np.float64),
        np.frombuffer(b"".join(r[2] for r in rows), np.int64),
        np.frombuffer(b"".join(r[3] for r in rows), np.float64),
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


def extremes_index(values: F64, max_points: int) -> npt.NDArray[np.intp]:
    """Indexes of the points to keep so at most max_points remain: the first, the last, and
    each bucket's min and max in between.

    The first and last points are always kept (a plot starts and ends where the series
    does, and the last point is the value a reader expects to see). The points between
    are cut into (max_points - 2) // 2 buckets of equal length; from each, the points
    where it is lowest and highest are kept (in their order), so a spike of one point
    survives any reduction to 4 points or more. NaN is never a bucket's min or max unless
    the bucket is all NaN. max_points must be 2 or more.
    """
    n = len(values)
    if n <= max_points:
        return np.arange(n)
    if max_points < 2:
        raise ValueError("max_points: expected 2 or more")
    buckets = (max_points - 2) // 2
    ends = np.array([0, n - 1], dtype=np.intp)
    if buckets == 0:
        return ends
    inner = values[1 : n - 1]
    size = -(-len(inner) // buckets)  # ceil
    padded = np.full(buckets * size, np.nan)
    padded[: len(inner)] = inner
    grid = padded.reshape(buckets, size)
    nan = np.isnan(grid)
    low = np.where(nan, np.inf, grid).argmin(axis=1)
    high = np.where(nan, -np.inf, grid).argmax(axis=1)
    base = np.arange(buckets) * size
    picked = np.concatenate([base + low, base + high])
    picked = picked[picked < len(inner)] + 1
    return np.unique(np.concatenate([ends, picked]))


def _end_point(
    conn: sqlite3.Connection, run: str, name: str, chunk: int, at: int
) -> tuple[int, float, int, float]:
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
    conn: sqlite3.Connection,
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
