"""Following the log that other daemons write: a thread with one connection that LISTENs
on the log's channel and reads the events after the last seq its daemon published.

The notification is only the wake-up; the log is the truth. The thread reads the events
after the daemon's position when a notification names a head past it, every
`fallback_seconds` whatever came, and after every reconnect: a notification lost (while
the connection was down, say) delays events by at most the fallback, never loses them.
Reads are plain statements in autocommit: every commit holds the log's lock until it is
visible, so any read sees a gapless prefix of the log.

The same thread renews this daemon's writer leases (`leases.py`) for the runs its
connections write to, every `renew_seconds`, and then looks for runs no daemon has
renewed a lease on for `lost_after` (`leases.unserved`: their daemon is gone), which it
hands to `unserved` for the daemon to mark lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Final

import psycopg
import structlog

from tracklog.protocol import errors
from tracklog.protocol.messages import StoredEvent

from ..sqlcommon.eventlog import read_events
from . import leases
from .connect import PgConnection, PgSettings, connect
from .eventlog import CHANNEL

log = structlog.get_logger("tracklog.follow")

#: Events read in one statement.
READ_BATCH: Final = 2_000
#: Seconds between reads of the log when no notification comes.
FALLBACK_SECONDS: Final = 1.0
#: Seconds the thread waits for a notification before it looks at its other duties
#: (a poke, a renewal, stopping): how long a stop may take.
SLICE_SECONDS: Final = 0.1
#: Seconds between attempts to reconnect, at most.
MAX_BACKOFF: Final = 2.0
#: Leases of runs no longer running are deleted once not renewed for this long (they
#: count for nothing from the moment their run ends; the margin spares nothing but churn).
FORGET_LEASES_AFTER: Final = 600.0


class LogWatcher:
    """The daemon's follower of the shared log (a thread of its own).

    `position()` is the last seq the daemon has published (read from this thread; an
    int, so no lock is needed); `deliver(events)` is called on this thread with each
    batch read (seq order, gapless from some seq at or below position + 1): the daemon
    hands it to its event loop, which drops what it already published.
    """

    def __init__(
        self,
        url: str,
        daemon_id: str,
        position: Callable[[], int],
        deliver: Callable[[list[StoredEvent]], None],
        renew_seconds: float,
        fallback_seconds: float = FALLBACK_SECONDS,
        lost_after: float | None = None,
        unserved: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.settings = PgSettings.from_url(url)
        self.daemon_id = daemon_id
        self.position = position
        self.deliver = deliver
        self.renew_seconds = renew_seconds
        self.fallback_seconds = fallback_seconds
        #: Seconds without a renewed lease after which a running run is handed to
        #: `unserved` (called on this thread); None: no scan.
        self.lost_after = lost_after
        self.unserved = unserved
        self.scans = 0
        #: The runs this daemon's connections write to (replaced whole by the daemon).
        self.leased_runs: frozenset[str] = frozenset()
        #: The last seq handed to `deliver` (reads go on from the later of it and position).
        self.posted = 0
        self.reconnects = 0
        self.reads = 0
        self._poked = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tracklog-follow", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._thread.join(timeout)

    def poke(self, reset: bool = False) -> None:
        """Read the log soon (any thread); `reset`: from the daemon's position, forgetting
        what was posted (the daemon dropped a batch it could not place)."""
        if reset:
            self.posted = 0
        self._poked = True

    # -- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        backoff = 0.05
        connected_before = False
        read_due = renew_due = 0.0
        while not self._stopping.is_set():
            if conn is None:
                try:
                    conn = connect(self.settings)
                    conn.execute(f"LISTEN {CHANNEL}")
                except (errors.StorageError, psycopg.Error) as exc:
                    if conn is not None:
                        conn.close()
                        conn = None
                    log.warning("cannot listen to the database; trying again", error=str(exc))
                    self._stopping.wait(backoff)
                    backoff = min(MAX_BACKOFF, backoff * 2)
                    continue
                backoff = 0.05
                if connected_before:
                    self.reconnects += 1
                    log.info("listening to the database again")
                connected_before = True
                read_due = renew_due = 0.0  # after a reconnect: read (and renew) at once
            try:
                now = time.monotonic()
                if now >= renew_due:
                    self._renew(PgConnection(conn))
                    renew_due = now + self.renew_seconds
                if self._poked or now >= read_due:
                    self._poked = False
                    self._read(PgConnection(conn))
                    read_due = time.monotonic() + self.fallback_seconds
                for notify in conn.notifies(timeout=SLICE_SECONDS, stop_after=1):
                    if self._past_position(notify.payload):
                        self._poked = True
            except psycopg.Error as exc:
                log.warning("lost the database connection that follows the log", error=str(exc))
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def _past_position(self, payload: str) -> bool:
        """Whether a notified head is past what this daemon has published or read."""
        try:
            head = int(payload)
        except ValueError:
            return True
        return head > max(self.posted, self.position())

    def _read(self, conn: PgConnection) -> None:
        while not self._stopping.is_set():
            after = max(self.posted, self.position())
            events = read_events(conn, after, READ_BATCH)
            self.reads += 1
            if not events:
                return
            self.posted = events[-1].seq
            self.deliver(events)
            if len(events) < READ_BATCH:
                return

    def _renew(self, conn: PgConnection) -> None:
        """Renew this daemon's leases, forget stale ones of ended runs, and hand on the
        running runs whose leases all went stale."""
        runs = self.leased_runs
        if runs:
            leases.renew(conn, self.daemon_id, runs)
        leases.release_stale(conn, FORGET_LEASES_AFTER)
        if self.lost_after is not None and self.unserved is not None:
            found = leases.unserved(conn, self.lost_after)
            self.scans += 1
            if found:
                self.unserved(found)
