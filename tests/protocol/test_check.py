"""The `check` request and the `checked` reply in the codec: decoding, and errors that name the field."""

from __future__ import annotations

import json

import msgspec
import pytest

from tracklog.protocol import errors
from tracklog.protocol.messages import Check, Checked, CheckOutcome, Codec, Match

codec = Codec()


def decode(msg: dict[str, object], binary: bool = False) -> object:
    frame = msgspec.msgpack.encode(msg) if binary else json.dumps(msg)
    return codec.decode(frame)


@pytest.mark.parametrize("binary", [False, True])
def test_a_check_decodes_into_a_check_message(binary: bool) -> None:
    msg = decode({"op": "check", "ref": 4, "namespace": "p", "kind": "simhash", "text": "t", "threshold": 3,
                  "record": True, "run": "r-1", "item": "i-1"}, binary)
    assert isinstance(msg, Check)
    assert (msg.namespace, msg.kind, msg.text, msg.threshold, msg.run, msg.item, msg.ref) == (
        "p", "simhash", "t", 3, "r-1", "i-1", 4)


def test_a_null_value_is_a_value_and_not_an_absent_one() -> None:
    msg = decode({"op": "check", "namespace": "p", "kind": "hash", "value": None})
    assert isinstance(msg, Check) and msg.value is None


def test_a_batch_check_carries_its_inputs() -> None:
    msg = decode(
        {
            "op": "check",
            "namespace": "p",
            "kind": "hash",
            "inputs": [{"text": "a", "item": "1"}, {"value": [1]}],
        }
    )
    assert isinstance(msg, Check) and msg.inputs is not None
    assert [(i.text, i.item) for i in msg.inputs] == [("a", "1"), (None, None)]


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        ({"kind": "hash", "text": "t"}, "check: missing required field 'namespace'"),
        ({"namespace": "p", "text": "t"}, "check: missing required field 'kind'"),
        ({"namespace": "p", "kind": "fuzzy", "text": "t"}, "check.kind:"),
        ({"namespace": "p", "kind": "hash"}, "check.text: required"),
        ({"namespace": "p", "kind": "hash", "text": "t", "value": 1}, "check.value: give text or value"),
        ({"namespace": "p", "kind": "hash", "text": 5}, "check.text: expected a string"),
        ({"namespace": "p", "kind": "simhash", "text": "t", "threshold": 17}, "check.threshold:"),
        ({"namespace": "p", "kind": "simhash", "text": "t", "threshold": 2.5}, "check.threshold:"),
        ({"namespace": "p", "kind": "embedding", "vector": [1.0]}, "check.space: required"),
        ({"namespace": "p", "kind": "embedding", "space": "s"}, "check.vector: required"),
        ({"namespace": "p", "kind": "embedding", "space": "s", "vector": []}, "check.vector:"),
        ({"namespace": "p", "kind": "embedding", "space": "s", "vector": [1, "x"]}, "check.vector[1]:"),
        (
            {"namespace": "p", "kind": "embedding", "space": "s", "vector": [1], "threshold": 3},
            "check.threshold:",
        ),
        ({"namespace": "p", "kind": "embedding", "space": "s", "vector": [1], "text": "t"}, "check.text:"),
        ({"namespace": "p", "kind": "hash", "vector": [1.0]}, "check.vector: only for kind 'embedding'"),
        ({"namespace": "", "kind": "hash", "text": "t"}, "check.namespace:"),
        ({"namespace": "a\x01", "kind": "hash", "text": "t"}, "check.namespace:"),
        ({"namespace": "p", "kind": "hash", "text": "t", "inputs": [{"text": "u"}]}, "check.inputs:"),
        ({"namespace": "p", "kind": "hash", "inputs": []}, "check.inputs: expected at least one"),
        ({"namespace": "p", "kind": "hash", "inputs": [{"text": "a"}, {}]}, "check.inputs[1].text: required"),
    ],
)
def test_a_bad_check_is_refused_with_a_message_that_names_the_field(
    msg: dict[str, object], field: str
) -> None:
    with pytest.raises(errors.BadMessage) as caught:
        decode({"op": "check", "ref": 8, **msg})
    assert caught.value.message.startswith(field), caught.value.message
    assert caught.value.ref == 8


def test_too_many_inputs_are_too_large() -> None:
    with pytest.raises(errors.TooLarge, match=r"^check\.inputs:"):
        decode({"op": "check", "namespace": "p", "kind": "hash", "inputs": [{"text": "a"}] * 10_001})


@pytest.mark.parametrize("binary", [False, True])
def test_checked_always_carries_duplicate_match_and_seq(binary: bool) -> None:
    frame = codec.encode(Checked(duplicate=False, match=None, seq=12, ref=4), binary)
    reply = msgspec.msgpack.decode(frame) if binary else json.loads(frame)
    assert reply == {"op": "checked", "duplicate": False, "match": None, "seq": 12, "ref": 4}


def test_a_batch_checked_holds_one_result_per_input() -> None:
    results = [CheckOutcome(False, None, 5), CheckOutcome(True, Match("i", "r", 2, 5))]
    reply = json.loads(codec.encode(Checked(duplicate=True, match=None, seq=5, results=results), False))
    assert reply["results"] == [
        {"duplicate": False, "match": None, "recorded": 5},
        {"duplicate": True, "match": {"item": "i", "run": "r", "distance": 2, "seq": 5}},
    ]
