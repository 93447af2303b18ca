"""The background sender: a thread with its own asyncio loop that moves queued events to the daemon.

The caller's side of the contract is one `deque.append` (and, only when the sender is
asleep because there was nothing to do, one `call_soon_threadsafe` to wake it). All the
rest happens on the sender's thread:

- the pump takes events off the queue in batches of up to `batch_size`, encodes each
  batch once into a MessagePack array, and hands appends to the connection, keeping up
  to `max_inflight` appends unacked at a time;
- a partial batch goes out at once when nothing is in flight, otherwise it waits until
  an ack frees the connection or the batch fills, so batches grow with the load
  (after a quiet spell the pump lingers `linger` seconds first, to catch the burst);
- when the daemon is unreachable, or the queue holds more than `max_queue` events, the
  batches go to the spool on disk instead, and from then on everything goes through the
  spool until it is drained, so the daemon sees events in the order they were logged;
- the connector reconnects with capped, jittered exponential backoff and, on each new
  connection, adopts spools that dead processes left behind;
- acks are matched to appends by `ref` (the daemon acks a connection's appends in
  order) by the protocol's `ClientConnection`, which also says hello; an append
  whose connection dies before its ack is sent again, with the same event ids, so
  the daemon stores it once;
- only transport failures and transient daemon states (`overloaded`, `disk_full`) make
  an append go again as it was; `rate_limited` too, after the `retry_after` the daemon
  names (the connection is made again then, and what was in flight is sent again from
  the spool, so nothing is lost and nothing doubled). An append refused for what it
  holds is split in halves, sent again ahead of everything else, down to single
  events; a single event refused is reported in `errors` and dropped (after
  `MAX_INTERNAL_ATTEMPTS` tries for `internal`, which may be a passing fault), so one
  bad event never holds back the good ones, and no batch is resent forever, in this
  process or one adopting its spool.

Where events are at any moment, oldest first: acked; in flight from an adopted spool;
in flight from our spool; in flight from memory; parts of a split append waiting to go
again; unread in the spools; in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
from msgspec import Raw
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tracklog.protocol import errors as codes
from tracklog.protocol.connection import Answered, ConnectionViolation, Notice, Refused, State
from tracklog.protocol.connection import ClientConnection as Connection
from tracklog.protocol.limits import MAX_FRAME_BYTES
from tracklog.protocol.messages import Ack, Error

from . import wire
from .pings import AsyncConnection
from .spool import Spool
from .tls import connect_options

log = logging.getLogger("tracklog")
#: Jitter from a generator of our own: the global `random` state is the user's (a seeded
#: training run must not see the sender thread draw from it).
_jitter = random.Random()

#: Batches above this many bytes are split, well under the daemon's frame limit.
MAX_BATCH_BYTES: Final = 4 * 1024 * 1024
#: Codes of a passing state of the daemon or the connection: the append goes again as it
#: was, after a reconnect with backoff. (`disk_full`: the daemon's disk has no room now.)
TRANSIENT_APPEND_ERRORS: Final = frozenset(
    {codes.OVERLOADED, "disk_full", codes.HELLO_REQUIRED, codes.UNAUTHORIZED}
)
#: Codes that say the same append can never be accepted by this daemon, whatever it
#: holds: its events are reported at once, not split.
REFUSED_APPEND_ERRORS: Final = frozenset({codes.FORBIDDEN, codes.UNKNOWN_OP})
#: How many times a single event is sent while the daemon answers `internal`, before it
#: is reported and dropped (a batch with more than one event is split instead).
MAX_INTERNAL_ATTEMPTS: Final = 3
#: How many single events' `internal` counts are remembered at once.
MAX_TRACKED_FAILURES: Final = 1_000
#: How many rejected events to keep in `errors`.
MAX_ERRORS: Final = 10_000
#: How often a spool with new records is fdatasync'ed.
FSYNC_INTERVAL: Final = 1.0
#: After the spool could not be written, how long to keep events in memory before trying again.
SPOOL_RETRY: Final = 5.0
#: How many rejections are logged one by one before the log only counts them.
LOGGED_REJECTIONS: Final = 100


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    """An event the daemon (or the client, for an unencodable one) refused, with the reason."""

    code: str
    message: str
    event: Any
    """The event as plain data (id, type, run, ts, data), when it could be recovered."""


@dataclass(frozen=True, slots=True)
class SenderOptions:
    """Tuning knobs; the defaults suit a training loop or a pipeline on one machine."""

    max_queue: int = 100_000
    batch_size: int = 1_000
    max_inflight: int = 8
    linger: float = 0.002
    backoff_base: float = 0.05
    backoff_max: float = 5.0
    open_timeout: float = 10.0
    client_name: str = "tracklog-python"


@dataclass(slots=True)
class _Append:
    """An append sent and not yet acked; `spool` is None when its batch lives only in memory."""

    ref: int
    payload: bytes
    count: int
    spool: Any = None
    end: int = 0


class _Reconnect(Exception):
    """The connection must be dropped and made again (the daemon is overloaded, or confused us)."""


class _RateLimited(_Reconnect):
    """The daemon refused an append for a rate limit: send it again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Counters:
    acked: int = 0
    duplicates: int = 0
    rejected: int = 0
    spooled_total: int = 0
    overflows: int = 0
    connects: int = 0
    dropped: int = 0
    #: Appends the daemon refused for a rate limit (each sent again after its retry_after).
    rate_limited: int = 0
    last_error: str | None = None
    errors: deque[RejectedEvent] = field(default_factory=lambda: deque(maxlen=MAX_ERRORS))


class Sender:
    """Owns the queue, the spool and the connection; runs on its own daemon thread."""

    def __init__(self, url: str, token: str | None, spool_dir: Path, options: SenderOptions) -> None:
        self.url = url
        self.token = token
        self.options = options
        #: The queue the callers append to. Unbounded as a container; `max_queue` is
        #: enforced by spilling to disk, never by blocking or dropping.
        self.queue: deque[Any] = deque()
        #: True while the pump waits with nothing to do: the next caller wakes it.
        self.sleeping = False
        self.counters = _Counters()
        self.spool = Spool(spool_dir)

        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_event: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._thread_main, name="tracklog-sender", daemon=True)
        self._started = threading.Event()
        self._closed = False
        self._closing = False
        self._close_deadline = 0.0

        self._ws: ClientConnection | None = None
        self._frames: asyncio.Queue[bytes] | None = None
        self._inflight: deque[_Append] = deque()
        self._inflight_events = 0
        #: Parts of appends the daemon refused, split to find the bad events: sent first.
        self._retry: deque[tuple[bytes, int]] = deque()
        #: Single events (by payload) answered `internal`, and how many times.
        self._internal_failures: dict[bytes, int] = {}
        #: Connections in a row that ended without an ack (refused for now, or lost): the
        #: pause before the next one grows with it, so a daemon whose disk stays full is not
        #: reconnected to twenty times a second. An ack ends the streak.
        self._unacked_sessions = 0
        self._errors_lock = threading.Lock()
        #: The protocol of the current connection (refs, ack order); None while down.
        self._conn: Connection | None = None
        self._down = False  # a connect attempt failed or the connection dropped, and no new one yet
        self._last_sync = 0.0
        self._spool_broken_until = 0.0
        self._spooled_at_close = 0
        self._warned_after_close = False
        self._logged_rejections = 0

        #: Events and bytes of one batch: the options', within the limits the daemon's
        #: welcome tells (`--max-events-per-append`, `--max-frame-bytes`).
        self._batch_events = options.batch_size
        self._batch_bytes = MAX_BATCH_BYTES
        self._frame_room = MAX_FRAME_BYTES - 1024

        self._cond = threading.Condition()
        self._flush_requested = 0
        self._flush_done = 0

    # -- caller's side (any thread) ---------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._started.wait()

    def wake(self) -> None:
        """Wake the pump from its idle sleep. Cheap to call twice; harmless after close."""
        self.sleeping = False
        loop, event = self._loop, self._wake_event
        if loop is None or event is None or self._closed:
            if self._closed:
                self._spill_after_close()
            return
        with contextlib.suppress(RuntimeError):  # the loop closed in between
            loop.call_soon_threadsafe(event.set)

    def flush(self, timeout: float) -> bool:
        """Wait until every event queued so far is acked; False when the timeout comes first."""
        if self._closed:
            return not self.queue and self._spooled_at_close == 0
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flush_requested += 1
            wanted = self._flush_requested
        self.wake()
        with self._cond:
            while self._flush_done < wanted:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout: float) -> None:
        """Flush until the timeout, then spool whatever is not acked and stop the thread."""
        if self._closed:
            return
        loop = self._loop
        if loop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._begin_close, time.monotonic() + timeout)
            self._thread.join(timeout + 10.0)
        self._closed = True
        self.sleeping = True  # from now on a caller's event lands in `wake`, which spools it
        if self._thread.is_alive():
            log.error("tracklog: the sender did not stop in time; queued events may be lost")
            return
        self._spill_after_close()

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            "queued": len(self.queue) + sum(count for _, count in self._retry),
            "in_flight": self._inflight_events,
            "acked": c.acked,
            "duplicates": c.duplicates,
            "rejected": c.rejected,
            "spooled": self.spool.unacked_events if not self._closed else self._spooled_after_close(),
            "spooled_total": c.spooled_total,
            "adopted": self.spool.adopted_events,
            "overflows": c.overflows,
            "dropped": c.dropped,
            "connected": self._ws is not None,
            "connects": c.connects,
            "rate_limited": c.rate_limited,
            "last_error": c.last_error,
        }

    def _spooled_after_close(self) -> int:
        return self._spooled_at_close

    def _spill_after_close(self) -> None:
        """Events logged after close have no sender: write them to a spool for the next tracker."""
        if not self.queue or self._thread.is_alive():
            return
        if not self._warned_after_close:
            self._warned_after_close = True
            log.warning("tracklog: log call after close(); the event goes straight to the spool")
        spool = Spool(self.spool.directory)
        try:
            for payload, count in self._take_batches(self.queue, len(self.queue)):
                spool.own_file().append(payload, count)
                self.counters.spooled_total += count
                self._spooled_at_close += count
        except OSError as exc:
            log.error("tracklog: cannot spool events logged after close: %s", exc)
        finally:
            spool.close()

    # -- the sender's thread ----------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException:
            log.exception("tracklog: the sender thread failed")
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake_event = asyncio.Event()
        self._started.set()  # connect() returns now; adopting a large spool can take a while
        self._adopt()
        connector = asyncio.create_task(self._connector(), name="tracklog-connector")
        try:
            await self._pump()
        finally:
            connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connector
            ws = self._ws
            if ws is not None:
                self._disconnected(ws)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 2.0)
            self._finish()

    def _adopt(self) -> None:
        try:
            self.spool.adopt_orphans()
        except OSError as exc:
            log.warning("tracklog: cannot scan the spool folder %s: %s", self.spool.directory, exc)

    async def _pump(self) -> None:
        assert self._wake_event is not None
        wake = self._wake_event
        while True:
            self._route()
            if self._frames is not None:
                self._fill_window()
            self._housekeeping()
            if self._closing and self._close_done():
                return
            if not self.queue and not self._inflight and not self._closing:
                self.sleeping = True
                if self.queue:  # a caller appended before seeing the flag
                    self.sleeping = False
                    continue
                timeout = FSYNC_INTERVAL if self._needs_housekeeping() else None
                woken = await _wait(wake, timeout)
                self.sleeping = False
                if woken and self.options.linger and self._flush_requested == self._flush_done:
                    await asyncio.sleep(self.options.linger)  # let a burst gather into one batch
            else:
                await _wait(wake, self.options.linger if not self._closing else 0.01)
            wake.clear()

    def _needs_housekeeping(self) -> bool:
        return any(f.unsynced for f in self.spool.files()) or not self.spool.empty

    def _route(self) -> None:
        """Send the queue to the spool when it cannot go to the daemon now, or when it is too long."""
        queue = self.queue
        if not queue:
            return
        own = self.spool.own
        overflow = len(queue) > self.options.max_queue
        if (own is not None and own.has_unread) or self._down or overflow:
            if overflow and not self._down:
                self.counters.overflows += 1
            self._spill()

    def _spill(self) -> None:
        """Write in-memory appends still in flight, then the whole queue, to our spool file.

        If the disk fails (full, read-only), the events stay in memory, in order, and
        spilling is not tried again for a few seconds: memory grows rather than events
        being lost.
        """
        if time.monotonic() < self._spool_broken_until:
            return
        batches: list[tuple[bytes, int]] = []
        try:
            own = self.spool.own_file()
            for append in self._inflight:
                if append.spool is None:
                    append.end = own.append(append.payload, append.count)
                    append.spool = own
                    own.read = own.size  # it is in flight already
                    self.counters.spooled_total += append.count
            queue = self.queue
            while queue:
                batches = self._take_batches(queue, self.options.batch_size)
                while batches:
                    payload, count = batches[0]
                    own.append(payload, count)
                    batches.pop(0)
                    self.counters.spooled_total += count
        except OSError as exc:
            for payload, _ in reversed(batches):
                self._requeue(payload)
            self._spool_failed(exc)

    def _spill_retry(self) -> None:
        """Write the parts of split appends to our spool (the thread is ending); on a disk
        error they go back to the queue, to be counted as lost with it."""
        retry = self._retry
        try:
            own = self.spool.own_file()
            while retry:
                payload, count = retry[0]
                own.append(payload, count)
                retry.popleft()
                self.counters.spooled_total += count
        except OSError as exc:
            while retry:
                self._requeue(retry.pop()[0])
            self._spool_failed(exc)

    def _requeue(self, payload: bytes) -> None:
        """Put a batch's events back at the front of the queue, in their order."""
        self.queue.extendleft(reversed(_decode_raw_list(payload)))

    def _spool_failed(self, exc: OSError) -> None:
        message = f"cannot write the spool in {self.spool.directory}: {exc}"
        if self.counters.last_error != message:
            log.error("tracklog: %s; events are kept in memory", message)
        self.counters.last_error = message
        self._spool_broken_until = time.monotonic() + SPOOL_RETRY

    def _take_batches(self, queue: deque[Any], limit: int) -> list[tuple[bytes, int]]:
        """Pop up to `limit` events off the queue and encode them as batches of at most `batch_size`."""
        size = self._batch_events
        pop = queue.popleft
        out: list[tuple[bytes, int]] = []
        while limit > 0 and queue:
            n = min(limit, size, len(queue))
            limit -= n
            out.extend(self._encode([pop() for _ in range(n)]))
        return out

    def _encode(self, items: list[Any]) -> list[tuple[bytes, int]]:
        """Encode events as one batch, or several when one would be too large to send."""
        build = wire.build_metrics
        events = [build(x) if x.__class__ is tuple else x for x in items]
        try:
            payload = wire.encode(events)
        except (TypeError, OverflowError, ValueError):
            events = self._drop_unencodable(events)
            if not events:
                return []
            payload = wire.encode(events)
        if len(payload) > self._batch_bytes and len(events) > 1:
            half = len(events) // 2
            return self._encode(events[:half]) + self._encode(events[half:])
        if len(payload) > self._frame_room:
            message = f"event: {len(payload)} bytes, over the frame limit"
            self._reject_locally(events[0], codes.TOO_LARGE, message)
            return []
        return [(payload, len(events))]

    def _drop_unencodable(self, events: list[Any]) -> list[Any]:
        good = []
        for event in events:
            try:
                wire.encode(event)
            except (TypeError, OverflowError, ValueError) as exc:
                self._reject_locally(event, codes.BAD_MESSAGE, f"event cannot be encoded: {exc}")
            else:
                good.append(event)
        return good

    def _reject_locally(self, event: Any, code: str, message: str) -> None:
        try:
            plain = msgspec.to_builtins(event) if not isinstance(event, Raw) else wire.decode_any(event)
        except (TypeError, ValueError, msgspec.DecodeError):
            plain = repr(event)  # the report must not fail on the value that made the event bad
        self._record_rejection(RejectedEvent(code, message, plain))

    def _fill_window(self) -> None:
        """Hand appends to the connection until `max_inflight` are unacked."""
        frames = self._frames
        assert frames is not None
        queue = self.queue
        inflight = self._inflight
        limit = self.options.max_inflight
        retry = self._retry
        while retry and len(inflight) < limit:
            payload, count = retry.popleft()
            self._send(frames, payload, count)
        while len(inflight) < limit:
            source = self.spool.next_unread()
            if source is not None:
                record = source.read_next()
                if record is not None:
                    payload, count, end = record
                    self._send(frames, payload, count, source, end)
                continue
            if not queue:
                return
            partial = len(queue) < self.options.batch_size
            if partial and inflight and not self._closing and self._flush_requested == self._flush_done:
                return  # an ack will come soon; let the batch grow until then
            for payload, count in self._take_batches(queue, self.options.batch_size):
                self._send(frames, payload, count)

    def _send(
        self, frames: asyncio.Queue[bytes], payload: bytes, count: int, spool: Any = None, end: int = 0
    ) -> None:
        """Send a batch (an encoded array of events) as an append, and keep it until acked."""
        conn = self._conn
        assert conn is not None
        ref, frame = conn.append_encoded(payload)
        self._inflight.append(_Append(ref, payload, count, spool, end))
        self._inflight_events += count
        frames.put_nowait(frame)

    def _housekeeping(self) -> None:
        spool = self.spool
        spool.collect()
        now = time.monotonic()
        if now - self._last_sync >= FSYNC_INTERVAL:
            try:
                spool.sync()
            except OSError as exc:
                self._spool_failed(exc)
            self._last_sync = now
        with self._cond:
            wanted = self._flush_requested
        if wanted > self._flush_done and self._idle():
            with self._cond:
                self._flush_done = wanted
                self._cond.notify_all()

    def _idle(self) -> bool:
        return not self.queue and not self._inflight and not self._retry and self.spool.empty

    def _begin_close(self, deadline: float) -> None:
        self._closing = True
        self._close_deadline = deadline
        if self._wake_event is not None:
            self._wake_event.set()

    def _close_done(self) -> bool:
        if self._idle() or time.monotonic() >= self._close_deadline:
            return True
        # Without a connection, the spool already holds everything: the next tracker sends it.
        return self._down and not self.queue and not self._inflight and not self._retry

    def _finish(self) -> None:
        """The thread is ending: spool what is not acked, fsync, release the spool files."""
        if self._retry:
            self._spill_retry()
        if self._inflight or self.queue:
            self._spool_broken_until = 0.0
            self._spill()
        self._spooled_at_close = self.spool.unacked_events
        try:
            self.spool.close()
        except OSError as exc:
            log.error("tracklog: cannot close the spool: %s", exc)
        if self.queue:
            self.counters.dropped += len(self.queue)
            log.error("tracklog: %d events could not be spooled and are lost", len(self.queue))
            self.queue.clear()
        self._inflight.clear()
        self._inflight_events = 0
        with self._cond:
            self._cond.notify_all()

    # -- the connection ---------------------------------------------------------------

    async def _connector(self) -> None:
        attempt = 0
        while True:
            try:
                ws, conn = await self._open()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(f"cannot connect to {self.url}: {_describe(exc)}")
                attempt += 1
                await asyncio.sleep(self._backoff(attempt))
                continue
            attempt = 0
            self._connected(ws, conn)
            wait: float | None = None
            try:
                await self._serve(ws)
                self._failed(f"the daemon at {self.url} closed the connection")
            except _RateLimited as exc:
                wait = exc.retry_after
                log.info("tracklog: %s; sending again in %.3f s", exc, wait)
            except (ConnectionClosed, OSError, _Reconnect, ConnectionViolation, msgspec.DecodeError) as exc:
                self._failed(f"connection to {self.url} lost: {_describe(exc)}")
            finally:
                self._disconnected(ws)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 2.0)
            if wait is not None:
                await asyncio.sleep(wait)  # what the daemon asked for; no backoff on top
                continue
            self._unacked_sessions += 1
            await asyncio.sleep(self._backoff(self._unacked_sessions))

    def _backoff(self, attempt: int) -> float:
        """Capped exponential backoff with jitter, so many clients do not come back in step."""
        o = self.options
        delay = min(o.backoff_max, o.backoff_base * 2.0 ** min(attempt - 1, 30))
        return delay * _jitter.uniform(0.5, 1.0)

    async def _open(self) -> tuple[ClientConnection, Connection]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        ws = await connect(
            self.url,
            additional_headers=headers,
            open_timeout=self.options.open_timeout,
            max_size=MAX_FRAME_BYTES,
            compression=None,
            user_agent_header=self.options.client_name,
            create_connection=AsyncConnection,
            **connect_options(self.url),
        )
        conn = Connection(self.options.client_name, self.token, enc_hook=wire.enc_hook)
        try:
            await ws.send(conn.hello())
            frame = await asyncio.wait_for(ws.recv(), self.options.open_timeout)
            for event in conn.receive(frame):
                if isinstance(event, Refused):
                    raise ConnectionRefusedError(f"{event.error.code}: {event.error.message}")
            if conn.state is not State.OPEN:
                raise ConnectionRefusedError("expected welcome")
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)
            raise
        return ws, conn

    def _connected(self, ws: ClientConnection, conn: Connection) -> None:
        self._ws = ws
        self._conn = conn
        self._fit_batches(conn)
        self._frames = asyncio.Queue()
        self._down = False
        self.counters.connects += 1
        if self.counters.connects > 1:
            log.info("tracklog: reconnected to %s", self.url)
        self._adopt()
        self._poke()

    def _fit_batches(self, conn: Connection) -> None:
        """Size batches to the limits the daemon's welcome tells, if it tells any, so
        appends fit (batches already in the spool are split by the daemon's refusals)."""
        welcome = conn.welcome
        frame = (welcome.max_frame_bytes if welcome else None) or MAX_FRAME_BYTES
        events = (welcome.max_events_per_append if welcome else None) or self.options.batch_size
        self._batch_events = max(1, min(self.options.batch_size, events))
        self._frame_room = frame - min(1024, frame // 4)  # room for the append around the events
        self._batch_bytes = min(MAX_BATCH_BYTES, self._frame_room)

    def _failed(self, message: str) -> None:
        if not self._down or self.counters.last_error != message:
            log.warning("tracklog: %s; events go to the spool until it is back", message)
        self.counters.last_error = message
        self._down = True
        self._poke()

    def _disconnected(self, ws: ClientConnection) -> None:
        """Unacked appends go back: memory ones to our spool, spool ones to be read again."""
        if self._ws is not ws:
            return
        self._ws = None
        self._conn = None
        self._frames = None
        self._down = True
        if any(a.spool is None for a in self._inflight):
            self._spill()
            for append in reversed(self._inflight):
                if append.spool is None:  # the spool failed: keep them in memory, first in line
                    self._requeue(append.payload)
        for spool in self.spool.files():
            spool.rewind()
        self._inflight.clear()
        self._inflight_events = 0
        self._poke()

    def _poke(self) -> None:
        if self._wake_event is not None:
            self._wake_event.set()

    async def _serve(self, ws: ClientConnection) -> None:
        frames = self._frames
        assert frames is not None
        writer = asyncio.create_task(self._write(ws, frames), name="tracklog-writer")
        try:
            conn = self._conn
            assert conn is not None
            async for frame in ws:
                for event in conn.receive(frame):
                    if type(event) is Answered:
                        reply = event.reply
                        if isinstance(reply, Ack):
                            self._on_ack(reply)
                        elif isinstance(reply, Error):
                            self._on_error(reply)
                    elif isinstance(event, Notice):
                        self._on_error(event.error)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer

    @staticmethod
    async def _write(ws: ClientConnection, frames: asyncio.Queue[bytes]) -> None:
        try:
            while True:
                await ws.send(await frames.get())
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("tracklog: sending failed; reconnecting")
            await ws.close(1011)

    def _on_ack(self, ack: Ack) -> None:
        inflight = self._inflight
        if not inflight or inflight[0].ref != ack.ref:
            raise _Reconnect(f"ack for ref {ack.ref} does not match the oldest append in flight")
        append = self._complete()
        self._unacked_sessions = 0
        if self._internal_failures and append.count == 1:
            self._internal_failures.pop(append.payload, None)
        c = self.counters
        c.acked += append.count - len(ack.rejected)
        c.duplicates += len(ack.duplicates)
        if ack.rejected:
            events = wire.decode_any(append.payload)
            for r in ack.rejected:
                event = events[r.index] if 0 <= r.index < len(events) else None
                self._record_rejection(RejectedEvent(r.code, r.message, event))

    def _complete(self) -> _Append:
        """The oldest append in flight is answered: forget it, and advance its spool."""
        append = self._inflight.popleft()
        self._inflight_events -= append.count
        if append.spool is not None and not append.spool.closed:
            try:
                append.spool.ack(append.end, append.count)
            except OSError as exc:
                self._spool_failed(exc)
        self._poke()
        return append

    def _on_error(self, error: Error) -> None:
        inflight = self._inflight
        if error.ref is None or not inflight or inflight[0].ref != error.ref:
            log.warning("tracklog: the daemon says %s: %s", error.code, error.message)
            return
        code = error.code
        if code == codes.RATE_LIMITED:
            self.counters.rate_limited += 1
            retry_after = error.retry_after if error.retry_after is not None else self.options.backoff_max
            raise _RateLimited(f"append rate limited ({error.message})", min(max(retry_after, 0.0), 60.0))
        if code in TRANSIENT_APPEND_ERRORS:
            raise _Reconnect(f"append refused for now ({code}: {error.message})")
        append = self._complete()
        if append.count > 1 and code not in REFUSED_APPEND_ERRORS:
            self._split(append, error)
            return
        if append.count == 1 and code == codes.INTERNAL and self._retry_internal(append.payload):
            raise _Reconnect(f"append failed ({code}: {error.message}); trying once more")
        # Sending it again would fail again: report every event of the append, move on.
        self._internal_failures.pop(append.payload, None)
        for event in wire.decode_any(append.payload):
            self._record_rejection(RejectedEvent(code, error.message, event))

    def _split(self, append: _Append, error: Error) -> None:
        """Send a refused append again as two halves, ahead of everything else.

        Halving again whatever is refused finds a bad event in a batch of n in about
        2 log2(n) appends, while every good event is stored on the way.
        """
        events = _decode_raw_list(append.payload)
        half = len(events) // 2
        log.info(
            "tracklog: an append of %d events was refused (%s: %s); sending it in halves to find bad ones",
            append.count,
            error.code,
            error.message,
        )
        self._retry.appendleft((wire.encode(events[half:]), len(events) - half))
        self._retry.appendleft((wire.encode(events[:half]), half))

    def _retry_internal(self, payload: bytes) -> bool:
        """Count an `internal` answer to a single event; True while it may be sent again.

        `internal` may be a passing fault of the daemon, so the event goes again (first
        in line, after a reconnect with backoff) up to `MAX_INTERNAL_ATTEMPTS` times.
        """
        failures = self._internal_failures
        seen = failures.get(payload, 0) + 1
        if seen >= MAX_INTERNAL_ATTEMPTS:
            return False
        if len(failures) >= MAX_TRACKED_FAILURES:
            failures.pop(next(iter(failures)))
        failures[payload] = seen
        self._retry.appendleft((payload, 1))
        return True

    def reject(self, event: Any, code: str, message: str) -> None:
        """Report an event refused at the call (any thread): it is never queued."""
        self._reject_locally(event, code, message)

    def _record_rejection(self, rejected: RejectedEvent) -> None:
        c = self.counters
        with self._errors_lock:  # the sender's thread and callers (`reject`) both report
            c.rejected += 1
            c.errors.append(rejected)
            self._logged_rejections += 1
            logged = self._logged_rejections
        if logged <= LOGGED_REJECTIONS:
            log.warning("tracklog: event rejected (%s): %s", rejected.code, rejected.message)
        elif logged % 1000 == 0:
            log.warning("tracklog: %d events rejected so far; see Tracker.errors", c.rejected)


_decode_raw_list = msgspec.msgpack.Decoder(list[Raw]).decode


async def _wait(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait for the event up to timeout; True when it was set."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
