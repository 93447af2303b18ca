"""Structured logs: JSON lines or readable console lines, on stderr.

`auto` picks console lines on a terminal and JSON lines otherwise (journald, files,
pipes); `--log-format` forces either. Each connection binds `conn_id` and `peer` with
`structlog.contextvars`, so every line logged while serving it carries them.

Loggers are not cached on first use, so `configure` again (SIGHUP's new log level)
takes effect everywhere at once; the daemon logs per connection and per commit
problem, never per frame at info level, so the few microseconds this costs per line
stay off the ingest path.
"""

from __future__ import annotations

import logging
import sys
from typing import Final, Literal

import structlog

LogFormat = Literal["auto", "json", "console"]
LOG_FORMATS: Final = ("auto", "json", "console")


def configure(level: str = "info", fmt: LogFormat | str = "auto") -> None:
    console = sys.stderr.isatty() if fmt == "auto" else fmt == "console"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
