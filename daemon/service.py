"""Running as a service: the watchdog and status loop, and what SIGHUP reloads.

The watchdog is pinged from the event loop itself, and only while the writer can
commit: a stuck event loop sends nothing, and a writer that is dead or whose oldest
request has waited longer than `stuck_after` stops the pings too. Either way systemd
restarts the daemon once `WatchdogSec` passes without a ping, which is what a client
would otherwise only see as silence.

SIGHUP re-reads the tokens (a tokens file, one token per line with its scopes, see
daemon/auth.py, and `TRACKLOG_TOKENS` in an environment file) and the log level
(`TRACKLOG_LOG_LEVEL` in the environment file). The process environment cannot
change after start, so a reload reads files.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import structlog

from tracklog.protocol import errors

from .auth import Grant, grant, read_tokens
from .notify import Notifier, watchdog_seconds

if TYPE_CHECKING:
    from .server import Daemon

log = structlog.get_logger("tracklog.service")

#: Seconds between STATUS= updates (and watchdog checks, unless the watchdog wants them sooner).
STATUS_INTERVAL: Final = 5.0
LOG_LEVELS: Final = ("debug", "info", "warning", "error")


class Supervisor:
    """Tells systemd the daemon's state: READY, a STATUS line every few seconds, WATCHDOG
    pings while the daemon makes progress, RELOADING around a reload, STOPPING."""

    def __init__(self, daemon: Daemon, notifier: Notifier, watchdog: float | None = None) -> None:
        self.daemon = daemon
        self.notifier = notifier
        #: The watchdog timeout in seconds (None: no watchdog); pings go at half of it.
        self.watchdog = watchdog if watchdog is not None else watchdog_seconds()
        self.interval = min(STATUS_INTERVAL, self.watchdog / 2) if self.watchdog else STATUS_INTERVAL
        self.pings = 0
        self._problem: str | None = None

    def status(self) -> str:
        d = self.daemon
        return f"serving on {d.settings.host}:{d.port}; {d.connections} connections, head seq {d.writer.head}"

    def problem(self) -> str | None:
        """Why the daemon is not making progress (then no watchdog ping), or None."""
        writer = self.daemon.writer
        if not writer.alive:
            return "writer down: no append can be committed"
        waited = writer.oldest_request_seconds()
        if waited > writer.stuck_after:
            return f"writer stuck: the oldest request has waited {waited:.0f} s"
        return None

    def tick(self) -> None:
        """One check: a ping with the status when healthy, else only the status saying why not."""
        problem = self.problem()
        if problem != self._problem:
            if problem is None:
                log.info("healthy again: watchdog pings resume")
            else:
                log.error("not healthy: watchdog pings stop", reason=problem)
            self._problem = problem
        if problem is None:
            if self.watchdog:
                self.pings += 1
                self.notifier.send("WATCHDOG=1", f"STATUS={self.status()}")
            else:
                self.notifier.send(f"STATUS={self.status()}")
        else:
            self.notifier.send(f"STATUS={problem}")

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop` is set. Runs on the event loop: a loop that is stuck stops it too."""
        if not self.notifier.enabled:
            return
        while not stop.is_set():
            self.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)


# -- what SIGHUP reloads --------------------------------------------------------------


def read_tokens_file(path: Path) -> tuple[str, ...]:
    """One token per line; blank lines and `#` comments are skipped."""
    tokens = []
    for line in path.read_text().splitlines():
        token = line.strip()
        if token and not token.startswith("#"):
            tokens.append(token)
    return tuple(tokens)


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=VALUE` lines as systemd's `EnvironmentFile=` takes them (`#` comments, values
    optionally in matching quotes); enough for the few keys the daemon reads."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def split_tokens(value: str) -> tuple[str, ...]:
    """`TRACKLOG_TOKENS`: comma-separated."""
    return tuple(t for t in value.split(",") if t)


@dataclass(frozen=True)
class Reloadable:
    """What a reload changes: the tokens read from files (`grants`: with their scopes), and
    the log level (None: as started)."""

    tokens: tuple[str, ...] = ()
    log_level: str | None = None
    grants: tuple[Grant, ...] = ()


def load_reloadable(tokens_file: Path | None, env_file: Path | None) -> Reloadable:
    """Read the tokens file and the environment file; TracklogError naming what is wrong."""
    tokens: tuple[str, ...] = ()
    grants: tuple[Grant, ...] = ()
    level: str | None = None
    try:
        if env_file is not None:
            env = read_env_file(env_file)
            tokens += split_tokens(env.get("TRACKLOG_TOKENS", ""))
            grants += tuple(grant(token) for token in tokens)  # all scopes
            level = env.get("TRACKLOG_LOG_LEVEL") or None
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.TracklogError(f"cannot read the tokens or environment file: {exc}") from exc
    if tokens_file is not None:
        from_file = read_tokens(tokens_file)  # `TOKEN [SCOPES]` lines (daemon/auth.py)
        tokens += tuple(g.token for g in from_file)
        grants += from_file
    if level is not None:
        level = level.strip().lower()
        if level not in LOG_LEVELS:
            expected = ", ".join(LOG_LEVELS)
            raise errors.TracklogError(f"TRACKLOG_LOG_LEVEL: expected one of {expected}, got {level!r}")
    return Reloadable(tokens, level, grants)


#: Called with the new log level on a reload (set by `serve`, which owns the log configuration).
LevelSetter = Callable[[str], None]
