"""A chunk's tier row (its lowest and highest point) is the one numpy's NaN-skipping
argmin and argmax pick, whatever the values: the fast path for chunks without NaN must
not change a row that `rebuild` and `verify` compare byte for byte."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tracklog.daemon.storage.sqlcommon.tables import tier_row

NAN, INF = float("nan"), float("inf")


def chunk_of(values: list[float]) -> tuple[Any, ...]:
    n = len(values)
    steps = np.arange(10, 10 + n, dtype=np.int64) * 3
    epochs = np.arange(n, dtype=np.int64) - 1
    ts = np.arange(n, dtype=np.float64) * 0.5 + 1_767_225_600.25
    return (
        "run",
        "loss",
        7,
        n,
        0,
        n,
        steps.tobytes(),
        np.array(values, np.float64).tobytes(),
        epochs.tobytes(),
        ts.tobytes(),
    )


def reference(chunk: tuple[Any, ...]) -> tuple[Any, ...]:
    """The row as numpy's nan-functions give it, column by column."""
    run, name, number, n, step_min, step_max, steps, vals, epochs, ts = chunk
    values = np.frombuffer(vals, np.float64)
    if np.isnan(values).all():
        return (run, name, number, n, step_min, step_max, *(None,) * 10)
    out: list[Any] = [run, name, number, n, step_min, step_max]
    for at in (int(np.nanargmin(values)), int(np.nanargmax(values))):
        out += [
            float(values[at]),
            at,
            int(np.frombuffer(steps, np.int64)[at]),
            int(np.frombuffer(epochs, np.int64)[at]),
            float(np.frombuffer(ts, np.float64)[at]),
        ]
    return tuple(out)


@pytest.mark.parametrize(
    "values",
    [
        [0.5],
        [NAN],
        [NAN, NAN, NAN],
        [],
        [3.0, 1.0, 1.0, 2.0, 3.0],  # ties: the first of each
        [2.0, NAN, -1.0, NAN, 5.0],
        [NAN, 4.0],
        [INF, -INF, 0.0],
        [NAN, INF, INF],  # nanargmin reads NaN as +inf for the lowest: the first +inf here
        [-INF, NAN, -INF],
        [-0.0, 0.0],
        [1e308, -1e308],
    ],
)
def test_tier_row_picks_the_points_numpys_nan_skipping_argmin_and_argmax_pick(values: list[float]) -> None:
    chunk = chunk_of(values)
    assert repr(tier_row(chunk)) == repr(reference(chunk))


def test_tier_row_matches_numpy_on_random_chunks_with_and_without_nan() -> None:
    generator = np.random.default_rng(20261201)
    for _ in range(300):
        n = int(generator.integers(1, 1025))
        values = generator.normal(size=n)
        if generator.random() < 0.5:
            values[generator.random(n) < generator.random()] = NAN
        if generator.random() < 0.2:
            values[generator.integers(0, n)] = INF * generator.choice([-1, 1])
        if generator.random() < 0.2:
            values = np.round(values)  # many ties
        chunk = chunk_of(values.tolist())
        assert repr(tier_row(chunk)) == repr(reference(chunk))
