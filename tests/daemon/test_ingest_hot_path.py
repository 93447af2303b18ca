"""The SQLite log's ingest of metrics, the hot path, counted in Python calls rather than
timed: a call per event more is a few percent of ingest (bench/ingest.py), and a count is
the same on any machine, however loaded."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog
from tracklog.protocol.events import Metrics, MetricsData
from tracklog.protocol.messages import Append

EVENTS = 1000


def python_calls_while(work: Any) -> Counter[str]:
    """The Python functions called (by name) while `work()` runs; C functions not counted."""
    calls: Counter[str] = Counter()

    def note(frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            calls[frame.f_code.co_name] += 1

    sys.setprofile(note)
    try:
        work()
    finally:
        sys.setprofile(None)
    return calls


def test_an_append_of_metrics_makes_one_call_per_event_and_one_per_value(tmp_path: Path) -> None:
    log = SqliteEventLog(tmp_path / "hot.db")
    log.catch_up()
    try:
        first = Metrics(run="r", ts=1.0, data=MetricsData(values={"loss": 1.0}, step=0))
        log.append_group([Append(events=[first])], publish=True)  # the run and its series exist
        events = [
            Metrics(run="r", ts=1.0 + i, data=MetricsData(values={"loss": 0.5, "acc": 0.1}, step=i))
            for i in range(1, EVENTS + 1)
        ]
        calls = python_calls_while(lambda: log.append_group([Append(events=events)], publish=True))
    finally:
        log.close()
    per_event = {name: count for name, count in calls.items() if count >= EVENTS}
    assert per_event == {"add_metrics": EVENTS, "add": 2 * EVENTS}, per_event
