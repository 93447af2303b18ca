"""Metric series: chunk reads, min/max downsampling, and the per-chunk extremes (tiers)."""

from __future__ import annotations

import io
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracklog.daemon import commands
from tracklog.daemon.series import extremes_index
from tracklog.daemon.storage.sqlcommon.metrics import downsample_from_tiers, query_metrics, read_series
from tracklog.daemon.storage.sqlcommon.schema import CHUNK_POINTS
from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog
from tracklog.protocol import errors
from tracklog.protocol.events import Metrics, MetricsData
from tracklog.protocol.messages import Append, Query

POINTS = 30 * CHUNK_POINTS
SPIKE_AT = 12_345


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "series.db"
    store = SqliteEventLog(path)
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
    values = np.array([9.0, nan, 1.0, 5.0, nan, nan, nan, nan, nan, -2.0, 0.0, 3.0, 7.0, nan])
    # The ends, then buckets [1..4], [5..8] (all NaN: its first point), [9..12].
    assert extremes_index(values, 8).tolist() == [0, 2, 3, 5, 9, 12, 13]
    assert extremes_index(values, 100).tolist() == list(range(14))


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.floats(allow_nan=True, allow_infinity=False, width=64), min_size=1, max_size=300),
    max_points=st.integers(min_value=2, max_value=400),
)
def test_point_by_point_downsampling_keeps_the_ends_and_the_extremes(
    values: list[float], max_points: int
) -> None:
    array = np.array(values, dtype=np.float64)
    kept = extremes_index(array, max_points).tolist()
    n = len(values)
    assert len(kept) <= max_points and kept == sorted(set(kept))
    assert kept[0] == 0 and kept[-1] == n - 1
    inner = array[1 : n - 1]
    if max_points >= 4 and n > max_points and not np.isnan(inner).all():
        kept_values = array[kept]
        assert np.nanmin(inner) in kept_values and np.nanmax(inner) in kept_values


@pytest.mark.parametrize("max_points", [2, 3, 4, 5, 10, 61, 1000, 5000])
@pytest.mark.parametrize("step_range", [False, True])
def test_downsampled_histories_start_and_end_with_the_series_at_any_max_points(
    db: Path, max_points: int, step_range: bool
) -> None:
    """Both the tiers (whole series) and the point read (a step range) keep the first and last point."""
    query = Query(q="metrics", run="r", max_points=max_points)
    if step_range:
        query = Query(q="metrics", run="r", max_points=max_points, step_from=0, step_to=POINTS)
    with sqlite3.connect(db) as conn:
        [row] = query_metrics(conn, query)[0]
    assert 2 <= len(row["steps"]) <= max_points and row["downsampled"] is True
    assert row["steps"][0] == 0 and row["ts"][0] == 1000.0
    assert row["steps"][-1] == POINTS - 1 and row["values"][-1] == math.sin((POINTS - 1) / 500)
    assert row["epochs"][-1] == (POINTS - 1) // 5000
    if max_points >= 4:
        assert 100.0 in row["values"] and -100.0 in row["values"]
    assert row["summary"]["last_step"] == POINTS - 1 and row["summary"]["count"] == POINTS


def test_five_points_over_ten_thousand_steps_begin_at_step_0_and_end_at_step_9999(tmp_path: Path) -> None:
    """The report: `--max-points 5` over steps 0..9999 answered steps 2, 5112, 5123, 9980."""
    store = SqliteEventLog(tmp_path / "t.db")
    store.catch_up()
    rng = np.random.default_rng(7)
    events = [
        Metrics(run="r", ts=float(i), data=MetricsData(values={"v": float(v)}, step=i))
        for i, v in enumerate(rng.normal(size=10_000))
    ]
    store.append_group([Append(events=events)])
    store.close()
    with sqlite3.connect(tmp_path / "t.db") as conn:
        [row] = query_metrics(conn, Query(q="metrics", run="r", max_points=5))[0]
    assert row["steps"][0] == 0 and row["steps"][-1] == 9999 and len(row["steps"]) <= 5


def test_a_max_points_below_two_is_a_bad_query(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        for max_points in (1, 0, -3):
            with pytest.raises(errors.BadQuery, match="max_points: expected 2 or more"):
                query_metrics(conn, Query(q="metrics", run="r", max_points=max_points))


def test_asking_for_a_metric_the_run_has_not_logged_is_not_found(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        with pytest.raises(errors.NotFound, match="has no metric 'nope'"):
            query_metrics(conn, Query(q="metrics", run="r", names=["v", "nope"]))
        assert [r["name"] for r in query_metrics(conn, Query(q="metrics", run="r", names=["v"]))[0]] == ["v"]


def test_a_step_range_reads_only_those_points(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        series = read_series(conn, "r", "v", 2000, 2010)
    assert series.steps.tolist() == list(range(2000, 2011))


def test_verify_holds_the_tiers_equal_to_a_rebuild(db: Path) -> None:
    out = io.StringIO()
    assert commands.verify(db, out) == 0, out.getvalue()
    assert "equal a rebuild" in out.getvalue()
