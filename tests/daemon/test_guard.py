"""The guard of a connection: scopes of each op class, rate limits, subscription and row limits."""

from __future__ import annotations

import json

import hypothesis
import msgspec
import pytest
from hypothesis import strategies as st

from tracklog.daemon.auth import ADMIN, ALL_SCOPES, APPEND, READ, grant
from tracklog.daemon.guard import ConnectionGuard, Limits, append_head, msgpack_append_head
from tracklog.daemon.ratelimit import ConnectionLimiter, Rate, RatePolicy, TokenBuckets
from tracklog.protocol import errors
from tracklog.protocol.connection import AppendFrame, Send
from tracklog.protocol.messages import Check, Query, Result, Subscribe, Unsubscribe

APPEND_FRAME = AppendFrame(json.dumps({"op": "append", "ref": 4, "events": [{"type": "x"}] * 3}))
REQUESTS = {
    "append": APPEND_FRAME,
    "check": Check(namespace="n", kind="hash", text="t", ref=5),
    "query": Query(q="runs", ref=6),
    "sql": Query(q="sql", sql="select 1", ref=7),
    "schema": Query(q="schema", ref=8),
    "subscribe": Subscribe(ref=9),
    "unsubscribe": Unsubscribe(sub=1, ref=10),
}
#: Which requests each scope lets through.
ALLOWED = {
    APPEND: {"append", "check"},
    READ: {"query", "subscribe", "unsubscribe"},
    ADMIN: set(REQUESTS),
}


@pytest.mark.parametrize("scope", [APPEND, READ, ADMIN])
@pytest.mark.parametrize("name", list(REQUESTS))
def test_each_scope_allows_its_ops_and_forbids_the_others(scope: str, name: str) -> None:
    guard = ConnectionGuard(grant("t", {scope}), Limits())
    refused = guard.refusal(REQUESTS[name])
    if name in ALLOWED[scope]:
        assert refused is None
    else:
        assert isinstance(refused, errors.Forbidden)
        assert refused.code == "forbidden"
        needed = ADMIN if name in ("sql", "schema") else APPEND if name in ALLOWED[APPEND] else READ
        assert f"needs the '{needed}' scope" in refused.message
        assert refused.ref == {"append": 4}.get(name, getattr(REQUESTS[name], "ref", None))


def test_all_scopes_let_everything_through_and_replies_are_not_checked() -> None:
    guard = ConnectionGuard(grant("t", ALL_SCOPES), Limits())
    for request in REQUESTS.values():
        assert guard.refusal(request) is None
    assert guard.refusal(Send(b"x")) is None


def test_append_head_reads_ref_and_count_in_both_encodings() -> None:
    msg = {"op": "append", "ref": 12, "events": [{"type": "a"}, {"type": "b"}]}
    assert append_head(json.dumps(msg)) == (12, 2)
    assert append_head(msgspec.msgpack.encode(msg)) == (12, 2)
    assert append_head("{not json") == (None, 0)


def test_rate_limited_appends_and_queries_through_the_guard() -> None:
    now = [0.0]
    policy = RatePolicy(conn_events=Rate(3, 3), conn_queries=Rate(1, 1))
    limiter = ConnectionLimiter(policy, TokenBuckets(policy, lambda: now[0]), None, lambda: now[0])
    guard = ConnectionGuard(grant("t"), Limits(), limiter)
    assert guard.refusal(APPEND_FRAME) is None  # 3 events: the whole burst
    refused = guard.refusal(APPEND_FRAME)
    assert isinstance(refused, errors.RateLimited) and refused.ref == 4
    assert refused.retry_after == pytest.approx(1.0)
    assert guard.refusal(REQUESTS["query"]) is None
    refused = guard.refusal(REQUESTS["check"])
    assert isinstance(refused, errors.RateLimited) and refused.ref == 5
    assert guard.refusal(REQUESTS["subscribe"]) is None  # subscriptions are not rate limited


def test_subscriptions_per_connection_are_limited() -> None:
    guard = ConnectionGuard(grant("t"), Limits(max_subscriptions=2))
    assert guard.refusal(Subscribe(ref=1), subscriptions=1) is None
    refused = guard.refusal(Subscribe(ref=2), subscriptions=2)
    assert isinstance(refused, errors.TooLarge) and refused.ref == 2
    assert "at most 2 per connection (max_subscriptions)" in refused.message


def test_query_rows_are_limited_before_and_after_the_query() -> None:
    limits = Limits(max_query_rows=5)
    guard = ConnectionGuard(grant("t"), limits)
    assert guard.refusal(Query(q="events", limit=5)) is None
    refused = guard.refusal(Query(q="events", limit=6, ref=3))
    assert isinstance(refused, errors.TooLarge) and refused.ref == 3
    assert "limit: 6 rows asked, at most 5 per query (max_query_rows)" in refused.message
    q = Query(q="metrics", ref=4)
    assert limits.check_rows(Result(seq=1, rows=[1] * 5), q).rows == [1] * 5
    with pytest.raises(errors.TooLarge, match="query metrics: 6 rows, at most 5 \\(max_query_rows\\)"):
        limits.check_rows(Result(seq=1, rows=[1] * 6), q)


def test_connections_limit_names_the_setting() -> None:
    limits = Limits(max_connections=2)
    assert limits.too_many_connections(1) is None
    assert limits.too_many_connections(2) == "too many connections (max_connections=2)"
    assert Limits(max_connections=None).too_many_connections(10**6) is None


@pytest.mark.parametrize(
    "bad", [{"max_frame_bytes": 100}, {"max_events_per_append": 0}, {"max_depth": -1}, {"max_query_rows": 0}]
)
def test_limits_refuse_values_that_make_no_sense(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        Limits(**bad)  # type: ignore[arg-type]


def _slow_head(frame: bytes) -> tuple[int | None, int]:
    head = msgspec.msgpack.decode(frame)
    return head.get("ref"), len(head["events"])


@pytest.mark.parametrize(
    "msg",
    [
        {"op": "append", "ref": 7, "events": [{"type": "x"}] * 3},
        {"op": "append", "ref": 300, "events": [{"type": "x"}] * 20},  # array16, ref u16
        {"op": "append", "ref": -5, "events": []},
        {"op": "append", "ref": 2**40, "events": [1] * 70_000},  # array32, ref u64
        {"op": "append", "ref": None, "events": [1]},
        {"op": "append", "events": [1, 2]},
        {"ref": 1, "op": "append", "events": [1, 2]},
    ],
)
def test_the_quick_msgpack_count_agrees_with_decoding(msg: dict[str, object]) -> None:
    frame = msgspec.msgpack.encode(msg)
    assert msgpack_append_head(frame) == _slow_head(frame)
    assert append_head(frame) == _slow_head(frame)


@pytest.mark.parametrize(
    "msg",
    [
        {"op": "append", "events": [1], "ref": 3},  # events not last
        {"op": "append", "ref": 1, "events": [1], "extra": 2},
        {"op": "append", "ref": True, "events": [1]},
        {"op": "append", "ref": 1.5, "events": [1]},
        {"op": "append", "ref": 1, "events": "no"},
        {"op": "append", "note": "x", "events": [1]},
    ],
)
def test_other_shapes_are_left_to_decoding(msg: dict[str, object]) -> None:
    assert msgpack_append_head(msgspec.msgpack.encode(msg)) is None


def test_a_second_events_or_a_count_beyond_the_frame_is_not_trusted() -> None:
    # A hand-made map with `events` twice: the first, short, must not be what is charged.
    twice = b"\x83\xa2op\xa6append\xa6events\x90\xa6events\x93\x01\x02\x03"
    assert msgpack_append_head(twice) is None
    # An array32 header claiming a billion events in a few bytes.
    claims = b"\x82\xa2op\xa6append\xa6events\xdd\x3b\x9a\xca\x00\x01"
    assert msgpack_append_head(claims) is None
    assert msgpack_append_head(b"") is None and msgpack_append_head(b"\x83\xa2o") is None


@hypothesis.given(
    ref=st.none() | st.integers(min_value=-(2**63), max_value=2**64 - 1),
    events=st.lists(st.integers(min_value=-(2**63), max_value=2**63) | st.text(max_size=3), max_size=40),
    order=st.permutations(["op", "ref", "events"]),
)
def test_the_quick_count_is_the_decoded_count_or_nothing(
    ref: int | None, events: list[object], order: list[str]
) -> None:
    values = {"op": "append", "ref": ref, "events": events}
    frame = msgspec.msgpack.encode({key: values[key] for key in order})
    quick = msgpack_append_head(frame)
    assert quick is None or quick == _slow_head(frame)
    assert append_head(frame) == _slow_head(frame)
