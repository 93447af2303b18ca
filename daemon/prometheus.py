"""The daemon's counters and gauges as Prometheus text (`GET /metrics`).

Pure formatting of what the writer, the hub and the daemon count; the HTTP layer only
serves it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Final

#: The content type of the text exposition format.
PROMETHEUS_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


def prometheus_text(daemon: Any, size: int | None = None) -> str:
    """The Prometheus text exposition of the daemon's counters and gauges (`GET /metrics`);
    `size` is the database's where the read model measured it (PostgreSQL), else the
    file's is read here."""
    stats = daemon.writer.stats
    hub = getattr(daemon, "hub", None)
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, value: float) -> None:
        # Whole numbers whole (`:g` would print 8330600 as 8.33060e+06), others exactly.
        shown = str(value) if isinstance(value, int) else repr(float(value))
        lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {shown}"])

    metric("tracklog_events_appended_total", "counter", "Events committed to the log.", stats.events)
    metric("tracklog_appends_total", "counter", "Append messages committed.", stats.appends)
    metric("tracklog_commits_total", "counter", "Group commits.", stats.commits)
    metric(
        "tracklog_duplicate_events_total",
        "counter",
        "Events not appended again (known id).",
        stats.duplicates,
    )
    metric("tracklog_rejected_events_total", "counter", "Events rejected as invalid.", stats.rejected)
    metric("tracklog_commit_seconds_total", "counter", "Time spent in group commits.", stats.commit_seconds)
    histogram = getattr(stats, "ack_latency", None)
    if histogram is not None:
        lines.extend(
            histogram.exposition(
                "tracklog_ack_latency_seconds", "Time from an append reaching the writer to its commit."
            )
        )
    writer = daemon.writer
    metric("tracklog_head_seq", "gauge", "Seq of the newest committed event.", writer.head)
    metric("tracklog_writer_up", "gauge", "1 while the writer runs, else 0.", int(writer.alive))
    metric(
        "tracklog_writer_oldest_request_seconds",
        "gauge",
        "How long the oldest request not yet committed has waited.",
        writer.oldest_request_seconds(),
    )
    metric("tracklog_writer_queued_requests", "gauge", "Requests waiting for the writer.", writer.queued)
    metric(
        "tracklog_writer_failures_total",
        "counter",
        "Exceptions the writer caught around a request or a group (each one a bug).",
        writer.failures,
    )
    episodes, refusals = writer.disk_full_counts()
    disk_full = int(writer.disk_full is not None)
    metric("tracklog_disk_full", "gauge", "1 while appends are refused for a full disk.", disk_full)
    metric("tracklog_disk_full_episodes_total", "counter", "Times the disk became full.", episodes)
    metric("tracklog_disk_full_refusals_total", "counter", "Requests answered disk_full.", refusals)
    refused = getattr(daemon, "refused", None)
    if refused is not None:
        name = "tracklog_requests_refused_total"
        lines.extend(
            [
                f"# HELP {name} Requests refused before being done, by code: scope, rate limit, limits.",
                f"# TYPE {name} counter",
            ]
        )
        for code in ("forbidden", "rate_limited", "too_large"):
            lines.append(f'{name}{{code="{code}"}} {refused[code]}')
    metric("tracklog_connections", "gauge", "Open WebSocket connections.", daemon.connections)
    metric("tracklog_subscribers", "gauge", "Live subscriptions.", hub.subscribers if hub is not None else 0)
    lag = hub.lag() if hub is not None and hasattr(hub, "lag") else 0
    metric("tracklog_subscriber_lag_events", "gauge", "Most events a subscriber has waiting.", lag)
    blocked = getattr(hub, "blocked", 0)
    metric(
        "tracklog_subscribers_blocked",
        "gauge",
        "Subscriptions whose send waits for the client's socket to take a frame.",
        blocked,
    )
    metric(
        "tracklog_database_bytes",
        "gauge",
        "Size of the database (an SQLite file and its WAL).",
        database_bytes(str(daemon.settings.db)) if size is None else size,
    )
    return "\n".join(lines) + "\n"


def database_bytes(path: str) -> int:
    """The size of the database file and its WAL."""
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.path.getsize(path + suffix)
    return total
