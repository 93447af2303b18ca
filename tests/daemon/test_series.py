"""Metric series: chunk reads, min/max downsampling, and the per-chunk extremes (tiers)."""

from __future__ import annotations

import io
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tracklog.daemon import commands
from tracklog.daemon.reads import query_metrics
from tracklog.daemon.schema import CHUNK_POINTS
from tracklog.daemon.series import downsample_from_tiers, extremes_index, read_series
from tracklog.daemon.store import LogStore
from tracklog.protocol.events import Metrics, MetricsData
from tracklog.protocol.messages import Append, Query

POINTS = 30 * CHUNK_POINTS
SPIKE_AT = 12_345


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "series.db"
    store = LogStore(path)
    store.catch_up()
    values = [math.sin(i / 500) for i in range(POINTS)]
    values[SPIKE_AT] = 100.0
    values[20_000] = -100.0
    values[5] = math.nan
    events = [
        Metrics(run="r", ts=1000.0 + i, data=MetricsData(values={"v": v}, step=i, epoch=i // 5000))
        for i, v in enumerate(values)
    ]
    for start in range(0, len(events), 7_000):  # chunks span transactions
        store.append_group([Append(events=events[start : start + 7_000])])
    store.close()
    yield path


def test_downsampling_from_tiers_keeps_both_spikes_in_step_order(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        answer = downsample_from_tiers(conn, "r", "v", 10)
    assert answer is not None
    series, points = answer
    assert points == POINTS and 2 <= len(series) <= 10
    values = series.values.tolist()
    assert 100.0 in values and -100.0 in values
    assert int(series.steps[values.index(100.0)]) == SPIKE_AT
    assert int(series.epochs[values.index(100.0)]) == SPIKE_AT // 5000
    assert series.ts[values.index(100.0)] == 1000.0 + SPIKE_AT
    assert list(series.steps) == sorted(series.steps)


def test_tiers_give_way_to_a_point_read_when_buckets_are_smaller_than_two_chunks(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        assert downsample_from_tiers(conn, "r", "v", 1000) is None
        assert downsample_from_tiers(conn, "r", "v", 10, step_from=100) is None


def test_the_metrics_query_answers_the_same_spikes_either_way(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        tiered = query_metrics(conn, Query(q="metrics", run="r", max_points=10))[0][0]
        exact = query_metrics(conn, Query(q="metrics", run="r", max_points=10, step_from=0, step_to=POINTS))[
            0
        ][0]
    for row in (tiered, exact):
        assert row["points"] == POINTS and len(row["values"]) <= 10
        assert max(row["values"]) == 100.0 and min(row["values"]) == -100.0


def test_point_by_point_extremes_skip_nan_unless_a_bucket_is_all_nan() -> None:
    nan = math.nan
    values = np.array([nan, 1.0, 5.0, nan, nan, nan, nan, nan, -2.0, 0.0, 3.0, 1.0])
    assert extremes_index(values, 6).tolist() == [1, 2, 4, 8, 10]  # the all-NaN bucket: its first point
    assert extremes_index(values, 100).tolist() == list(range(12))


def test_a_step_range_reads_only_those_points(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        series = read_series(conn, "r", "v", 2000, 2010)
    assert series.steps.tolist() == list(range(2000, 2011))


def test_verify_holds_the_tiers_equal_to_a_rebuild(db: Path) -> None:
    out = io.StringIO()
    assert commands.verify(db, out) == 0, out.getvalue()
    assert "equal a rebuild" in out.getvalue()
