"""The connection state machines, by calling them: a client and a server connection talk
to each other through plain bytes, with no socket and no event loop."""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec
import pytest

from tracklog.protocol import errors
from tracklog.protocol.connection import (
    Answered,
    AppendFrame,
    ClientConnection,
    Close,
    ConnectionViolation,
    Delivered,
    Encoding,
    EventFrames,
    Greeted,
    Notice,
    Opened,
    Refused,
    Send,
    ServerConnection,
    ServerSubscription,
    State,
    WentLive,
)
from tracklog.protocol.events import MetricsData
from tracklog.protocol.messages import (
    Ack,
    Append,
    Check,
    Codec,
    Error,
    Events,
    Hello,
    Live,
    Query,
    Result,
    StoredEvent,
    Subscribe,
    Subscribed,
    Unsubscribe,
)

CODEC = Codec()


def server_with_tokens(*tokens: str) -> ServerConnection:
    return ServerConnection(CODEC, "tracklog/test", (lambda t: t in tokens) if tokens else None)


def opened_pair(encoding: Encoding = Encoding.MSGPACK) -> tuple[ClientConnection, ServerConnection]:
    client = ClientConnection("test-client", encoding=encoding)
    server = server_with_tokens()
    hello = client.hello()
    greeted = server.receive(hello.decode() if encoding is Encoding.JSON else hello)
    assert isinstance(greeted, Greeted)
    assert isinstance(client.receive(server.welcome(head=5))[0], Opened)
    return client, server


def as_frame(client: ClientConnection, data: bytes) -> bytes | str:
    """What the socket would carry: JSON goes in text frames."""
    return data if client.binary else data.decode()


def stored(seq: int) -> StoredEvent:
    return StoredEvent(seq, "metrics", {"values": {"x": 1.0}}, 1.0, 1.0, None, "r")


def events_frame(server: ServerConnection, sub: int, *seqs: int) -> bytes:
    return server.encode(Events(sub=sub, events=[stored(s) for s in seqs]))


# -- the handshake ----------------------------------------------------------------------


@pytest.mark.parametrize("encoding", list(Encoding))
def test_a_hello_is_welcomed_and_both_ends_are_open_in_the_client_s_encoding(encoding: Encoding) -> None:
    client, server = opened_pair(encoding)
    assert client.state is State.OPEN and server.state is State.OPEN
    assert server.encoding is encoding
    assert client.welcome is not None and client.welcome.head == 5


def test_the_hello_carries_protocol_client_name_and_token() -> None:
    hello = msgspec.msgpack.decode(ClientConnection("p/1", token="s3cret").hello())
    assert hello == {"op": "hello", "protocol": 1, "client": "p/1", "token": "s3cret"}


def test_a_first_message_other_than_hello_is_refused_and_closes() -> None:
    server = server_with_tokens()
    outcome = server.receive(json.dumps({"op": "query", "ref": 4, "q": "runs"}))
    assert isinstance(outcome, Close) and outcome.code == 1008
    assert json.loads(outcome.data) == {
        "op": "error",
        "ref": 4,
        "code": "hello_required",
        "message": "the first message must be hello",
    }
    assert server.state is State.CLOSED


def test_an_undecodable_first_frame_is_refused_as_hello_required() -> None:
    outcome = server_with_tokens().receive(b"\xc1")
    assert isinstance(outcome, Close)
    assert msgspec.msgpack.decode(outcome.data)["code"] == "hello_required"


def test_a_hello_with_a_bad_token_is_refused_as_unauthorized() -> None:
    server = server_with_tokens("good")
    outcome = server.receive(ClientConnection("c", token="bad").hello())
    assert isinstance(outcome, Close) and outcome.reason == "unauthorized"
    assert msgspec.msgpack.decode(outcome.data)["code"] == "unauthorized"


def test_a_hello_with_a_good_token_is_greeted() -> None:
    assert isinstance(
        server_with_tokens("good").receive(ClientConnection("c", token="good").hello()), Greeted
    )


def test_the_client_reports_a_refused_hello_and_closes() -> None:
    client = ClientConnection("c")
    client.hello()
    server = server_with_tokens("good")
    refusal = server.receive(ClientConnection("c").hello())
    assert isinstance(refusal, Close)
    [event] = client.receive(refusal.data)
    assert isinstance(event, Refused) and event.error.code == "unauthorized"
    assert client.state is State.CLOSED


def test_the_client_cannot_send_requests_before_the_welcome() -> None:
    client = ClientConnection("c")
    client.hello()
    with pytest.raises(ConnectionViolation):
        client.request(Query(q="runs"))


def test_the_client_says_hello_only_once() -> None:
    client = ClientConnection("c")
    client.hello()
    with pytest.raises(ConnectionViolation):
        client.hello()


def test_a_second_hello_gets_bad_message_and_the_connection_stays_open() -> None:
    _client, server = opened_pair()
    outcome = server.receive(msgspec.msgpack.encode({"op": "hello", "ref": 9}))
    assert isinstance(outcome, Send)
    assert msgspec.msgpack.decode(outcome.data)["code"] == "bad_message"
    assert server.state is State.OPEN


# -- requests and replies ---------------------------------------------------------------


def test_requests_get_fresh_refs_and_the_server_sees_them_typed() -> None:
    client, server = opened_pair()
    ref1, data1 = client.request(Query(q="runs", limit=3))
    ref2, data2 = client.request(Check(namespace="n", kind="hash", text="t"))
    assert ref1 != ref2
    query = server.receive(data1)
    check = server.receive(data2)
    assert isinstance(query, Query) and query.ref == ref1 and query.limit == 3
    assert isinstance(check, Check) and check.ref == ref2


def test_a_reply_is_matched_to_its_request_by_ref_in_any_order() -> None:
    client, server = opened_pair()
    ref1, _ = client.request(Query(q="runs"))
    ref2, _ = client.request(Query(q="stats"))
    [second] = client.receive(server.answer(Result(seq=1, rows=[{"b": 2}], ref=ref2)))
    [first] = client.receive(server.answer(Result(seq=1, rows=[{"a": 1}], ref=ref1)))
    assert isinstance(second, Answered) and second.ref == ref2
    assert isinstance(first, Answered) and first.ref == ref1
    assert client.pending == 0


def test_a_reply_to_no_request_is_ignored() -> None:
    client, server = opened_pair()
    assert client.receive(server.answer(Result(seq=1, rows=[], ref=99))) == []


def test_an_error_with_a_request_s_ref_answers_that_request() -> None:
    client, server = opened_pair()
    ref, data = client.request(Query(q="runs", filter="bad ="))
    server.receive(data)
    [event] = client.receive(server.error(errors.BadQuery("filter: bad"), ref))
    assert isinstance(event, Answered) and isinstance(event.reply, Error) and event.reply.code == "bad_query"


def test_an_error_without_a_known_ref_is_a_notice() -> None:
    client, server = opened_pair()
    [event] = client.receive(server.error(errors.BadFrame("undecodable")))
    assert isinstance(event, Notice) and event.error.code == "bad_frame"


def test_an_undecodable_frame_gets_bad_frame_and_the_connection_stays_open() -> None:
    _, server = opened_pair()
    outcome = server.receive(b"\xc1")
    assert isinstance(outcome, Send) and msgspec.msgpack.decode(outcome.data)["code"] == "bad_frame"
    assert server.state is State.OPEN


def test_a_message_of_a_kind_the_client_does_not_know_is_ignored() -> None:
    client, _ = opened_pair()
    assert client.receive(msgspec.msgpack.encode({"op": "gossip", "ref": 1})) == []


def test_a_json_client_decodes_json_replies() -> None:
    client, server = opened_pair(Encoding.JSON)
    ref, data = client.request(Query(q="runs"))
    query = server.receive(as_frame(client, data))
    assert isinstance(query, Query)
    [event] = client.receive(server.answer(Result(seq=2, rows=[], ref=query.ref)).decode())
    assert isinstance(event, Answered) and event.ref == ref


def test_requests_encode_numpy_like_values_through_the_given_hook() -> None:
    class Scalar:
        def tolist(self) -> float:
            return 0.5

    def hook(obj: Any) -> Any:
        return obj.tolist()

    client = ClientConnection("c", enc_hook=hook)
    client.hello()
    client.receive(_welcome_frame())
    _, data = client.request(Check(namespace="n", kind="hash", value=Scalar()))
    assert msgspec.msgpack.decode(data)["value"] == 0.5


def _welcome_frame() -> bytes:
    server = server_with_tokens()
    server.receive(ClientConnection("x").hello())
    return server.welcome(0)


# -- appends and their acks -------------------------------------------------------------


def test_appends_are_acked_in_order_and_matched_to_their_refs() -> None:
    client, server = opened_pair()
    refs = [client.append_encoded(msgspec.msgpack.encode([]))[0] for _ in range(3)]
    assert client.pending == 3
    answers = [client.receive(server.ack(Ack(accepted=0, ref=ref)))[0] for ref in refs]
    assert [a.ref for a in answers if isinstance(a, Answered)] == refs
    assert client.pending == 0


def test_an_ack_out_of_order_is_a_violation() -> None:
    client, server = opened_pair()
    client.append_encoded(msgspec.msgpack.encode([]))
    second, _ = client.append_encoded(msgspec.msgpack.encode([]))
    with pytest.raises(ConnectionViolation):
        client.receive(server.ack(Ack(accepted=0, ref=second)))


def test_an_error_refusing_the_oldest_append_answers_it() -> None:
    client, server = opened_pair()
    ref, _ = client.append_encoded(msgspec.msgpack.encode([]))
    [event] = client.receive(server.ack(errors.Overloaded("busy", ref)))
    assert isinstance(event, Answered) and event.ref == ref and isinstance(event.reply, Error)


def test_an_encoded_append_reaches_the_server_as_an_append_frame_and_decodes() -> None:
    client, server = opened_pair()
    batch = msgspec.msgpack.encode([{"type": "metrics", "run": "r", "data": {"values": {"x": 1}}}])
    ref, data = client.append_encoded(batch)
    outcome = server.receive(data)
    assert isinstance(outcome, AppendFrame) and server.unacked == 1
    decoded = CODEC.decode(outcome.frame)
    assert isinstance(decoded, Append) and decoded.ref == ref and len(decoded.events) == 1
    server.ack(Ack(accepted=1, ref=ref))
    assert server.unacked == 0


def test_an_append_struct_request_is_tracked_like_an_encoded_one() -> None:
    client, server = opened_pair()
    ref, data = client.request(Append(events=[]))
    assert msgspec.msgpack.decode(data) == {"op": "append", "events": [], "ref": ref}
    [event] = client.receive(server.ack(Ack(accepted=0, ref=ref)))
    assert isinstance(event, Answered) and event.ref == ref


# -- subscriptions ----------------------------------------------------------------------


def subscribed(
    client: ClientConnection, server: ServerConnection, from_seq: int | None, head: int = 10, **filters: Any
) -> int:
    ref, data = client.subscribe(from_seq, **filters)
    request = server.receive(data)
    assert isinstance(request, Subscribe)
    _, frame = server.subscribed(request, sub=7, head=head)
    [event] = client.receive(frame)
    assert isinstance(event, Answered) and event.ref == ref
    return 7


def test_a_subscription_delivers_new_events_and_moves_its_position() -> None:
    client, server = opened_pair()
    sub = subscribed(client, server, from_seq=0)
    [event] = client.receive(events_frame(server, sub, 1, 2, 3))
    assert isinstance(event, Delivered) and [e.seq for e in event.events] == [1, 2, 3]
    assert client.positions[sub].last_seq == 3


def test_events_already_delivered_are_dropped_and_counted() -> None:
    client, server = opened_pair()
    sub = subscribed(client, server, from_seq=2)
    [event] = client.receive(events_frame(server, sub, 1, 2, 3, 4))
    assert isinstance(event, Delivered) and [e.seq for e in event.events] == [3, 4]
    assert client.receive(events_frame(server, sub, 4)) == []
    assert client.positions[sub].duplicates == 3


def test_a_gap_in_an_unfiltered_subscription_is_counted() -> None:
    client, server = opened_pair()
    sub = subscribed(client, server, from_seq=0)
    client.receive(events_frame(server, sub, 1, 2, 5))
    assert client.positions[sub].gaps == 1


def test_a_filtered_subscription_skips_seqs_without_counting_gaps() -> None:
    client, server = opened_pair()
    sub = subscribed(client, server, from_seq=0, runs=["r"])
    client.receive(events_frame(server, sub, 1, 5, 9))
    assert client.positions[sub].gaps == 0 and client.positions[sub].last_seq == 9


def test_a_subscription_from_now_on_starts_after_the_head() -> None:
    client, server = opened_pair()
    sub = subscribed(client, server, from_seq=None, head=10)
    assert client.positions[sub].last_seq == 10
    [event] = client.receive(events_frame(server, sub, 10, 11))
    assert isinstance(event, Delivered) and [e.seq for e in event.events] == [11]


def test_the_subscribe_request_carries_only_the_filters_given() -> None:
    client, _ = opened_pair()
    _, data = client.subscribe(5, types=["metrics"])
    assert msgspec.msgpack.decode(data) == {
        "op": "subscribe",
        "ref": 1,
        "from_seq": 5,
        "filter": {"types": ["metrics"]},
    }
    _, data = client.subscribe(None)
    assert msgspec.msgpack.decode(data) == {"op": "subscribe", "ref": 2}


def test_live_is_reported_for_a_known_subscription() -> None:
    client, server = opened_pair()
    sub = subscribed(client, server, from_seq=0)
    [event] = client.receive(server.encode(Live(sub=sub, seq=10)))
    assert event == WentLive(sub, 10)


def test_a_subscribe_from_a_seq_out_of_range_is_refused() -> None:
    client, server = opened_pair()
    _, data = client.request(Subscribe(from_seq=-1))
    outcome = server.receive(data)
    assert isinstance(outcome, Send) and msgspec.msgpack.decode(outcome.data)["code"] == "bad_message"


def test_unsubscribing_an_unknown_subscription_is_not_found() -> None:
    client, server = opened_pair()
    _, data = client.request(Unsubscribe(sub=3))
    outcome = server.receive(data)
    assert isinstance(outcome, Send) and msgspec.msgpack.decode(outcome.data)["code"] == "not_found"


def test_unsubscribing_ends_the_subscription_on_both_ends() -> None:
    client, server = opened_pair()
    sub = subscribed(client, server, from_seq=0)
    ref, data = client.request(Unsubscribe(sub=sub))
    request = server.receive(data)
    assert isinstance(request, Unsubscribe) and sub not in server.subscriptions
    [event] = client.receive(server.unsubscribed(request))
    assert isinstance(event, Answered) and event.ref == ref
    assert sub not in client.positions
    assert client.receive(events_frame(server, sub, 1)) == []


# -- the daemon's end of a subscription --------------------------------------------------


def server_subscription(
    server: ServerConnection, from_seq: int | None, head: int = 10
) -> tuple[ServerSubscription, bytes]:
    request = server.receive(CODEC.encode(Subscribe(from_seq=from_seq, ref=1), server.binary))
    assert isinstance(request, Subscribe)
    return server.subscribed(request, sub=7, head=head)


@pytest.mark.parametrize("encoding", list(Encoding))
def test_the_daemon_s_subscription_frames_reach_the_client_in_its_encoding(encoding: Encoding) -> None:
    client, server = opened_pair(encoding)
    ref, data = client.subscribe(0)
    request = server.receive(data.decode() if encoding is Encoding.JSON else data)
    assert isinstance(request, Subscribe)
    state, frame = server.subscribed(request, sub=4, head=3)
    assert client.receive(frame) == [Answered(ref, Subscribed(sub=4, head=3, ref=ref))]
    sent = state.events([stored(1), stored(2)])
    assert sent is not None
    [delivered] = client.receive(sent)
    assert isinstance(delivered, Delivered) and [e.seq for e in delivered.events] == [1, 2]
    assert client.receive(state.live()) == [WentLive(4, 2)]


def test_the_daemon_s_subscription_starts_after_from_seq_or_after_the_head() -> None:
    _, server = opened_pair()
    assert server_subscription(server, from_seq=4)[0].position == 4
    assert server_subscription(server, from_seq=None, head=10)[0].position == 10


def test_the_daemon_s_subscription_delivers_each_event_once_in_order() -> None:
    _, server = opened_pair()
    state, _ = server_subscription(server, from_seq=2)
    frame = state.events([stored(s) for s in (1, 2, 3, 4)])
    assert frame is not None and [e["seq"] for e in msgspec.msgpack.decode(frame)["events"]] == [3, 4]
    assert state.position == 4 and state.delivered == 2
    assert state.events([stored(3), stored(4)]) is None  # offered again (a catch-up overlap)
    frame = state.events([stored(4), stored(5)])
    assert frame is not None and [e["seq"] for e in msgspec.msgpack.decode(frame)["events"]] == [5]
    assert state.delivered == 3


def test_the_daemon_s_subscription_skips_what_the_log_held_for_others_but_never_moves_back() -> None:
    _, server = opened_pair()
    state, _ = server_subscription(server, from_seq=2)
    state.skip_to(9)
    assert state.position == 9 and state.events([stored(8)]) is None
    state.skip_to(5)
    assert state.position == 9
    assert msgspec.msgpack.decode(state.live()) == {"op": "live", "sub": 7, "seq": 9}


def test_an_ended_subscription_makes_no_more_frames() -> None:
    _, server = opened_pair()
    state, _ = server_subscription(server, from_seq=0)
    outcome = server.receive(CODEC.encode(Unsubscribe(sub=7, ref=2), True))
    assert isinstance(outcome, Unsubscribe)
    assert state.events([stored(1)]) is None
    other, _ = server_subscription(server, from_seq=0)
    server.close()
    assert other.events([stored(1)]) is None and server.subscriptions == {}


def events_with_floats(n: int, start: int = 1) -> list[StoredEvent]:
    """Metrics with NaN and infinity, which JSON carries as strings."""
    return [
        StoredEvent(
            seq,
            "metrics",
            MetricsData(values={"loss": 1 / seq, "odd": math.nan if seq % 2 else math.inf}, step=seq),
            100.0 + seq,
            50.0 + seq,
            f"id-{seq}",
            f"r{seq % 3}",
        )
        for seq in range(start, start + n)
    ]


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("count", [1, 15, 16, 1000, 70_000])
def test_an_assembled_events_frame_equals_encoding_the_whole_message(binary: bool, count: int) -> None:
    batch = events_with_floats(count)
    assembled = EventFrames(CODEC).frame(7, batch, binary)
    assert assembled == CODEC.encode(Events(sub=7, events=batch), binary)


def test_each_event_is_encoded_once_for_many_subscribers() -> None:
    codec = Codec()
    calls = 0
    real = codec.encode_stored

    def counting(e: StoredEvent, binary: bool) -> bytes:
        nonlocal calls
        calls += 1
        return real(e, binary)

    codec.encode_stored = counting  # type: ignore[method-assign]
    frames = EventFrames(codec)
    servers = [ServerConnection(codec, "tracklog/test", frames=frames) for _ in range(100)]
    batch = events_with_floats(10)
    for server in servers:
        server.receive(codec.encode(Hello(client="c"), True))
        server.welcome(head=0)
        state, _ = server_subscription(server, from_seq=0)
        assert state.events(batch) is not None
    assert calls == 10


def test_event_frames_remember_only_the_newest_events() -> None:
    frames = EventFrames(CODEC, keep=100)
    for start in range(1, 1001, 50):
        frames.frame(1, events_with_floats(50, start), True)
    remembered = frames._encoded[True]
    assert len(remembered) <= 100 and max(remembered) == 1000
