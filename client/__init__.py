"""tracklog: the thin client. `import tracklog` never imports the daemon.

    import tracklog
    tl = tracklog.connect()                       # $TRACKLOG_URL or ws://127.0.0.1:7717/ws
    with tl.start_run(name="baseline", config={"lr": 1e-3}) as run:
        run.log_metric("loss", 0.42, step=100)    # queues and returns: no I/O, no network errors
    tl.close()                                    # flushes; what is not acked goes to the spool
"""

__version__ = "0.1.0"

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
