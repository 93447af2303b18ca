"""Module-level shortcuts on one default tracker, for scripts: `tracklog.start_run(...)`.

The default tracker is made on first use from `TRACKLOG_URL` and `TRACKLOG_TOKEN`.
`tracklog.log_metric(...)` and friends log to the active run: the most recently started
run of the default tracker that is not finished. A forked child gets a fresh default
tracker, since the parent's sender thread does not exist in it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from .sender import RejectedEvent
from .tracker import Run, Tracker

_default: Tracker | None = None
_lock = threading.Lock()


def get_tracker() -> Tracker:
    """The default tracker, connected on first use."""
    global _default
    tracker = _default
    if tracker is None:
        with _lock:
            if _default is None:
                _default = Tracker()
            tracker = _default
    return tracker


def set_tracker(tracker: Tracker | None) -> None:
    """Use this tracker for the module-level calls (None: make a new one on next use)."""
    global _default
    _default = tracker


def _forget_after_fork() -> None:
    global _default, _lock
    _default = None
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def start_run(name: str | None = None, **fields: Any) -> Run:
    """Start a run on the default tracker; see `Tracker.start_run`."""
    return get_tracker().start_run(name, **fields)


def run(run_id: str) -> Run:
    """Attach to an existing run on the default tracker."""
    return get_tracker().run(run_id)


def active_run() -> Run | None:
    return get_tracker().active_run if _default is not None else None


def _active() -> Run:
    current = active_run()
    if current is None:
        raise RuntimeError("no active run: call tracklog.start_run() first")
    return current


def log_metric(name: str, value: float, step: int | None = None, epoch: int | None = None) -> None:
    _active().log_metric(name, value, step, epoch)


def log_metrics(values: Mapping[str, float], step: int | None = None, epoch: int | None = None) -> None:
    _active().log_metrics(values, step, epoch)


def log_item(item: str | None = None, **fields: Any) -> None:
    _active().log_item(item, **fields)


def log_artifact(kind: str, path: str | os.PathLike[str], **fields: Any) -> None:
    _active().log_artifact(kind, path, **fields)


def finish_run(status: Any = "completed", error: str | None = None) -> None:
    _active().finish(status, error)


def flush(timeout: float = 10.0) -> bool:
    """Flush the default tracker (True when there is none: nothing is queued)."""
    return _default.flush(timeout) if _default is not None else True


def close(timeout: float = 5.0) -> None:
    """Close the default tracker; the next module-level call makes a new one."""
    global _default
    tracker, _default = _default, None
    if tracker is not None:
        tracker.close(timeout)


def stats() -> dict[str, Any]:
    return get_tracker().stats()


def errors() -> list[RejectedEvent]:
    return _default.errors if _default is not None else []
