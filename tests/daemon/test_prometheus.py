"""The Prometheus text of the daemon's gauges: numbers written so no digit is lost."""

from __future__ import annotations

from types import SimpleNamespace

from tracklog.daemon.prometheus import prometheus_text


def test_large_counters_and_sizes_keep_every_digit() -> None:
    stats = SimpleNamespace(
        events=12_345_678,
        appends=1,
        commits=1,
        duplicates=0,
        rejected=0,
        commit_seconds=0.000123,
        ack_latency=None,
    )
    writer = SimpleNamespace(
        stats=stats,
        head=12_345_678,
        alive=True,
        oldest_request_seconds=lambda: 0.0,
        queued=0,
        failures=0,
        disk_full_counts=lambda: (0, 0),
        disk_full=None,
    )
    daemon = SimpleNamespace(writer=writer, connections=3, settings=SimpleNamespace(db="unused"))
    lines = prometheus_text(daemon, size=8_330_600).splitlines()
    assert "tracklog_events_appended_total 12345678" in lines
    assert "tracklog_head_seq 12345678" in lines
    assert "tracklog_database_bytes 8330600" in lines
    assert "tracklog_commit_seconds_total 0.000123" in lines
