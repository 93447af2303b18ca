"""`stats` by stage and kind (count, failed, duration total, mean, p50, p95), overall and per
run; and the mean of each metric's summary, which survives restarts and equals a rebuild."""

from __future__ import annotations

import io
import math
import random
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tracklog.daemon import commands
from tracklog.daemon.queries import answer
from tracklog.daemon.storage.sqlite.connect import connect
from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog
from tracklog.daemon.storage.sqlite.readmodel import SqliteReadModel
from tracklog.protocol import errors
from tracklog.protocol.events import Item, ItemData, Metrics, MetricsData
from tracklog.protocol.messages import Append, Query

STAGES = [("fetch", "doc"), ("fetch", "page"), ("translate", "doc"), (None, "doc"), ("score", None)]


def logged_items(seed: int = 3, count: int = 2000) -> list[Item]:
    rng = random.Random(seed)
    items = []
    for i in range(count):
        stage, kind = rng.choice(STAGES)
        duration = None if rng.random() < 0.1 else round(rng.expovariate(5), 6)
        status = "failed" if rng.random() < 0.07 else rng.choice(["ok", "skipped"])
        items.append(
            Item(
                run=f"r{i % 3}",
                ts=float(i),
                data=ItemData(item=f"i{i}", stage=stage, kind=kind, status=status, duration=duration),
            )
        )
    return items


def expected_stages(items: list[Item]) -> list[dict[str, Any]]:
    """The summary computed the plain way, to hold the SQL and numpy answers to."""
    groups: dict[tuple[str | None, str | None], list[ItemData]] = {}
    for item in items:
        groups.setdefault((item.data.stage, item.data.kind), []).append(item.data)
    out = []
    for (stage, kind), datas in sorted(
        groups.items(), key=lambda g: (g[0][0] is not None, g[0][0] or "", g[0][1] is not None, g[0][1] or "")
    ):
        durations = sorted(d.duration for d in datas if d.duration is not None)
        total = sum(durations) if durations else None
        out.append(
            {
                "stage": stage,
                "kind": kind,
                "count": len(datas),
                "failed": sum(d.status == "failed" for d in datas),
                "timed": len(durations),
                "total": total,
                "mean": total / len(durations) if durations else None,
                "p50": float(np.percentile(durations, 50, method="lower")) if durations else None,
                "p95": float(np.percentile(durations, 95, method="lower")) if durations else None,
            }
        )
    return out


def assert_stages_equal(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [(g["stage"], g["kind"]) for g in got] == [(w["stage"], w["kind"]) for w in want]
    for g, w in zip(got, want, strict=True):
        for key in ("count", "failed", "timed", "p50", "p95"):
            assert g[key] == w[key], (g, w, key)
        for key in ("total", "mean"):
            assert (g[key] is None) == (w[key] is None) and (w[key] is None or math.isclose(g[key], w[key]))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[Path, list[Item]]]:
    path = tmp_path / "stats.db"
    store = SqliteEventLog(path)
    store.catch_up()
    items = logged_items()
    store.append_group([Append(events=list(items))])
    store.close()
    yield path, items


def stats(path: Path, **fields: Any) -> dict[str, Any]:
    conn = connect(path, readonly=True)
    try:
        row: dict[str, Any] = answer(SqliteReadModel(conn), Query(q="stats", **fields)).rows[0]
        return row
    finally:
        conn.close()


def test_stats_summarise_items_by_stage_and_kind_over_every_run(db: tuple[Path, list[Item]]) -> None:
    path, items = db
    row = stats(path)
    assert_stages_equal(row["stages"], expected_stages(items))
    assert sum(s["count"] for s in row["stages"]) == row["items"] == len(items)
    statuses = Counter(i.data.status for i in items)
    assert (
        row["items_by_status"] == dict(sorted(statuses.items())) and "duplicate" not in row["items_by_status"]
    )


def test_stats_of_one_run_summarise_only_its_items(db: tuple[Path, list[Item]]) -> None:
    path, items = db
    row = stats(path, run="r1")
    mine = [i for i in items if i.run == "r1"]
    assert row["run"] == "r1" and row["items"] == len(mine)
    assert row["items_by_status"]["failed"] == sum(i.data.status == "failed" for i in mine)
    assert_stages_equal(row["stages"], expected_stages(mine))


def test_the_sql_and_the_numpy_summaries_agree_on_a_single_run(tmp_path: Path) -> None:
    """Overall (SQL on the index) and per run (numpy) are two computations of one definition."""
    path = tmp_path / "one.db"
    store = SqliteEventLog(path)
    store.catch_up()
    items = [Item(run="only", ts=i.ts, data=i.data) for i in logged_items(seed=11, count=3000)]
    store.append_group([Append(events=list(items))])
    store.close()
    # Equal but for the order of summation of the totals (numpy sums pairwise).
    assert_stages_equal(stats(path)["stages"], stats(path, run="only")["stages"])


def test_stats_of_an_unknown_run_are_not_found(db: tuple[Path, list[Item]]) -> None:
    with pytest.raises(errors.NotFound, match="no run 'nope'"):
        stats(db[0], run="nope")


def test_stats_without_items_have_no_stages(tmp_path: Path) -> None:
    store = SqliteEventLog(tmp_path / "empty.db")
    store.catch_up()
    store.close()
    assert stats(tmp_path / "empty.db")["stages"] == []


# -- the mean of metric summaries -----------------------------------------------------


def points(run: str, values: list[float], first_step: int = 0) -> list[Metrics]:
    return [
        Metrics(run=run, ts=float(first_step + i), data=MetricsData(values={"v": v}, step=first_step + i))
        for i, v in enumerate(values)
    ]


def run_metrics(path: Path, run: str) -> dict[str, Any]:
    conn = connect(path, readonly=True)
    try:
        metrics: dict[str, Any] = answer(SqliteReadModel(conn), Query(q="run", run=run)).rows[0]["metrics"]
        return metrics
    finally:
        conn.close()


def test_the_mean_leaves_nan_out_and_survives_a_restart_and_equals_a_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "mean.db"
    first = [0.1 * i for i in range(1500)] + [math.nan]
    second = [math.nan, 3.0, -7.25] + [1e-3 * i for i in range(900)]
    store = SqliteEventLog(path)
    store.catch_up()
    store.append_group([Append(events=list(points("r", first)))])
    store.close()
    store = SqliteEventLog(path)  # a new process: the series' sum is read back from its summary row
    store.catch_up()
    store.append_group([Append(events=list(points("r", second, 10_000)))])
    store.append_group([Append(events=list(points("inf", [1.0, math.inf, -math.inf])))])
    store.close()
    finite = [v for v in first + second if not math.isnan(v)]
    summary = run_metrics(path, "r")["v"]
    assert summary["count"] == len(first) + len(second)
    assert math.isclose(summary["mean"], sum(finite) / len(finite), rel_tol=1e-12)
    assert math.isnan(run_metrics(path, "inf")["v"]["mean"])  # inf + -inf: no mean, said as NaN
    out = io.StringIO()
    assert commands.verify(path, out) == 0, out.getvalue()


def test_a_database_of_the_previous_projection_version_is_caught_up_with_the_mean(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = SqliteEventLog(path)
    store.catch_up()
    store.append_group([Append(events=list(points("r", [1.0, 2.0, 6.0])))])
    store.close()
    # Make it look like version 4: metric_summaries without sum/summed.
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE metric_summaries DROP COLUMN sum")
        conn.execute("ALTER TABLE metric_summaries DROP COLUMN summed")
        conn.execute("UPDATE meta SET value = 4 WHERE key = 'projection_version'")
    store = SqliteEventLog(path)
    store.catch_up()
    store.close()
    assert run_metrics(path, "r")["v"]["mean"] == 3.0
    out = io.StringIO()
    assert commands.verify(path, out) == 0, out.getvalue()
