"""Metric series as numpy columns, and their downsampling so that spikes survive.

Pure: no storage here. The SQLite backend reads a series from its chunks
(`storage/sqlite/metrics.py`) and downsamples it with `extremes_index`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .storage.sqlcommon.schema import NO_EPOCH

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
