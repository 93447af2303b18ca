"""Stats: counts by status and kind, items by stage with duration quantiles, the most used
tags, recent runs, sizes and the ingest rate; or one run's items by stage.

Only the sizes differ between databases: each backend measures its own (`Sizes`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final, TypeAlias, get_args

import numpy as np

from tracklog.protocol.events import ItemStatus
from tracklog.protocol.messages import Query

from .dialect import Connection
from .rows import require_run


def _ingest_rate(conn: Connection, head: int, now: float, window: float = 60.0) -> float:
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


#: A backend's sizes: `database_bytes`, `wal_bytes`, `log_bytes`, `log_bytes_exact`, from
#: its connection and the log's head.
Sizes: TypeAlias = Callable[[Connection, int], dict[str, Any]]


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


def stage_summaries(conn: Connection) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Items by (stage, kind) over every run: count, failed, and their durations' total,
    mean, p50 and p95; and the items by status (from the same scan).

    Computed in SQL on the covering index `items_stage(stage, kind, duration, status)`:
    the counts and sums are one scan of the index; each quantile is one seek to its rank
    inside a (stage, kind) range, which the index keeps ordered by duration. A quantile q
    is the duration at rank floor(q * (n - 1)) of the n durations in order (numpy's
    "lower" method): always a duration that was logged.
    """
    by_status = ", ".join(f"sum(CASE WHEN status = '{status}' THEN 1 ELSE 0 END)" for status in ITEM_STATUSES)
    rows = []
    items_by_status = dict.fromkeys(ITEM_STATUSES, 0)
    for stage, kind, count, timed, total, *statuses in conn.execute(
        f"SELECT stage, kind, count(*), count(duration), sum(duration), {by_status}"
        " FROM items GROUP BY stage, kind ORDER BY stage NULLS FIRST, kind NULLS FIRST"
    ):
        counts = dict(zip(ITEM_STATUSES, statuses, strict=True))
        rows.append(_stage_row(stage, kind, count, counts["failed"], timed, total))
        for status, n in counts.items():
            items_by_status[status] += n
    for row in rows:
        for name, quantile in STAGE_QUANTILES:
            if row["timed"]:
                row[name] = conn.execute(
                    "SELECT duration FROM items WHERE stage IS NOT DISTINCT FROM ?"
                    " AND kind IS NOT DISTINCT FROM ? AND duration IS NOT NULL"
                    " ORDER BY duration LIMIT 1 OFFSET ?",
                    (row["stage"], row["kind"], int(quantile * (row["timed"] - 1))),
                ).fetchone()[0]
    return rows, {status: n for status, n in sorted(items_by_status.items()) if n}


def run_stage_summaries(conn: Connection, run: str) -> list[dict[str, Any]]:
    """`stage_summaries` of one run's items, computed with numpy over the run's durations
    (read through the `items_run` index); the quantiles are the same "lower" ranks."""
    groups: dict[tuple[str | None, str | None], tuple[list[float], list[int]]] = {}
    for stage, kind, failed, duration in conn.execute(
        "SELECT stage, kind, CASE WHEN status = 'failed' THEN 1 ELSE 0 END, duration"
        " FROM items WHERE run = ?",
        (run,),
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


def query_run_stats(conn: Connection, q: Query, run: str) -> tuple[list[Any], int | None]:
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


def query_stats(conn: Connection, q: Query, sizes: Sizes) -> tuple[list[Any], int | None]:
    """Counts by status and kind, items by stage, the most used tags, recent runs, sizes (as
    the backend measures them) and the ingest rate; with `run`, that run's items by status
    and by stage."""
    if q.run is not None:
        return query_run_stats(conn, q, require_run(conn, q.run, q))
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
            f"SELECT run, name, status, last_ts FROM runs {live} ORDER BY last_ts DESC, run LIMIT 10"
        )
    ]
    points, deleted = conn.execute(
        "SELECT coalesce(sum(n_points), 0), coalesce(sum(deleted), 0) FROM runs"
    ).fetchone()
    row = {
        "head": head,
        "events": head,
        "runs": sum(runs_by_status.values()),
        # int(): PostgreSQL sums integers as numeric (a Decimal, which JSON would carry as a string)
        "deleted_runs": int(deleted),
        "runs_by_status": runs_by_status,
        "items": sum(items_by_status.values()),
        "items_by_status": items_by_status,
        "stages": stages,
        "artifacts": sum(artifacts_by_kind.values()),
        "artifacts_by_kind": artifacts_by_kind,
        "metric_points": int(points),
        "metric_series": conn.execute("SELECT count(*) FROM metric_summaries").fetchone()[0],
        "top_tags": tags,
        "recent_runs": recent,
        **sizes(conn, head),
        "ingest_rate": _ingest_rate(conn, head, now),
        "time": now,
    }
    return [row], 1
