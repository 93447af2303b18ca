"""The hub: live delivery of committed events to subscribers, with the log as overflow.

A subscription reads the log from its `from_seq` until it has caught up, then joins
live delivery (and says so with `live`). Committed events reach it from the writer
through `Hub.publish`, which only appends to the subscription's bounded buffer and
never waits. A subscriber that falls behind by more than its buffer holds is dropped
from live delivery and reads the log again at its own pace, from the last seq it was
sent; then it rejoins. Every matching event is sent exactly once, in seq order: the
subscription never sends a seq at or below the last one it sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import structlog

from tracklog.protocol.connection import EventFrames, ServerSubscription
from tracklog.protocol.messages import Codec, StoredEvent, SubscribeFilter

from .liveness import STATUS_TYPES, status_after

log = structlog.get_logger("tracklog.hub")

#: Events a subscription may have waiting in memory before it falls back to the log.
MAX_BUFFERED_EVENTS: Final = 10_000
#: Events in one `events` message.
MAX_BATCH: Final = 1_000

#: Reads events after a seq from the log: (after, limit, filter) -> (events, scanned_to, head).
LogReader = Callable[[int, int, "Filter"], Awaitable[tuple[list[StoredEvent], int, int]]]
Send = Callable[[bytes], Awaitable[None]]


def _field(data: object, name: str) -> Any:
    """A field of event data, whether a typed struct (live) or a dict (read back)."""
    if isinstance(data, dict):
        return data.get(name)
    return getattr(data, name, None)


class Filter:
    """Which events a subscription wants: any of `runs`, `types`, `pipelines`."""

    __slots__ = ("everything", "pipelines", "runs", "types")

    def __init__(self, spec: SubscribeFilter | None) -> None:
        self.runs = frozenset(spec.runs) if spec and spec.runs else None
        self.types = frozenset(spec.types) if spec and spec.types else None
        self.pipelines = frozenset(spec.pipelines) if spec and spec.pipelines else None
        self.everything = self.runs is None and self.types is None and self.pipelines is None

    def select(self, events: list[StoredEvent], pipeline_of: dict[str, str | None]) -> list[StoredEvent]:
        if self.everything:
            return events
        runs, types, pipelines = self.runs, self.types, self.pipelines
        return [
            e
            for e in events
            if (runs is None or e.run in runs)
            and (types is None or e.type in types)
            and (pipelines is None or (e.run is not None and pipeline_of.get(e.run) in pipelines))
        ]


class Subscription:
    """One subscription's scheduling: its buffer while live, the task that sends, and
    whether its send is blocked. What has been delivered, and the frames, are the
    protocol's (`ServerSubscription`): this side only chooses when, and moves bytes."""

    def __init__(
        self,
        hub: Hub,
        state: ServerSubscription,
        flt: Filter,
        send: Send,
        read_log: LogReader,
    ) -> None:
        self.hub = hub
        self.state = state
        self.id = state.sub
        self.filter = flt
        self._send = send
        self._read_log = read_log
        self.buffer: deque[list[StoredEvent]] = deque()
        self.buffered = 0
        self.live = False
        self.fell_behind = False
        self.wake = asyncio.Event()
        #: True while a send is under way. Seen from any other task on the loop, it means
        #: the send is waiting for the client's socket to take the frame: blocked.
        self.sending = False
        self._block_check_due = False
        self.was_blocked = False
        self.task: asyncio.Task[None] | None = None

    def offer(self, events: list[StoredEvent]) -> None:
        """From Hub.publish: buffer, or fall out of live delivery when the buffer is full."""
        if self.buffered + len(events) > MAX_BUFFERED_EVENTS:
            self.hub._detach(self)
            self.hub.fallbacks += 1
            self.fell_behind = True
            self.buffer.clear()
            self.buffered = 0
        else:
            self.buffer.append(events)
            self.buffered += len(events)
        self.wake.set()

    async def run(self) -> None:
        state = self.state
        while True:
            if not self.live:
                if state.position < self.hub.published_seq:
                    await self._read_until_live()
                else:  # nothing published after the start: live at once, no read
                    self.hub._attach(self)
                await self._send_frame(state.live())
            await self.wake.wait()
            self.wake.clear()
            while self.buffer and not self.fell_behind:
                batch: list[StoredEvent] = []
                while self.buffer and len(batch) < MAX_BATCH:
                    chunk = self.buffer.popleft()
                    self.buffered -= len(chunk)
                    batch.extend(chunk)
                await self._deliver(batch)
            if self.fell_behind:
                self.fell_behind = False
                log.info("subscriber fell behind; reading the log", sub=self.id, seq=state.position)

    async def _read_until_live(self) -> None:
        """Read the log until caught up with what the hub has published, then attach."""
        state = self.state
        while True:
            events, scanned_to, head = await self._read_log(state.position, MAX_BATCH, self.filter)
            if events:
                await self._deliver(events)
            state.skip_to(scanned_to)
            # Attaching is synchronous with publish (both run on the event loop), so no
            # event can slip between the last read and live delivery: anything
            # published up to now is at or below the position, or we read again.
            if state.position >= head and self.hub.published_seq <= state.position:
                self.hub._attach(self)
                return

    async def _deliver(self, events: list[StoredEvent]) -> None:
        """Send `events` (in seq order) in messages of at most MAX_BATCH; the protocol's
        state drops any already delivered."""
        for start in range(0, len(events), MAX_BATCH):
            frame = self.state.events(events[start : start + MAX_BATCH])
            if frame is not None:
                await self._send_frame(frame)

    async def _send_frame(self, frame: bytes) -> None:
        self.sending = True
        if not self._block_check_due:
            # Runs on the loop's next turn: if this send is still under way then, it waits.
            self._block_check_due = True
            asyncio.get_running_loop().call_soon(self._check_blocked)
        try:
            await self._send(frame)
        finally:
            self.sending = False

    def _check_blocked(self) -> None:
        self._block_check_due = False
        if self.sending and not self.was_blocked:
            self.was_blocked = True
            log.info("subscriber blocked: its socket takes no more", sub=self.id, seq=self.state.position)


class Hub:
    """Fans committed events out to subscriptions; owns their tasks."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        #: Every connection's `events` frames come from here: each event encoded once.
        self.frames = EventFrames(codec, keep=4 * MAX_BUFFERED_EVENTS)
        self.published_seq = 0
        self.pipeline_of: dict[str, str | None] = {}
        #: Each run's status as of the last publish (for `lost` runs).
        self.status_of: dict[str, str] = {}
        self._live: dict[int, Subscription] = {}
        self._all: dict[int, Subscription] = {}
        self._next_id = 0
        self.delivered = 0
        self.fallbacks = 0

    @property
    def subscribers(self) -> int:
        return len(self._all)

    @property
    def blocked(self) -> int:
        """Subscriptions whose send waits for the client's socket to take a frame."""
        return sum(1 for s in self._all.values() if s.sending)

    @property
    def live_count(self) -> int:
        """Subscriptions delivered to from memory (the others read the log)."""
        return len(self._live)

    def buffered_events(self) -> int:
        """Events waiting in memory over all subscriptions."""
        return sum(s.buffered for s in self._all.values())

    def lag(self) -> int:
        """The largest number of events a subscriber has waiting in memory."""
        return max((s.buffered for s in self._all.values()), default=0)

    def publish(self, events: list[StoredEvent]) -> None:
        """Called by the writer after each commit, on the event loop; never waits."""
        if not events:
            return
        status_of = self.status_of
        for e in events:
            run = e.run
            if run is None:
                continue
            # Most events (metrics) leave a known run's status alone: skip the call for them.
            if run not in status_of or e.type in STATUS_TYPES:
                status_of[run] = status_after(status_of.get(run), e.type, e.data)
            if e.type == "run.started":
                pipeline = _field(e.data, "pipeline")
                if pipeline is not None:
                    self.pipeline_of[run] = pipeline
        self.published_seq = events[-1].seq
        for sub in list(self._live.values()):
            selected = sub.filter.select(events, self.pipeline_of)
            if selected:
                sub.offer(selected)

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def subscribe(
        self, state: ServerSubscription, flt: Filter, send: Send, read_log: LogReader
    ) -> Subscription:
        """Start delivering to the subscription `state` (opened by the connection, whose
        `subscribed` frame has gone out): from the log after its position, then live."""
        sub = Subscription(self, state, flt, send, read_log)
        self._all[sub.id] = sub
        sub.task = asyncio.create_task(self._run(sub), name=f"tracklog-sub-{sub.id}")
        return sub

    async def _run(self, sub: Subscription) -> None:
        try:
            await sub.run()
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception as exc:
            if type(exc).__name__ not in ("ConnectionClosedOK", "ConnectionClosedError", "ConnectionClosed"):
                log.exception("subscription failed", sub=sub.id)
        finally:
            self._detach(sub)
            self._all.pop(sub.id, None)
            self.delivered += sub.state.delivered

    async def unsubscribe(self, subs: Iterable[Subscription]) -> None:
        tasks = []
        for sub in subs:
            self._detach(sub)
            if sub.task is not None:
                sub.task.cancel()
                tasks.append(sub.task)
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    def _attach(self, sub: Subscription) -> None:
        sub.live = True
        self._live[sub.id] = sub

    def _detach(self, sub: Subscription) -> None:
        if self._live.pop(sub.id, None) is not None:
            sub.live = False

    def stop(self) -> list[asyncio.Task[None]]:
        tasks = [s.task for s in self._all.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        return tasks

    async def close(self, timeout: float) -> None:
        """Cancel every subscription and wait at most `timeout` for their tasks to end.

        A task blocked sending to a client that stopped reading ends on cancellation; the
        bound is there so that no subscription state can hold shutdown longer.
        """
        tasks = self.stop()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                log.warning("subscriptions did not stop in time", subscriptions=len(pending))
