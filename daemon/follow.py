"""Publishing a log that several daemons write, in seq order, each event once.

With one daemon, every commit is the next stretch of the log and goes straight to the
hub. With several on one database, this daemon's commits come back with seqs after a gap
(what the others committed in between), and the others' events come from the log
(`storage.postgres.follow.LogWatcher`). The `Sequencer` takes both, on the event loop,
and hands the hub one gapless run of events: an own commit after a gap waits until the
gap has been read from the log; anything at or below what was published is dropped (the
watcher may read an own commit back, or a stretch twice). So the hub's subscribers, and
its run pipelines and statuses, follow every daemon's events, exactly once, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from tracklog.protocol.messages import StoredEvent

from .hub import Hub


def contiguous(events: list[StoredEvent]) -> Iterator[list[StoredEvent]]:
    """`events` (in seq order) cut where seqs jump: a writer's group retried request by
    request commits in several transactions, between which other daemons may commit."""
    start = 0
    for i in range(1, len(events)):
        if events[i].seq != events[i - 1].seq + 1:
            yield events[start:i]
            start = i
    if events:
        yield events[start:]


class Sequencer:
    """Orders this daemon's commits and the log's other events into the hub.

    `poke(reset)` asks the watcher to read the log soon (`reset`: from the hub's
    position, forgetting what it has handed over).
    """

    def __init__(self, hub: Hub, poke: Callable[[bool], None]) -> None:
        self.hub = hub
        self._poke = poke
        #: Own commits that came after a gap, by first seq, until the gap is read.
        self._waiting: dict[int, list[StoredEvent]] = {}
        #: Own commits that had to wait for a gap; events published from the log.
        self.gaps = 0
        self.followed = 0

    @property
    def waiting(self) -> int:
        return sum(len(events) for events in self._waiting.values())

    def from_writer(self, events: list[StoredEvent]) -> None:
        """The writer's listener: this daemon's committed events."""
        for chunk in contiguous(events):
            published = self.hub.published_seq
            if chunk[-1].seq <= published:
                continue  # read from the log already
            if chunk[0].seq <= published + 1:
                self._publish(chunk)
            else:
                self.gaps += 1
                self._waiting[chunk[0].seq] = chunk
                self._poke(False)

    def from_log(self, events: list[StoredEvent]) -> None:
        """A batch the watcher read from the log (gapless, in seq order)."""
        published = self.hub.published_seq
        if not events or events[-1].seq <= published:
            return
        if events[0].seq > published + 1:  # not next: read again from where the hub is
            self._poke(True)
            return
        self.followed += self._publish(events)

    def _publish(self, events: list[StoredEvent]) -> int:
        """Publish what of `events` (gapless, starting at or before the next seq) is new,
        then every waiting commit that is now next; how many events of `events` went out."""
        published = self.hub.published_seq
        fresh = events if events[0].seq > published else [e for e in events if e.seq > published]
        self.hub.publish(fresh)
        while self._waiting:
            first = min(self._waiting)
            if first > self.hub.published_seq + 1:
                break
            waiting = self._waiting.pop(first)
            published = self.hub.published_seq
            rest = [e for e in waiting if e.seq > published]
            if rest:
                self.hub.publish(rest)
        return len(fresh)
