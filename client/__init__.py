"""tracklog: the thin client. `import tracklog` never imports the daemon.

    import tracklog
    tl = tracklog.connect()                       # $TRACKLOG_URL or ws://127.0.0.1:7717/ws
    with tl.start_run(name="baseline", config={"lr": 1e-3}) as run:
        run.log_metric("loss", 0.42, step=100)    # queues and returns: no I/O, no network errors
    tl.close()                                    # flushes; what is not acked goes to the spool

This package is also the parent of `tracklog.protocol` and `tracklog.daemon`, so Python runs
this file before either of them. It therefore imports nothing itself: each public name is
loaded from its module on first use (PEP 562), and `import tracklog.protocol` (in the
daemon, say) loads neither the client nor `websockets`. Type checkers and IDEs read the
imports in the `TYPE_CHECKING` block instead.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tracklog.protocol.version import __version__

    from .aio import AsyncRun, AsyncTracker
    from .cache import Cache, cache_key
    from .dedup import CheckResult, Match
    from .requests import DaemonUnavailable, RequestTimeout
    from .sender import RejectedEvent
    from .shortcuts import (
        active_run,
        close,
        errors,
        finish_run,
        flush,
        get_tracker,
        log_artifact,
        log_item,
        log_metric,
        log_metrics,
        run,
        set_tracker,
        start_run,
        stats,
    )
    from .tracker import DEFAULT_URL, Run, Tracker, connect

__all__ = [
    "DEFAULT_URL",
    "AsyncRun",
    "AsyncTracker",
    "Cache",
    "CheckResult",
    "DaemonUnavailable",
    "Match",
    "RejectedEvent",
    "RequestTimeout",
    "Run",
    "Tracker",
    "__version__",
    "active_run",
    "cache_key",
    "close",
    "connect",
    "errors",
    "finish_run",
    "flush",
    "get_tracker",
    "log_artifact",
    "log_item",
    "log_metric",
    "log_metrics",
    "run",
    "set_tracker",
    "start_run",
    "stats",
]

#: Where each public name is defined, for the lazy lookup below (it must match the
#: `TYPE_CHECKING` imports above; tests/test_package_edges.py checks that it does).
_SOURCES: dict[str, str] = {
    "__version__": "tracklog.protocol.version",
    "AsyncRun": "tracklog.aio",
    "AsyncTracker": "tracklog.aio",
    "Cache": "tracklog.cache",
    "cache_key": "tracklog.cache",
    "CheckResult": "tracklog.dedup",
    "Match": "tracklog.dedup",
    "DaemonUnavailable": "tracklog.requests",
    "RequestTimeout": "tracklog.requests",
    "RejectedEvent": "tracklog.sender",
    "active_run": "tracklog.shortcuts",
    "close": "tracklog.shortcuts",
    "errors": "tracklog.shortcuts",
    "finish_run": "tracklog.shortcuts",
    "flush": "tracklog.shortcuts",
    "get_tracker": "tracklog.shortcuts",
    "log_artifact": "tracklog.shortcuts",
    "log_item": "tracklog.shortcuts",
    "log_metric": "tracklog.shortcuts",
    "log_metrics": "tracklog.shortcuts",
    "run": "tracklog.shortcuts",
    "set_tracker": "tracklog.shortcuts",
    "start_run": "tracklog.shortcuts",
    "stats": "tracklog.shortcuts",
    "DEFAULT_URL": "tracklog.tracker",
    "Run": "tracklog.tracker",
    "Tracker": "tracklog.tracker",
    "connect": "tracklog.tracker",
}


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if not TYPE_CHECKING:
    # Hidden from type checkers: a module `__getattr__` would make them accept any name
    # (`tracklog.conect` typed as Any); they see the real imports above instead.

    def __getattr__(name: str) -> object:
        """Load a public name from its module on first access and keep it here, so the
        next access is a plain attribute lookup."""
        source = _SOURCES.get(name)
        if source is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source), name)
        globals()[name] = value
        return value
