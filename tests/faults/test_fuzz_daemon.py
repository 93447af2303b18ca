"""Fuzzing the daemon over a real socket: generated and mutated frames, JSON and MessagePack.

Whatever arrives, the daemon must stay up and answer it: with an error naming what is
wrong, or with a result when the frame happened to make sense, never with `internal` and
never by closing the connection (only `hello_required` and `unauthorized` close one,
docs/protocol.md). After each frame's answer a probe query, with a ref the fuzz does not
use, shows that the daemon still serves the connection. After the fuzz, a good append is
acked and `/healthz` says 200.

Examples are bounded (10 to 30 s in all on a busy 2-core machine); Hypothesis prints the
failing frame, shrunk, when one is found.
"""

from __future__ import annotations

import itertools
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import DaemonProcess
from tracklog.pings import SyncConnection  # keepalive pings that leave the global random alone

#: Examples per test: enough to reach the odd corners, few enough for about 30 s in all.
STRUCTURED_EXAMPLES = 600
MUTATED_EXAMPLES = 600
FIRST_FRAME_EXAMPLES = 60
RANDOM_FRAME_EXAMPLES = 200
REPLY_TIMEOUT = 60.0
#: Probe refs start here, far above what the strategies draw, so a probe's reply is never
#: taken for a fuzzed frame's.
PROBE_REF_BASE = 7_000_000_000_000
#: Ops that a subscription sends on its own, not as the answer to a frame.
SUBSCRIPTION_OPS = frozenset({"events", "live"})
#: Replies that answer a request.
ANSWER_OPS = frozenset({"error", "result", "ack", "subscribed", "unsubscribed", "checked", "welcome"})

OPS = ["hello", "append", "query", "subscribe", "unsubscribe", "check", "ping", "", "APPEND", "ack"]
QUERIES = ["runs", "run", "metrics", "compare", "best", "items", "artifacts", "search", "events", "cache"]
QUERIES += ["stats", "sql", "schema", "nope"]
EVENT_TYPES = ["run.started", "run.updated", "run.finished", "run.deleted", "run.restored", "metrics"]
EVENT_TYPES += ["item", "artifact", "cache.put", "cache.invalidated", "dedup.recorded", "dedup.cleared", "x"]
FIELDS = ["ref", "q", "run", "runs", "filter", "order_by", "limit", "offset", "from_seq", "sub", "namespace"]
FIELDS += ["kind", "text", "value", "vector", "space", "threshold", "record", "inputs", "item", "names"]
FIELDS += ["max_points", "step_from", "step_to", "types", "metric", "mode", "key", "sql", "deleted"]
FIELDS += ["protocol", "client", "token", "metrics", "stage", "status", "pipelines"]

INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
small_text = st.text(max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | INT64
    | st.floats(allow_nan=True, allow_infinity=True)
    | small_text
    | st.sampled_from(QUERIES + EVENT_TYPES + ["simhash", "hash", "embedding", "min", "max", "r-1"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(small_text, inner, max_size=4),
    max_leaves=16,
)
events = st.fixed_dictionaries(
    {"type": st.sampled_from(EVENT_TYPES)},
    optional={
        "id": small_text,
        "run": st.sampled_from(["r-1", "r-2"]) | small_text,
        "ts": json_values,
        "data": st.dictionaries(
            st.sampled_from(
                ["values", "step", "epoch", "name", "status", "key", "value", "ttl", "data", "path"]
            )
            | small_text,
            json_values,
            max_size=5,
        )
        | json_values,
    },
)
#: Anything at all, field by field: mostly wrong types and unknown ops.
loose_messages = st.fixed_dictionaries(
    {"op": st.sampled_from(OPS) | small_text},
    optional={
        **{name: json_values for name in FIELDS},
        "ref": INT64,
        "q": st.sampled_from(QUERIES) | json_values,
        "events": st.lists(events, max_size=6) | json_values,
        "vector": st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=8),
    },
)
#: Filters and SQL built from pieces of their grammars, so the parsers get past the start.
FILTER_WORDS = ["metrics.loss", "<", "<=", "=", "!=", "0.5", "-1", "1e400", "99999999999999999999", "and"]
FILTER_WORDS += ["or", "not", "(", ")", "status", "'completed'", "tags.a", "config.lr", "like", "'%x%'"]
FILTER_WORDS += ["in", "(1, 2)", "`a b`", "started", "'2026-01-31'", "name", "''", "'", "metrics.`x`"]
filters = st.lists(st.sampled_from(FILTER_WORDS), max_size=12).map(" ".join) | small_text
SQL = ["SELECT 1", "SELECT * FROM events", "SELECT * FROM runs, events, items", "DELETE FROM events"]
SQL += ["PRAGMA journal_mode = DELETE", "ATTACH 'x.db' AS x", "BEGIN", "SELECT load_extension('x')"]
SQL += ["SELECT zeroblob(100000000)", "SELECT randomblob(10) FROM events", "SELECT * FROM nope", ";", ""]
names = st.sampled_from(["r-1", "r-2", "loss", "acc", "", "\x00", "x" * 300]) | small_text
counts = st.integers(min_value=-5, max_value=20) | INT64
queries = st.fixed_dictionaries(
    {"op": st.just("query"), "q": st.sampled_from(QUERIES)},
    optional={
        "ref": INT64,
        "run": names,
        "runs": st.lists(names, max_size=4),
        "filter": filters,
        "order_by": st.lists(
            st.sampled_from(["name asc", "metrics.loss desc", "started", "x y z"]), max_size=3
        ),
        "limit": counts,
        "offset": counts,
        "names": st.lists(names, max_size=3),
        "metrics": st.lists(names, max_size=3),
        "max_points": counts,
        "step_from": counts,
        "step_to": counts,
        "from_seq": counts,
        "text": small_text,
        "metric": names,
        "mode": st.sampled_from(["min", "max", "avg"]),
        "key": names,
        "sql": st.sampled_from(SQL) | small_text,
        "types": st.lists(st.sampled_from(EVENT_TYPES), max_size=3),
        "deleted": st.booleans(),
        "stage": names,
        "status": names,
    },
)
metric_data = st.fixed_dictionaries(
    {"values": st.dictionaries(names, st.floats() | st.integers() | json_values, max_size=3)},
    optional={"step": counts, "epoch": counts},
)
typed_events = st.fixed_dictionaries(
    {"type": st.sampled_from(EVENT_TYPES), "run": st.sampled_from(["r-1", "r-2"]) | names},
    optional={"id": small_text, "ts": st.floats() | json_values, "data": metric_data | json_values},
)
appends = st.fixed_dictionaries(
    {"op": st.just("append"), "events": st.lists(typed_events | events, max_size=8)}, optional={"ref": INT64}
)
subscribes = st.fixed_dictionaries(
    {"op": st.sampled_from(["subscribe", "unsubscribe"])},
    optional={
        "ref": INT64,
        "from_seq": st.none() | counts,
        "sub": counts,
        "filter": st.fixed_dictionaries(
            {}, optional={"runs": st.lists(names), "types": st.lists(small_text), "pipelines": json_values}
        )
        | json_values,
    },
)
vectors = st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers(), max_size=8)
checks = st.fixed_dictionaries(
    {"op": st.just("check"), "kind": st.sampled_from(["hash", "simhash", "embedding", "x"])},
    optional={
        "ref": INT64,
        "namespace": names,
        "text": small_text,
        "value": json_values,
        "vector": vectors,
        "space": names,
        "threshold": st.floats() | counts,
        "record": st.booleans(),
        "run": names,
        "item": names,
        "inputs": st.lists(
            st.fixed_dictionaries({}, optional={"text": small_text, "vector": vectors, "item": names}),
            max_size=4,
        ),
    },
)
messages = loose_messages | queries | appends | subscribes | checks
#: Well-formed messages that mutations start from.
SEEDS: list[dict[str, Any]] = [
    {"op": "hello", "protocol": 1, "client": "fuzz"},
    {
        "op": "append",
        "ref": 1,
        "events": [
            {"id": "m-1", "type": "metrics", "run": "r-1", "data": {"values": {"loss": 0.5}, "step": 1}},
            {"id": "i-1", "type": "item", "run": "r-1", "data": {"stage": "s", "data": {"text": "hola"}}},
            {
                "type": "run.started",
                "run": "r-2",
                "data": {"name": "n", "config": {"lr": 0.1}, "tags": ["a"]},
            },
        ],
    },
    {
        "op": "query",
        "ref": 2,
        "q": "runs",
        "filter": "metrics.loss < 0.5 and tags.a",
        "order_by": ["name asc"],
    },
    {"op": "query", "ref": 3, "q": "metrics", "run": "r-1", "names": ["loss"], "max_points": 10},
    {"op": "query", "ref": 4, "q": "sql", "sql": "SELECT seq, type FROM events LIMIT 3"},
    {"op": "subscribe", "ref": 5, "from_seq": 0, "filter": {"types": ["metrics"]}},
    {"op": "unsubscribe", "ref": 6, "sub": 1},
    {"op": "check", "ref": 7, "namespace": "ns", "kind": "simhash", "text": "the quick fox", "record": True},
    {"op": "check", "ref": 8, "namespace": "ns", "kind": "embedding", "space": "s", "vector": [0.1, 0.2]},
]


class Mutation(msgspec.Struct, frozen=True):
    """One edit of a frame's bytes: at a position (taken modulo the length), a kind, a byte."""

    position: int
    kind: str
    byte: int

    def apply(self, frame: bytes) -> bytes:
        if not frame:
            return bytes([self.byte])
        at = self.position % len(frame)
        if self.kind == "flip":
            return frame[:at] + bytes([frame[at] ^ (1 << (self.byte % 8))]) + frame[at + 1 :]
        if self.kind == "set":
            return frame[:at] + bytes([self.byte]) + frame[at + 1 :]
        if self.kind == "insert":
            return frame[:at] + bytes([self.byte]) + frame[at:]
        if self.kind == "delete":
            return frame[:at] + frame[at + 1 :]
        return frame[:at]  # truncate


mutations = st.builds(
    Mutation,
    st.integers(min_value=0, max_value=10_000),
    st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
    st.integers(min_value=0, max_value=255),
)


def encode(message: Any, as_msgpack: bool) -> bytes:
    """The message as MessagePack, or as JSON bytes (non-finite floats as JSON's extensions)."""
    if as_msgpack:
        return msgspec.msgpack.encode(message)
    return json.dumps(message).encode()


def as_frame(data: bytes, as_msgpack: bool) -> str | bytes:
    """JSON goes in a text frame when it is UTF-8 (else a binary one); MessagePack as binary."""
    if as_msgpack:
        return data
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data


class Session:
    """One connection after its hello, and the probe that checks each frame was answered."""

    def __init__(self, url: str, binary: bool) -> None:
        self.url = url
        self.binary = binary
        self.probes = itertools.count(PROBE_REF_BASE)
        self.ws = self._open()
        self.answers = 0
        #: Answers by op and error code: shows which paths the fuzz reached.
        self.kinds: dict[str, int] = {}

    def _open(self) -> ClientConnection:
        # Entered by hand: the connection outlives this call and is closed by `close`.
        ws = connect(self.url, max_size=None, open_timeout=30, create_connection=SyncConnection).__enter__()
        hello = {"op": "hello", "protocol": 1, "client": "fuzz"}
        ws.send(msgspec.msgpack.encode(hello) if self.binary else json.dumps(hello))
        assert self.decode(ws.recv(REPLY_TIMEOUT))["op"] == "welcome"
        return ws

    @staticmethod
    def decode(frame: str | bytes) -> Any:
        return msgspec.msgpack.decode(frame) if isinstance(frame, bytes) else json.loads(frame)

    def send_and_check(self, frame: str | bytes) -> None:
        """Send the frame and wait for its answer; then a probe, answered too.

        Replies need not come in the order of the frames (an append waits for the writer,
        a query does not), so the frame's answer is awaited before the probe is sent.
        """
        try:
            self.ws.send(frame)
            answer = self._next_answer()
            probe = next(self.probes)
            query = {"op": "query", "q": "stats", "ref": probe}
            self.ws.send(msgspec.msgpack.encode(query) if self.binary else json.dumps(query))
            answers = [answer]
            while True:
                reply = self._next_answer()
                if reply.get("ref") == probe and reply.get("op") == "result":
                    break
                answers.append(reply)
        except ConnectionClosed as exc:
            raise AssertionError(f"the daemon closed the connection: {exc}") from None
        except TimeoutError:
            raise AssertionError(f"no answer in {REPLY_TIMEOUT} s") from None
        for reply in answers:
            assert reply.get("op") in ANSWER_OPS, reply
            assert reply.get("code") != "internal", reply
        self.answers += len(answers)
        for reply in answers:
            kind = f"{reply.get('op')}:{reply.get('code', '')}"
            self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def _next_answer(self) -> Any:
        """The next reply that is not a subscription's own delivery."""
        while True:
            reply = self.decode(self.ws.recv(REPLY_TIMEOUT))
            if reply.get("op") not in SUBSCRIPTION_OPS:
                return reply

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(Path(tmp_path_factory.mktemp("fuzz")) / "tracklog.db").start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def sessions(fuzz_daemon: DaemonProcess) -> Iterator[dict[bool, Session]]:
    """A JSON session and a MessagePack one: frames of either encoding go to both kinds."""
    opened = {binary: Session(fuzz_daemon.url, binary) for binary in (False, True)}
    try:
        yield opened
    finally:
        for session in opened.values():
            session.close()
            print("answers", "msgpack" if session.binary else "json", sorted(session.kinds.items()))
    assert_still_serving(fuzz_daemon)


def assert_still_serving(daemon: DaemonProcess) -> None:
    """The daemon is alive, acks a good append and says it is healthy."""
    assert daemon.proc is not None and daemon.proc.poll() is None, "".join(daemon.log[-20:])
    session = Session(daemon.url, binary=False)
    try:
        session.ws.send(
            json.dumps(
                {
                    "op": "append",
                    "ref": 1,
                    "events": [{"type": "metrics", "run": "after-fuzz", "data": {"values": {"ok": 1.0}}}],
                }
            )
        )
        ack = json.loads(session.ws.recv(REPLY_TIMEOUT))
        while ack.get("op") in SUBSCRIPTION_OPS:
            ack = json.loads(session.ws.recv(REPLY_TIMEOUT))
        assert ack["op"] == "ack" and ack["accepted"] == 1, ack
    finally:
        session.close()
    with urllib.request.urlopen(daemon.http + "/healthz", timeout=30) as reply:
        assert reply.status == 200
        assert json.loads(reply.read())["status"] == "ok"


def fuzz_settings(examples: int) -> settings:
    """Bounded examples, no deadline (the machine is shared), no example database on disk."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def test_generated_messages_are_each_answered(sessions: dict[bool, Session]) -> None:
    @fuzz_settings(STRUCTURED_EXAMPLES)
    @given(message=messages, as_msgpack=st.booleans(), to_binary_session=st.booleans())
    def fuzz(message: dict[str, Any], as_msgpack: bool, to_binary_session: bool) -> None:
        try:
            data = encode(message, as_msgpack)
        except (OverflowError, TypeError, ValueError):
            return  # not encodable in this format (an integer beyond 64 bits for MessagePack)
        sessions[to_binary_session].send_and_check(as_frame(data, as_msgpack))

    fuzz()
    assert sum(s.answers for s in sessions.values()) >= STRUCTURED_EXAMPLES // 2


def test_mutated_frames_are_each_answered(sessions: dict[bool, Session]) -> None:
    @fuzz_settings(MUTATED_EXAMPLES)
    @given(
        seed=st.sampled_from(SEEDS),
        edits=st.lists(mutations, min_size=1, max_size=6),
        as_msgpack=st.booleans(),
        to_binary_session=st.booleans(),
    )
    def fuzz(seed: dict[str, Any], edits: list[Mutation], as_msgpack: bool, to_binary_session: bool) -> None:
        data = encode(seed, as_msgpack)
        for edit in edits:
            data = edit.apply(data)
        sessions[to_binary_session].send_and_check(as_frame(data, as_msgpack))

    fuzz()


def test_random_bytes_and_text_are_each_answered(sessions: dict[bool, Session]) -> None:
    @fuzz_settings(RANDOM_FRAME_EXAMPLES)
    @given(frame=st.binary(max_size=64) | st.text(max_size=64), to_binary_session=st.booleans())
    def fuzz(frame: str | bytes, to_binary_session: bool) -> None:
        sessions[to_binary_session].send_and_check(frame)

    fuzz()


def test_a_fuzzed_first_frame_is_answered_and_the_daemon_stays_up(fuzz_daemon: DaemonProcess) -> None:
    """Before hello: a welcome for a good hello, else an error (and a close), never silence."""

    @fuzz_settings(FIRST_FRAME_EXAMPLES)
    @given(
        first=messages | st.sampled_from(SEEDS[:1]),
        edits=st.lists(mutations, max_size=2),
        as_msgpack=st.booleans(),
    )
    def fuzz(first: dict[str, Any], edits: list[Mutation], as_msgpack: bool) -> None:
        try:
            data = encode(first, as_msgpack)
        except (OverflowError, TypeError, ValueError):
            return
        for edit in edits:
            data = edit.apply(data)
        with connect(fuzz_daemon.url, max_size=None, open_timeout=30, create_connection=SyncConnection) as ws:
            ws.send(as_frame(data, as_msgpack))
            try:
                raw = ws.recv(REPLY_TIMEOUT)
            except ConnectionClosed as exc:
                raise AssertionError(f"closed without an answer: {exc}") from None
            reply = Session.decode(raw)
            assert reply["op"] in ("welcome", "error"), reply
            assert reply.get("code") != "internal", reply

    fuzz()
    assert_still_serving(fuzz_daemon)
