"""Token buckets and the rate limits of a connection, with a clock the test moves (no timing)."""

from __future__ import annotations

import pytest

from tracklog.daemon.ratelimit import (
    MAX_REMEMBERED_CLOSED,
    ConnectionLimiter,
    Rate,
    RatePolicy,
    TokenBucket,
    TokenBuckets,
    parse_rate,
)
from tracklog.protocol import errors


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_passes_a_burst_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(Rate(10, 5), now=0.0)
    for _ in range(5):
        assert bucket.wait(1, 0.0) == 0.0
        bucket.take(1, 0.0)
    assert bucket.wait(1, 0.0) == pytest.approx(0.1)
    assert bucket.wait(1, 0.05) == pytest.approx(0.05)
    assert bucket.wait(1, 0.1) == 0.0
    bucket.take(1, 0.1)
    # It never holds more than its burst, however long it waited.
    assert bucket.wait(5, 100.0) == 0.0 and bucket.wait(5.5, 100.0) == 0.0
    bucket.take(5, 100.0)
    assert bucket.wait(1, 100.0) == pytest.approx(0.1)


def test_a_cost_above_the_burst_passes_on_a_full_bucket_and_leaves_a_debt() -> None:
    bucket = TokenBucket(Rate(100, 10), now=0.0)
    assert bucket.wait(50, 0.0) == 0.0  # a full bucket takes it
    bucket.take(50, 0.0)
    # 40 in debt: 50 tokens (0.5 s) until 10 (the burst) are there again.
    assert bucket.wait(50, 0.0) == pytest.approx(0.5)
    assert bucket.wait(1, 0.41) == 0.0


@pytest.mark.parametrize(
    ("text", "rate", "burst"),
    [("100", 100, 100), ("0.5", 0.5, 1), ("100:500", 100, 500), (" 2 : 3 ", 2, 3), ("1e3", 1000, 1000)],
)
def test_parse_rate(text: str, rate: float, burst: float) -> None:
    assert parse_rate(text) == Rate(rate, burst)


@pytest.mark.parametrize("text", ["", "fast", "10:", "-1", "0", "10:0.5"])
def test_parse_rate_refuses_what_is_not_a_rate(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


def test_appends_are_limited_per_connection_with_retry_after() -> None:
    clock = Clock()
    policy = RatePolicy(conn_events=Rate(100, 100))
    limiter = ConnectionLimiter(policy, TokenBuckets(policy, clock), None, clock)
    assert limiter.append(60, ref=1) is None
    refused = limiter.append(60, ref=2)
    assert isinstance(refused, errors.RateLimited)
    assert refused.code == "rate_limited" and refused.ref == 2
    assert refused.retry_after == pytest.approx(0.2)
    assert "events/s" in refused.message
    # Later appends are refused too until retry_after has passed, even small ones: they
    # cannot overtake the refused one.
    still = limiter.append(1, ref=3)
    assert isinstance(still, errors.RateLimited) and still.retry_after == pytest.approx(0.2)
    clock.now += 0.2
    assert limiter.append(60, ref=2) is None


def test_queries_are_limited_per_connection() -> None:
    clock = Clock()
    policy = RatePolicy(conn_queries=Rate(2, 2))
    limiter = ConnectionLimiter(policy, TokenBuckets(policy, clock), None, clock)
    assert limiter.query("query") is None and limiter.query("query") is None
    refused = limiter.query("query", ref=9)
    assert isinstance(refused, errors.RateLimited) and refused.retry_after == pytest.approx(0.5)
    assert refused.ref == 9 and "queries/s" in refused.message
    assert limiter.append(10_000) is None  # appends are not limited by this policy
    clock.now += 0.5
    assert limiter.query("query") is None


def test_a_token_bucket_is_shared_by_every_connection_of_the_token() -> None:
    clock = Clock()
    policy = RatePolicy(token_events=Rate(10, 10), token_queries=Rate(1, 1))
    shared = TokenBuckets(policy, clock)
    one = ConnectionLimiter(policy, shared, "token:aaaa", clock)
    two = ConnectionLimiter(policy, shared, "token:aaaa", clock)
    other = ConnectionLimiter(policy, shared, "token:bbbb", clock)
    assert one.append(10) is None
    assert isinstance(two.append(1), errors.RateLimited)
    assert other.append(10) is None  # another token has its own
    assert one.query("query") is None
    assert isinstance(two.query("check"), errors.RateLimited)


def test_a_request_is_charged_only_when_every_bucket_holds_it() -> None:
    clock = Clock()
    policy = RatePolicy(conn_events=Rate(10, 10), token_events=Rate(10, 5))
    shared = TokenBuckets(policy, clock)
    limiter = ConnectionLimiter(policy, shared, "token:x", clock)
    assert limiter.append(5) is None
    refused = limiter.append(5)
    assert isinstance(refused, errors.RateLimited) and refused.retry_after == pytest.approx(0.5)
    # The connection's own bucket was not charged for the refused append: 5 are left.
    clock.now += 0.5
    assert limiter.append(5) is None


def test_reconnecting_does_not_buy_a_fresh_burst() -> None:
    """A peer that drained its connection's buckets and reconnects starts where it was; an
    address or token of its own starts afresh, and so does the same peer once refilled."""
    clock = Clock()
    policy = RatePolicy(conn_events=Rate(100, 100), conn_queries=Rate(2, 2))
    shared = TokenBuckets(policy, clock)
    first = ConnectionLimiter(policy, shared, None, clock, peer="10.0.0.1")
    assert first.append(100) is None and first.query("query") is None and first.query("query") is None
    refused = first.append(50)
    assert isinstance(refused, errors.RateLimited)
    first.close()
    again = ConnectionLimiter(policy, shared, None, clock, peer="10.0.0.1")
    still = again.append(1)
    assert isinstance(still, errors.RateLimited)  # behind the append it was told to retry
    assert still.retry_after == pytest.approx(refused.retry_after)
    assert isinstance(again.query("query"), errors.RateLimited)
    assert ConnectionLimiter(policy, shared, None, clock, peer="10.0.0.2").append(100) is None
    assert ConnectionLimiter(policy, shared, "token:x", clock, peer="10.0.0.1").append(100) is None
    clock.now += 0.5  # the retry_after: 50 events' worth refilled
    assert again.append(50) is None
    again.close()
    clock.now += 1.0  # full again: nothing left to remember
    assert shared.remembered == 1
    fresh = ConnectionLimiter(policy, shared, None, clock, peer="10.0.0.1")
    assert fresh.append(100) is None
    assert shared.remembered == 0


def test_a_connection_that_closes_unspent_is_not_remembered_and_memory_is_bounded() -> None:
    clock = Clock()
    policy = RatePolicy(conn_events=Rate(10, 10))
    shared = TokenBuckets(policy, clock)
    ConnectionLimiter(policy, shared, None, clock, peer="10.0.0.1").close()
    assert shared.remembered == 0
    for i in range(MAX_REMEMBERED_CLOSED + 10):
        limiter = ConnectionLimiter(policy, shared, None, clock, peer=f"host-{i}")
        assert limiter.append(10) is None
        limiter.close()
    assert shared.remembered == MAX_REMEMBERED_CLOSED
    # The oldest were forgotten first: host-0 starts afresh, the newest does not.
    assert ConnectionLimiter(policy, shared, None, clock, peer="host-0").append(10) is None
    newest = f"host-{MAX_REMEMBERED_CLOSED + 9}"
    refused = ConnectionLimiter(policy, shared, None, clock, peer=newest).append(10)
    assert isinstance(refused, errors.RateLimited)


def test_no_policy_means_no_limit() -> None:
    clock = Clock()
    policy = RatePolicy()
    assert not policy.enabled
    limiter = ConnectionLimiter(policy, TokenBuckets(policy, clock), "token:x", clock)
    for _ in range(1000):
        assert limiter.append(10_000) is None and limiter.query("query") is None
