"""UUIDv7 event ids, cheap enough to make on the caller's thread at every `log_*` call.

An id is made when the event is logged, before it is queued, so every resend of the
event (after a reconnect, from the spool, by another process) carries the same id and
the daemon drops the copies. Layout (RFC 9562, section 5.7):

    unix_ts_ms (48 bits) | ver 7 | rand_a (12 bits) | var 0b10 | rand_b (62 bits)

`rand_a` and the top 14 bits of `rand_b` are random per process; the low 48 bits of
`rand_b` are a counter that starts at a random value (RFC 9562 6.2 allows a counter
in the random bits). Ids are unique within a process by the counter and across
processes by 74 random bits, and sort by time to the millisecond. The text for the
current millisecond and counter block is cached, so most ids cost one string concatenation.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from typing import Final

#: The last three hex digits of the counter, ready-made.
_HEX3: Final = tuple(f"{i:03x}" for i in range(4096))


class UUID7:
    """A source of UUIDv7 strings: `ids(ts)` for a time in seconds, `ids.new()` for now.

    Safe to call from several threads: the cached text is one tuple (ms, counter high
    bits, text), read and replaced as a whole, so an id's text always matches its counter.
    """

    __slots__ = ("_count", "_middle", "_state")

    def __init__(self) -> None:
        self._middle = ""
        self._count: Callable[[], int] = int
        self._state: tuple[int, int, str] = (-1, -1, "")
        self.reseed()

    def reseed(self) -> None:
        """New random bits and counter start; called after fork so a child never repeats ids."""
        rand = int.from_bytes(os.urandom(8), "big")
        rand_a = rand & 0xFFF
        rand_b_top = (rand >> 12) & 0x3FFF  # 14 bits under the 2 variant bits
        self._middle = f"{rand_a:03x}-{0x8000 | rand_b_top:04x}-"
        self._count = itertools.count((rand >> 26) & ((1 << 38) - 1)).__next__
        self._state = (-1, -1, "")

    def __call__(self, ts: float) -> str:
        ms = int(ts * 1000)
        count = self._count()
        high = count >> 12
        state = self._state
        if state[0] != ms or state[1] != high:
            # Once a millisecond (or every 4,096 ids): format the 45 characters before the last 3.
            text = f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7{self._middle}{high & 0xFFFFFFFFF:09x}"
            state = (ms, high, text)
            self._state = state
        return state[2] + _HEX3[count & 0xFFF]

    def new(self) -> str:
        return self(time.time())


#: The process-wide id source.
uuid7: Final = UUID7()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=uuid7.reseed)
