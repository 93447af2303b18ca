"""UUIDv7 event ids, cheap enough to make on the caller's thread at every `log_*` call.

An id is made when the event is logged, before it is queued, so every resend of the
event (after a reconnect, from the spool, by another process) carries the same id and
the daemon drops the copies. Layout (RFC 9562, section 5.7):

    unix_ts_ms (48 bits) | ver 7 | rand_a (12 bits) | var 0b10 | rand_b (62 bits)

`rand_a` and the top 14 bits of `rand_b` are random per process; the low 48 bits of
`rand_b` are a counter that starts at a random value (RFC 9562 6.2 allows a counter
in the random bits). Ids are unique within a process by the counter and across
processes by 74 random bits, and sort by time to the millisecond. The text for the
current millisecond is cached, so an id costs one integer format, not five.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from typing import Final

_COUNTER_MASK: Final = (1 << 48) - 1


class UUID7:
    """A source of UUIDv7 strings: `ids(ts)` for a time in seconds, `ids.new()` for now."""

    __slots__ = ("_count", "_middle", "_ms", "_prefix")

    def __init__(self) -> None:
        self._ms = -1
        self._prefix = ""
        self._middle = ""
        self._count: Callable[[], int] = int
        self.reseed()

    def reseed(self) -> None:
        """New random bits and counter start; called after fork so a child never repeats ids."""
        rand = int.from_bytes(os.urandom(8), "big")
        rand_a = rand & 0xFFF
        rand_b_top = (rand >> 12) & 0x3FFF  # 14 bits under the 2 variant bits
        self._middle = f"{rand_a:03x}-{0x8000 | rand_b_top:04x}-"
        self._count = itertools.count((rand >> 26) & ((1 << 38) - 1)).__next__
        self._ms = -1

    def __call__(self, ts: float) -> str:
        ms = int(ts * 1000)
        if ms != self._ms:
            # Two threads may race here; each still gets a unique counter value.
            self._prefix = f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7{self._middle}"
            self._ms = ms
        return f"{self._prefix}{self._count() & _COUNTER_MASK:012x}"

    def new(self) -> str:
        return self(time.time())


#: The process-wide id source.
uuid7: Final = UUID7()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=uuid7.reseed)
