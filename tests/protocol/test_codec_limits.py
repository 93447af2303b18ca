"""The codec's limits are the protocol's by default and can be set per daemon (serve options)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from tracklog.protocol import errors
from tracklog.protocol.limits import MAX_DEPTH, MAX_EVENTS_PER_APPEND
from tracklog.protocol.messages import Append, Codec, Error, long_string_problem


def item(data: Any, i: int = 0) -> dict[str, Any]:
    return {"id": f"i{i}", "type": "item", "run": "r", "data": {"data": data}}


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def test_defaults_are_the_protocols() -> None:
    codec = Codec()
    assert (codec.max_events_per_append, codec.max_depth, codec.max_field_chars) == (
        MAX_EVENTS_PER_APPEND,
        MAX_DEPTH,
        None,
    )


@pytest.mark.parametrize("binary", [False, True])
def test_events_per_append_as_configured(binary: bool) -> None:
    codec = Codec(max_events_per_append=2)
    frame: dict[str, Any] = {"op": "append", "ref": 3, "events": [item(1, i) for i in range(3)]}
    encoded = msgspec.msgpack.encode(frame) if binary else json.dumps(frame)
    with pytest.raises(errors.TooLarge, match=r"3 events, at most 2 per append \(max_events_per_append\)"):
        codec.decode(encoded)
    frame["events"] = frame["events"][:2]
    encoded = msgspec.msgpack.encode(frame) if binary else json.dumps(frame)
    assert len(codec.decode(encoded).events) == 2  # type: ignore[union-attr]


def test_depth_and_field_chars_as_configured() -> None:
    codec = Codec(max_depth=2, max_field_chars=5)
    msg = codec.decode(
        json.dumps(
            {
                "op": "append",
                "events": [item(nested(2), 0), item(nested(3), 1), item("abcdef", 2), item(["abcde"], 3)],
            }
        )
    )
    assert isinstance(msg, Append) and msg.indexes == [0, 3]
    assert [(r.index, r.message) for r in msg.rejected] == [
        (1, "item.data: nested deeper than 2 levels"),
        (2, "item.data: 6 characters, at most 5 (max_field_chars)"),
    ]


def test_long_string_problem_names_the_path() -> None:
    assert long_string_problem({"a": [1, {"b": "xyz"}]}, 3, "d") is None
    assert (
        long_string_problem({"a": [1, {"b": "wxyz"}]}, 3, "d")
        == "d.a[1].b: 4 characters, at most 3 (max_field_chars)"
    )


def test_a_rate_limited_error_carries_retry_after_and_others_do_not() -> None:
    codec = Codec()
    for binary in (False, True):
        frame = codec.encode_error(errors.RateLimited("slow down", 4, 0.25), binary)
        decoded = (msgspec.msgpack.decode if binary else msgspec.json.decode)(frame, type=Error)
        assert (decoded.code, decoded.ref, decoded.retry_after) == ("rate_limited", 4, 0.25)
        assert b"retry_after" not in codec.encode_error(errors.Forbidden("no", 1), binary)
    again = errors.error_for_code("rate_limited", "slow down", 4, 0.25)
    assert isinstance(again, errors.RateLimited) and again.retry_after == 0.25
