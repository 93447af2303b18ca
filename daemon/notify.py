"""The systemd notification protocol (sd_notify), in a few lines of socket code.

systemd passes `NOTIFY_SOCKET` (a filesystem path, or `@name` for the abstract
namespace) to a `Type=notify` service; the service sends datagrams of newline-separated
`KEY=VALUE` assignments to it: `READY=1`, `STATUS=...`, `WATCHDOG=1`, `RELOADING=1`,
`STOPPING=1`. Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger("tracklog.notify")


def notify_address(environ: Mapping[str, str] = os.environ) -> str | None:
    """The socket address from `NOTIFY_SOCKET`, with `@` turned into the abstract namespace's NUL."""
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return None
    if address.startswith("@"):
        return "\0" + address[1:]
    return address


def watchdog_seconds(environ: Mapping[str, str] = os.environ) -> float | None:
    """The watchdog timeout systemd set (`WATCHDOG_USEC`), if it is meant for this process.

    `WATCHDOG_PID`, when set, names the process the watchdog is for: a child that
    inherited the environment must not ping for its parent.
    """
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        seconds = int(usec) / 1_000_000
    except ValueError:
        return None
    return seconds if seconds > 0 else None


class Notifier:
    """Sends state lines to systemd's notification socket; does nothing without one.

    One unconnected datagram socket for the daemon's life. A failed send is logged once,
    not raised: telling systemd must never take the daemon down.
    """

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self.address = notify_address(environ)
        self._sock: socket.socket | None = None
        self._warned = False
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *assignments: str) -> bool:
        """Send `KEY=VALUE` assignments in one datagram; True when it went out."""
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto("\n".join(assignments).encode(), self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd", socket=self.address, error=str(exc))
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> bool:
        """`RELOADING=1` with the monotonic time systemd (253+) wants beside it; end with `ready`."""
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={now_usec}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
