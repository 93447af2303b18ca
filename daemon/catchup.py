"""Pages of the log shared by the subscriptions catching up on it.

A subscription that starts from an old seq, or falls out of live delivery, reads the log
until it reaches the head. Each read costs the daemon the rows and the decoding of up to
`MAX_BATCH` events, and when fifty subscribers fall behind together (a dashboard opened
by a team, a load test) they read the same stretch of the log fifty times: on the load
of `bench/load.py` those reads were three quarters of the daemon's CPU.

So the unfiltered reads go through fixed pages of `PAGE_EVENTS` seqs (page k holds the
events with k * PAGE_EVENTS < seq <= (k + 1) * PAGE_EVENTS). A page is read once, by the
first subscription that needs it, while the others needing it wait for that read; it is
kept only once complete (its last seq published), and the last `KEPT_PAGES` used are
kept. A subscription whose position is inside a page takes the page's events after its
position. Reads of a page not yet complete (the log's tail) and filtered reads go to the
log directly, as before: they are small, or narrowed by the database's indexes.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Final

from tracklog.protocol.messages import StoredEvent

#: Seqs in a page: a subscription's read (`hub.MAX_BATCH`) takes at most one page.
PAGE_EVENTS: Final = 1_000
#: Complete pages kept (about a megabyte each with small events): enough for subscribers
#: that lag by up to this many pages behind one another to share their reads.
KEPT_PAGES: Final = 16

#: An unfiltered read of the log: (after, limit) -> (events, seq read up to, head).
Scan = Callable[[int, int], Awaitable[tuple[list[StoredEvent], int, int]]]


class SharedPages:
    """The log's complete pages as the subscriptions catching up read them.

    `scan` reads the log; `published` is the highest seq the hub has published (every seq
    up to it is committed, so a page that ends at or below it can no longer change).
    """

    def __init__(
        self,
        scan: Scan,
        published: Callable[[], int],
        page_events: int = PAGE_EVENTS,
        kept_pages: int = KEPT_PAGES,
    ) -> None:
        self._scan = scan
        self._published = published
        self.page_events = page_events
        self.kept_pages = kept_pages
        self._pages: OrderedDict[int, tuple[list[StoredEvent], int]] = OrderedDict()
        self._reading: dict[int, asyncio.Future[tuple[list[StoredEvent], int] | None]] = {}
        #: Reads that went to the log, and reads answered from a page (tests, memory report).
        self.scans = 0
        self.shared = 0

    @property
    def kept(self) -> int:
        """How many pages are kept now."""
        return len(self._pages)

    async def read(self, after: int, limit: int) -> tuple[list[StoredEvent], int, int]:
        """As `scan(after, limit)`: the events after `after` (at most `limit`), the seq read
        up to, and the head; from a shared page when the page holding `after + 1` is complete."""
        index = after // self.page_events
        end = (index + 1) * self.page_events
        if end > self._published() or limit <= 0:
            self.scans += 1
            return await self._scan(after, limit)
        page = await self._page(index)
        if page is None:  # the read found the page incomplete after all (a log rebuilt)
            self.scans += 1
            return await self._scan(after, limit)
        events, head = page
        self.shared += 1
        taken = [e for e in events if e.seq > after]
        if len(taken) > limit:
            taken = taken[:limit]
            return taken, taken[-1].seq, head
        return taken, end, head

    async def _page(self, index: int) -> tuple[list[StoredEvent], int] | None:
        """Page `index`, from those kept, from a read under way, or read now."""
        page = self._pages.get(index)
        if page is not None:
            self._pages.move_to_end(index)
            return page
        reading = self._reading.get(index)
        if reading is not None:
            return await asyncio.shield(reading)
        future: asyncio.Future[tuple[list[StoredEvent], int] | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._reading[index] = future
        page = None
        try:
            page = await self._read_page(index)
        finally:
            # A failed or cancelled read leaves its waiters to read the log themselves.
            del self._reading[index]
            future.set_result(page)
        if page is not None:
            self._pages[index] = page
            while len(self._pages) > self.kept_pages:
                self._pages.popitem(last=False)
        return page

    async def _read_page(self, index: int) -> tuple[list[StoredEvent], int] | None:
        start = index * self.page_events
        end = start + self.page_events
        self.scans += 1
        # A page holds at most page_events seqs, so one read of that many events covers it
        # (beyond its end only when seqs are missing, as after a purge: those are dropped).
        events, _, head = await self._scan(start, self.page_events)
        if head < end:
            return None
        return [e for e in events if e.seq <= end], head
