"""Rate limits on appends (events per second) and queries (per second): token buckets.

Each limit is a bucket of `burst` tokens refilled at `rate` per second. A request costs
its events (an append) or 1 (a query); it passes when the bucket holds its cost, and is
otherwise refused with `rate_limited` and `retry_after`, the seconds until it would pass.
A cost above the burst (an append larger than the burst) passes when the bucket is full,
leaving it in debt, so large appends still go through at the configured average rate.

A connection has buckets of its own and shares its token's (every connection with the
same token draws on the same ones); a request must pass all of them, and is charged to
all of them only when it does. Nothing here reads a clock: `now` is given, so the tests
decide time and depend on none.

Once a connection's append is refused, its later appends are refused too until the
`retry_after` it was told has passed: the appends a client had already sent behind the
refused one cannot overtake it, so a client that waits and sends them again keeps their order.

A connection's own buckets outlive it for as long as they still hold less than a full
burst: the peer's next connection (same address, same token) starts from where they were,
so closing and reopening a connection cannot buy a fresh burst. At most
`MAX_REMEMBERED_CLOSED` closed connections are remembered (the oldest forgotten first).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from tracklog.protocol import errors

#: Floor of `retry_after`: a client never spins on a zero wait.
MIN_RETRY_AFTER: Final = 0.001
#: Closed connections whose buckets are kept for their peer's next connection.
MAX_REMEMBERED_CLOSED: Final = 4096


@dataclass(frozen=True)
class Rate:
    """A limit: `rate` per second, bursts of up to `burst` (at least 1)."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)) or not (
            self.burst >= 1 and math.isfinite(self.burst)
        ):
            raise ValueError(f"rate limit: expected rate > 0 and burst >= 1, got {self.rate}/{self.burst}")


def parse_rate(text: str) -> Rate:
    """`RATE` or `RATE:BURST` (burst defaults to one second's worth, at least 1); ValueError otherwise."""
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*(?::\s*([0-9.]+(?:e[0-9]+)?)\s*)?", text)
    if match is None:
        raise ValueError(f"expected RATE or RATE:BURST (numbers), got {text!r}")
    rate = float(match.group(1))
    burst = float(match.group(2)) if match.group(2) is not None else max(1.0, rate)
    return Rate(rate, burst)


class TokenBucket:
    """`burst` tokens at most, refilled at `rate` per second from the `now` given."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, limit: Rate, now: float) -> None:
        self.rate = limit.rate
        self.burst = limit.burst
        self.tokens = limit.burst
        self.last = now

    def _refill(self, now: float) -> None:
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now

    def wait(self, cost: float, now: float) -> float:
        """Seconds until `cost` would pass (0.0: it passes now); takes nothing."""
        self._refill(now)
        needed = min(cost, self.burst)
        if self.tokens >= needed - 1e-9:  # a client that waited the retry_after it was told passes
            return 0.0
        return (needed - self.tokens) / self.rate

    def take(self, cost: float, now: float) -> None:
        """Charge `cost` (after `wait` said 0.0): the bucket may go into debt for a large one."""
        self._refill(now)
        self.tokens -= cost

    def full(self, now: float) -> bool:
        """Whether the bucket is back to a whole burst (a new one would be the same)."""
        self._refill(now)
        return self.tokens >= self.burst


@dataclass(frozen=True)
class RatePolicy:
    """The configured limits (None: that limit is off). All off by default."""

    conn_events: Rate | None = None
    conn_queries: Rate | None = None
    token_events: Rate | None = None
    token_queries: Rate | None = None

    @property
    def enabled(self) -> bool:
        return any((self.conn_events, self.conn_queries, self.token_events, self.token_queries))

    @property
    def limits_events(self) -> bool:
        return self.conn_events is not None or self.token_events is not None


#: Who a connection's own buckets are remembered for: the peer's address and token name.
PeerKey = tuple[str, str | None]


@dataclass
class _Closed:
    """What a closed connection leaves for its peer's next one."""

    events: TokenBucket | None
    queries: TokenBucket | None
    appends_blocked_until: float

    def spent(self, now: float) -> bool:
        """Whether anything here differs from a new connection's fresh buckets."""
        if now < self.appends_blocked_until:
            return True
        return any(b is not None and not b.full(now) for b in (self.events, self.queries))


class TokenBuckets:
    """The per-token buckets, shared by every connection of a token (kept while the daemon runs;
    there are as many as configured tokens, so this cannot grow without bound), and the own
    buckets of recently closed connections, for their peer's next connection."""

    def __init__(self, policy: RatePolicy, clock: Callable[[], float]) -> None:
        self.policy = policy
        self.clock = clock
        self._events: dict[str, TokenBucket] = {}
        self._queries: dict[str, TokenBucket] = {}
        self._closed: OrderedDict[PeerKey, _Closed] = OrderedDict()

    def keep(self, peer: PeerKey, limiter: ConnectionLimiter) -> None:
        """Remember a closing connection's own buckets for `peer`'s next connection, unless
        they are as good as new."""
        closed = _Closed(limiter.own_events, limiter.own_queries, limiter.appends_blocked_until)
        self._closed.pop(peer, None)
        if not closed.spent(self.clock()):
            return
        self._closed[peer] = closed
        while len(self._closed) > MAX_REMEMBERED_CLOSED:
            self._closed.popitem(last=False)

    def resume(self, peer: PeerKey) -> _Closed | None:
        """What `peer`'s last closed connection left, taken (None: start afresh)."""
        closed = self._closed.pop(peer, None)
        if closed is None or not closed.spent(self.clock()):
            return None
        return closed

    @property
    def remembered(self) -> int:
        """How many closed connections' buckets are kept (for the memory report and tests)."""
        return len(self._closed)

    def events(self, token: str) -> TokenBucket | None:
        limit = self.policy.token_events
        if limit is None:
            return None
        bucket = self._events.get(token)
        if bucket is None:
            bucket = self._events[token] = TokenBucket(limit, self.clock())
        return bucket

    def queries(self, token: str) -> TokenBucket | None:
        limit = self.policy.token_queries
        if limit is None:
            return None
        bucket = self._queries.get(token)
        if bucket is None:
            bucket = self._queries[token] = TokenBucket(limit, self.clock())
        return bucket


def http_query(shared: TokenBuckets, token: str, what: str) -> errors.RateLimited | None:
    """Charge one HTTP request that reads (an API query, an export) to its token's query
    bucket; the error to answer it with (429) when refused."""
    bucket = shared.queries(token)
    if bucket is None:
        return None
    now = shared.clock()
    wait = bucket.wait(1, now)
    if wait <= 0.0:
        bucket.take(1, now)
        return None
    retry = _retry_after(wait)
    return errors.RateLimited(
        f"{what}: over the rate limit (queries/s); retry after {retry:g} s", None, retry
    )


def _retry_after(seconds: float) -> float:
    return max(MIN_RETRY_AFTER, math.ceil(seconds * 1000 - 1e-6) / 1000)  # whole ms, rounded up


class ConnectionLimiter:
    """The rate limits of one connection: its own buckets and its token's (`token`: the
    grant's name; None when there are no tokens, then only the connection's limits apply).
    `peer`: the connection's address, whose last closed connection's buckets it takes on
    (None: fresh buckets); call `close` when the connection ends."""

    def __init__(
        self,
        policy: RatePolicy,
        shared: TokenBuckets,
        token: str | None,
        clock: Callable[[], float],
        peer: str | None = None,
    ) -> None:
        now = clock()
        self.clock = clock
        self._shared = shared
        self._peer: PeerKey | None = (peer, token) if peer is not None else None
        before = shared.resume(self._peer) if self._peer is not None else None
        self.own_events = TokenBucket(policy.conn_events, now) if policy.conn_events else None
        self.own_queries = TokenBucket(policy.conn_queries, now) if policy.conn_queries else None
        #: Appends are refused until then, once one was (see the module's docstring).
        self.appends_blocked_until = -math.inf
        if before is not None:
            self.own_events = before.events if before.events is not None else self.own_events
            self.own_queries = before.queries if before.queries is not None else self.own_queries
            self.appends_blocked_until = before.appends_blocked_until
        self._event_buckets = [
            b for b in (self.own_events, shared.events(token) if token is not None else None) if b is not None
        ]
        self._query_buckets = [
            b
            for b in (self.own_queries, shared.queries(token) if token is not None else None)
            if b is not None
        ]

    def close(self) -> None:
        """The connection ended: its own buckets stay with its peer for the next one."""
        if self._peer is not None:
            self._shared.keep(self._peer, self)
            self._peer = None

    @property
    def limits_events(self) -> bool:
        return bool(self._event_buckets)

    def append(self, events: int, ref: int | None = None) -> errors.RateLimited | None:
        """Charge an append of `events` events; the error to answer it with when refused."""
        if not self._event_buckets:
            return None
        now = self.clock()
        if now < self.appends_blocked_until:
            wait = self.appends_blocked_until - now
        else:
            wait = self._charge(self._event_buckets, max(1, events), now)
        if wait <= 0.0:
            return None
        retry = _retry_after(wait)
        self.appends_blocked_until = max(self.appends_blocked_until, now + retry)
        return errors.RateLimited(
            f"append: {events} events over the rate limit (events/s); retry after {retry:g} s", ref, retry
        )

    def query(self, op: str, ref: int | None = None) -> errors.RateLimited | None:
        """Charge one query (or check); the error to answer it with when refused."""
        if not self._query_buckets:
            return None
        wait = self._charge(self._query_buckets, 1, self.clock())
        if wait <= 0.0:
            return None
        retry = _retry_after(wait)
        return errors.RateLimited(
            f"{op}: over the rate limit (queries/s); retry after {retry:g} s", ref, retry
        )

    @staticmethod
    def _charge(buckets: list[TokenBucket], cost: float, now: float) -> float:
        """Take `cost` from every bucket if all hold it (0.0), else the longest wait."""
        wait = max(bucket.wait(cost, now) for bucket in buckets)
        if wait <= 0.0:
            for bucket in buckets:
                bucket.take(cost, now)
        return wait
