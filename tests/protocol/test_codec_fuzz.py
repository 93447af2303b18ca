"""The codec against random and mutated frames, JSON and MessagePack.

Two promises are checked on every frame:
- decoding raises nothing but the protocol's own errors (a ProtocolError, whose code the
  reply carries), and never needs the codec's last-resort guard for an unexpected one;
- every event it accepts can be stored (MessagePack, as the log does) and read back by
  every encoding: the stored data decodes into its typed struct, and encodes to JSON.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracklog.protocol import errors
from tracklog.protocol.events import DATA_CLASSES, EVENT_TYPES, event_type, finite_floats_as_strings
from tracklog.protocol.messages import Append, Codec

CODEC = Codec()
FUZZ = settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_DATA_DECODERS = {name: msgspec.msgpack.Decoder(cls) for name, cls in DATA_CLASSES.items()}
_JSON = msgspec.json.Encoder()


class RawNumber:
    """A number written into a JSON frame as it is (1e400, a 30-digit integer, ...)."""

    def __init__(self, text: str) -> None:
        self.text = text


def to_json(value: Any) -> str:
    """JSON text for test values, RawNumber included (json.dumps cannot write 1e400)."""
    if isinstance(value, RawNumber):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    if isinstance(value, (bytes, msgspec.msgpack.Ext, dt.datetime)):
        return json.dumps(repr(value))
    return json.dumps(value)


# -- values -----------------------------------------------------------------------------

raw_numbers = st.sampled_from(
    [
        "1e400",
        "-1e400",
        "1e-400",
        "123456789012345678901234567890",
        "-99999999999999999999",
        "18446744073709551615",
        "9223372036854775808",
        "-9223372036854775809",
        "0.0",
        "-0",
        "1E+2",
    ]
).map(RawNumber)
special_strings = st.sampled_from(["NaN", "Infinity", "-Infinity", "", "\x00", "a\nb", "\u2028", "é" * 3])
common_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=12)
    | special_strings
)
json_scalars = common_scalars | raw_numbers
msgpack_scalars = (
    common_scalars
    | st.integers(-(2**63), 2**64 - 1)
    | st.binary(max_size=8)
    | st.builds(msgspec.msgpack.Ext, st.integers(-128, 127), st.binary(max_size=4))
    | st.datetimes(timezones=st.just(dt.UTC))
)
msgpack_keys = (
    st.text(max_size=6)
    | st.integers(-(2**63), 2**64 - 1)
    | st.binary(max_size=4)
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=False)
    | st.tuples(st.integers(0, 3), st.integers(0, 3))
)


def values(scalars: st.SearchStrategy[Any], keys: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(keys, kids, max_size=4),
        max_leaves=12,
    )


json_values = values(json_scalars, st.text(max_size=6) | st.sampled_from(["values", "data", "key", "value"]))
msgpack_values = values(msgpack_scalars, msgpack_keys)

#: Field names the events and messages use, so random maps often hit real fields.
FIELDS = [
    "values",
    "step",
    "epoch",
    "status",
    "data",
    "config",
    "tags",
    "name",
    "key",
    "value",
    "ttl",
    "kind",
    "path",
    "metadata",
    "size",
    "duration",
    "iteration",
    "item",
    "namespace",
    "add_tags",
    "parent",
    "error",
]
OPS = ["hello", "append", "query", "subscribe", "unsubscribe", "check", "nope", ""]


def events(anything: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    data = st.dictionaries(st.sampled_from(FIELDS), anything, max_size=5) | anything
    event = st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from([*sorted(EVENT_TYPES), "nope", "bogus"]) | anything,
            "run": st.sampled_from(["r", "r-1"]) | anything,
            "id": st.text(max_size=4) | anything,
            "ts": st.floats() | anything,
            "data": data,
            "x": anything,
        },
    )
    return event | anything


#: One valid event of each kind a client sends, to be spoiled in one place by `near_valid`.
TEMPLATES: list[dict[str, Any]] = [
    {"type": "metrics", "run": "r", "data": {"values": {"loss": 0.5, "acc": 1}, "step": 1}},
    {"type": "item", "run": "r", "data": {"data": {"a": [1, "x"]}, "status": "ok", "duration": 0.1}},
    {"type": "run.started", "run": "r", "data": {"config": {"lr": 1, "m": {"d": 2}}, "tags": ["a"]}},
    {"type": "run.updated", "run": "r", "data": {"config": {"lr": 2}, "add_tags": ["b"]}},
    {"type": "run.finished", "run": "r", "data": {"status": "completed"}},
    {"type": "artifact", "run": "r", "data": {"kind": "k", "path": "p", "metadata": {"m": [1]}, "size": 3}},
    {"type": "cache.put", "data": {"key": "k", "value": {"v": [1, 2]}, "ttl": 5}},
    {"type": "cache.invalidated", "data": {"key": "k"}},
    {"type": "dedup.cleared", "data": {"namespace": "n"}},
    {"type": "run.deleted", "run": "r"},
]


def near_valid(anything: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A valid event with one value (top level, in data, or inside a free-form map) replaced."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        event = json.loads(json.dumps(draw(st.sampled_from(TEMPLATES))))
        value = draw(anything)
        data = event.setdefault("data", {})
        maps = [v for v in data.values() if isinstance(v, dict)]
        where = draw(st.sampled_from(["top", "data", "deep"] if maps else ["top", "data"]))
        if where == "top":
            event[draw(st.sampled_from(["type", "run", "id", "ts", "data", "x"]))] = value
        elif where == "data":
            data[draw(st.sampled_from(sorted(data) + FIELDS[:6]))] = value
        else:
            target = draw(st.sampled_from(maps))
            target[draw(st.sampled_from([*sorted(target), "new"]))] = value
        return event

    return build()


def appends(anything: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    event = near_valid(anything) | events(anything) | st.sampled_from(TEMPLATES)
    return st.fixed_dictionaries(
        {"op": st.just("append"), "events": st.lists(event, min_size=1, max_size=4)},
        optional={"ref": st.integers(-(2**70), 2**70) | anything},
    )


def frames_of(anything: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly appends (where the danger is), with every other kind of message too."""
    return appends(anything) | appends(anything) | messages(anything)


def messages(anything: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    fields = st.sampled_from(
        [
            *("ref", "events", "q", "sub", "from_seq", "filter", "namespace", "kind", "text", "value"),
            *("vector", "inputs", "protocol", "limit", "key", "run", "threshold", "record"),
        ]
    )
    message = st.fixed_dictionaries(
        {"op": st.sampled_from(OPS) | anything},
        optional={
            "events": st.lists(events(anything), max_size=4) | anything,
            "ref": st.integers() | anything,
        },
    )
    extra = st.dictionaries(fields, anything, max_size=3)
    return st.builds(lambda m, e: {**e, **m}, message, extra) | anything


def mutate(frame: bytes, data: st.DataObject) -> bytes:
    """A few random byte edits: flip, delete, insert, duplicate a slice."""
    out = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4))):
        if not out:
            out.extend(data.draw(st.binary(min_size=1, max_size=4)))
            continue
        at = data.draw(st.integers(0, len(out) - 1))
        kind = data.draw(st.sampled_from(["flip", "delete", "insert", "duplicate"]))
        if kind == "flip":
            out[at] = data.draw(st.integers(0, 255))
        elif kind == "delete":
            del out[at : at + data.draw(st.integers(1, 4))]
        elif kind == "insert":
            out[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        else:
            end = min(len(out), at + data.draw(st.integers(1, 8)))
            out[at:at] = out[at:end]
    return bytes(out)


# -- the promises -----------------------------------------------------------------------


def assert_only_protocol_errors(frame: str | bytes) -> None:
    """Decode a frame: a ProtocolError or a message, nothing else; accepted events are readable."""
    guarded = CODEC.unexpected_errors
    CODEC.is_append(frame)
    try:
        msg = CODEC.decode(frame)
    except errors.ProtocolError:
        msg = None
    assert CODEC.unexpected_errors == guarded, "the codec's last-resort guard caught an unexpected error"
    if isinstance(msg, Append):
        for event in msg.events:
            assert_readable(event)


def assert_readable(event: Any) -> None:
    """What the log would store for this event can be given back in every encoding."""
    blob = msgspec.msgpack.encode(event.data)
    _DATA_DECODERS[event_type(event)].decode(blob)
    plain = msgspec.msgpack.decode(blob)
    _JSON.encode(finite_floats_as_strings(plain))
    for text in (event.id, event.run):
        if text is not None:
            text.encode()
    assert event.ts is None or math.isfinite(event.ts)


@FUZZ
@given(msg=frames_of(json_values))
def test_random_json_messages_raise_only_protocol_errors(msg: Any) -> None:
    assert_only_protocol_errors(to_json(msg))


@FUZZ
@given(msg=frames_of(msgpack_values))
def test_random_msgpack_messages_raise_only_protocol_errors(msg: Any) -> None:
    try:
        frame = msgspec.msgpack.encode(msg)
    except (TypeError, OverflowError):
        return  # not encodable as MessagePack at all: nothing a client could send
    assert_only_protocol_errors(frame)


@FUZZ
@given(msg=frames_of(json_values), data=st.data())
def test_mutated_json_frames_raise_only_protocol_errors(msg: Any, data: st.DataObject) -> None:
    mutated = mutate(to_json(msg).encode(), data)
    assert_only_protocol_errors(mutated.decode("utf-8", errors="replace"))


@FUZZ
@given(msg=frames_of(msgpack_values), data=st.data())
def test_mutated_msgpack_frames_raise_only_protocol_errors(msg: Any, data: st.DataObject) -> None:
    try:
        frame = msgspec.msgpack.encode(msg)
    except (TypeError, OverflowError):
        return
    assert_only_protocol_errors(mutate(frame, data))


def test_the_three_frames_that_stopped_the_writer_are_protocol_errors_or_rejections() -> None:
    frames: list[str | bytes] = [
        '{"op":"append","events":[{"type":"metrics","run":"r","data":{"values":{"x":1e400}}}]}',
        '{"op":"append","events":[{"type":"nope","x":1e400}]}',
        bytes.fromhex("82a26f70a6617070656e64a66576656e74739182a474797065a5626f677573a178a2fffe"),
    ]
    for frame in frames:
        assert_only_protocol_errors(frame)
    msg = CODEC.decode(frames[0])
    assert isinstance(msg, Append) and msg.events == []
    assert [r.message for r in msg.rejected] == ["metrics.values.x: number out of range"]
    msg = CODEC.decode(frames[1])
    assert isinstance(msg, Append) and msg.rejected[0].code == errors.INVALID_EVENT
    assert msg.rejected[0].message.startswith("type: unknown event type 'nope'")
