"""Codec: decoding every client message from JSON and MessagePack, per-event rejection
with a message that names the field, NaN spellings, and encoding replies."""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracklog.protocol import errors
from tracklog.protocol import events as ev
from tracklog.protocol.limits import MAX_DEPTH, MAX_EVENTS_PER_APPEND, MAX_ID_CHARS, MAX_NAME_CHARS
from tracklog.protocol.messages import (
    Ack,
    Append,
    Check,
    Codec,
    Duplicate,
    Events,
    Hello,
    Query,
    Rejection,
    Result,
    StoredEvent,
    Subscribe,
    Unsubscribe,
)

CODEC = Codec()
ENCODINGS = pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])


def frame(msg: Any, binary: bool) -> str | bytes:
    return msgspec.msgpack.encode(msg) if binary else json.dumps(msg)


def decode(msg: Any, binary: bool = False) -> Any:
    return CODEC.decode(frame(msg, binary))


def decode_append(events: list[Any], binary: bool = False, **extra: Any) -> Append:
    msg = decode({"op": "append", "events": events, **extra}, binary)
    assert isinstance(msg, Append)
    return msg


def nested(levels: int, leaf: Any = 1) -> Any:
    """`leaf` inside `levels` nested lists."""
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


GOOD = {"type": "metrics", "run": "r-1", "data": {"values": {"loss": 0.5}, "step": 1}}


# -- every client op, in both encodings ------------------------------------------------------


@ENCODINGS
def test_hello_decodes_with_protocol_client_token_and_ref(binary: bool) -> None:
    msg = decode({"op": "hello", "protocol": 1, "client": "my-pipeline/0.3", "token": "t", "ref": 1}, binary)
    assert msg == Hello(protocol=1, client="my-pipeline/0.3", token="t", ref=1)


@ENCODINGS
def test_append_decodes_every_event_type_into_its_struct(binary: bool) -> None:
    events = [
        {
            "id": "e1",
            "type": "run.started",
            "run": "r",
            "ts": 1.5,
            "data": {
                "name": "n",
                "pipeline": "p",
                "config": {"lr": 0.1},
                "tags": ["a"],
                "notes": "x",
                "parent": "r0",
                "user": "u",
                "host": "h",
                "session": "s",
            },
        },
        {
            "type": "run.updated",
            "run": "r",
            "data": {"name": "m", "add_tags": ["b"], "remove_tags": ["a"], "config": {"bs": 8}},
        },
        {"type": "run.finished", "run": "r", "data": {"status": "failed", "error": "boom"}},
        {"type": "run.deleted", "run": "r"},
        {"type": "run.restored", "run": "r", "data": {}},
        {
            "type": "metrics",
            "run": "r",
            "data": {"values": {"loss": 0.42, "acc": 1}, "step": 100, "epoch": 1},
        },
        {
            "type": "item",
            "run": "r",
            "data": {
                "item": "i-1",
                "kind": "k",
                "stage": "s",
                "iteration": 2,
                "status": "failed",
                "data": {"x": [1, 2]},
                "path": "/p",
                "model": "m",
                "backend": "b",
                "duration": 0.5,
                "error": "e",
            },
        },
        {
            "type": "artifact",
            "run": "r",
            "data": {
                "kind": "checkpoint",
                "path": "s3://b/k",
                "size": 10,
                "digest": "sha256:0",
                "metadata": {"a": 1},
            },
        },
        {"type": "cache.put", "data": {"key": "k", "value": {"v": [1]}, "ttl": 60}},
        {"type": "cache.invalidated", "data": {"key": "k"}},
        {"type": "cache.invalidated"},
        {"type": "dedup.cleared", "data": {"namespace": "ns", "kind": "simhash"}},
    ]
    msg = decode_append(events, binary, ref=7)
    assert msg.ref == 7
    assert msg.rejected == []
    assert [ev.event_type(e) for e in msg.events] == [e["type"] for e in events]
    started, updated, finished, _, _, metrics, item, artifact, put, inv, inv_all, cleared = msg.events
    assert started.id == "e1" and started.ts == 1.5 and started.run == "r"
    assert started.data == ev.RunStartedData(
        name="n",
        pipeline="p",
        config={"lr": 0.1},
        tags=["a"],
        notes="x",
        parent="r0",
        user="u",
        host="h",
        session="s",
    )
    assert updated.data.add_tags == ["b"] and updated.data.remove_tags == ["a"]
    assert updated.data.config == {"bs": 8}
    assert finished.data == ev.RunFinishedData(status="failed", error="boom")
    assert metrics.data == ev.MetricsData(values={"loss": 0.42, "acc": 1.0}, step=100, epoch=1)
    assert item.data.status == "failed" and item.data.data == {"x": [1, 2]} and item.data.iteration == 2
    assert artifact.data == ev.ArtifactData(
        kind="checkpoint", path="s3://b/k", size=10, digest="sha256:0", metadata={"a": 1}
    )
    assert put.data == ev.CachePutData(key="k", value={"v": [1]}, ttl=60.0)
    assert inv.data.key == "k"
    assert inv_all.data.key is None
    assert cleared.data == ev.DedupClearedData(namespace="ns", kind="simhash")


@ENCODINGS
def test_append_of_good_events_has_no_rejections_and_no_index_map(binary: bool) -> None:
    msg = decode_append([GOOD, GOOD], binary)
    assert len(msg.events) == 2
    assert msg.rejected == []
    assert msg.indexes is None


@ENCODINGS
def test_item_status_defaults_to_ok(binary: bool) -> None:
    msg = decode_append([{"type": "item", "run": "r"}], binary)
    assert msg.events[0].data.status == "ok"


@ENCODINGS
def test_global_event_types_drop_a_run_sent_with_them(binary: bool) -> None:
    msg = decode_append([{"type": "cache.put", "run": "r", "data": {"key": "k", "value": 1}}], binary)
    assert msg.rejected == []
    assert msg.events[0].run is None


@ENCODINGS
def test_query_decodes_with_its_arguments(binary: bool) -> None:
    msg = decode(
        {
            "op": "query",
            "ref": 9,
            "q": "runs",
            "filter": "metrics.loss < 0.5",
            "order_by": ["metrics.loss asc"],
            "limit": 50,
            "offset": 5,
            "deleted": True,
        },
        binary,
    )
    assert msg == Query(
        q="runs",
        ref=9,
        filter="metrics.loss < 0.5",
        order_by=["metrics.loss asc"],
        limit=50,
        offset=5,
        deleted=True,
    )


@ENCODINGS
def test_metrics_query_decodes_names_and_step_range(binary: bool) -> None:
    msg = decode(
        {
            "op": "query",
            "q": "metrics",
            "run": "r",
            "names": ["loss"],
            "max_points": 100,
            "step_from": 10,
            "step_to": 20,
        },
        binary,
    )
    assert isinstance(msg, Query)
    assert (msg.run, msg.names, msg.max_points, msg.step_from, msg.step_to) == ("r", ["loss"], 100, 10, 20)


@ENCODINGS
def test_subscribe_decodes_from_seq_and_filter(binary: bool) -> None:
    msg = decode(
        {
            "op": "subscribe",
            "ref": 3,
            "from_seq": 1200,
            "filter": {"runs": ["r-7f3a"], "types": ["metrics"], "pipelines": ["p"]},
        },
        binary,
    )
    assert isinstance(msg, Subscribe)
    assert msg.ref == 3 and msg.from_seq == 1200
    assert msg.filter is not None
    assert (msg.filter.runs, msg.filter.types, msg.filter.pipelines) == (["r-7f3a"], ["metrics"], ["p"])


@ENCODINGS
def test_subscribe_without_from_seq_means_only_new_events(binary: bool) -> None:
    msg = decode({"op": "subscribe", "from_seq": None}, binary)
    assert isinstance(msg, Subscribe)
    assert msg.from_seq is None and msg.filter is None


@ENCODINGS
def test_unsubscribe_decodes_its_sub(binary: bool) -> None:
    assert decode({"op": "unsubscribe", "sub": 1}, binary) == Unsubscribe(sub=1)


@ENCODINGS
def test_unsubscribe_without_sub_is_a_bad_message_naming_the_field(binary: bool) -> None:
    with pytest.raises(errors.BadMessage, match="sub"):
        decode({"op": "unsubscribe", "ref": 2}, binary)


@ENCODINGS
def test_query_without_q_is_a_bad_message_naming_the_field_with_ref_echoed(binary: bool) -> None:
    with pytest.raises(errors.BadMessage, match="'q'") as info:
        decode({"op": "query", "ref": 12}, binary)
    assert info.value.ref == 12


@ENCODINGS
def test_append_without_events_is_a_bad_message_naming_the_field(binary: bool) -> None:
    with pytest.raises(errors.BadMessage, match="events") as info:
        decode({"op": "append", "ref": 4}, binary)
    assert info.value.ref == 4


@ENCODINGS
def test_append_whose_events_is_not_a_list_is_a_bad_message(binary: bool) -> None:
    with pytest.raises(errors.BadMessage, match=r"append\.events: expected an array"):
        decode({"op": "append", "events": 5}, binary)


# -- per-event rejection -----------------------------------------------------------------------

LONG = "x" * (MAX_NAME_CHARS + 1)

#: (event, the start of the rejection message: the field it names, words the message holds)
BAD_EVENTS = [
    pytest.param(
        {"type": "metrics", "run": "r", "data": {"values": {"loss": True}}},
        "metrics.values.loss: expected a number",
        "boolean",
        id="metric-bool",
    ),
    pytest.param(
        {"type": "metrics", "run": "r", "data": {"values": {"acc": 0.5, "loss": "low"}}},
        "metrics.values.loss: expected a number",
        "NaN",
        id="metric-string",
    ),
    pytest.param(
        {"type": "metrics", "run": "r", "data": {"values": {"loss": "nan"}}},
        "metrics.values.loss: expected a number",
        "'NaN'",
        id="metric-lowercase-nan",
    ),
    pytest.param(
        {"type": "metrics", "run": "r", "data": {"values": {"loss": None}}},
        "metrics.values.loss: expected a number",
        "",
        id="metric-null",
    ),
    pytest.param(
        {"type": "metrics", "run": "r", "data": {"values": {}}}, "metrics.values:", "", id="metric-no-values"
    ),
    pytest.param(
        {"type": "metrics", "run": "r", "data": {"step": 1}}, "metrics:", "values", id="metric-missing-values"
    ),
    pytest.param(
        {"type": "metrics", "data": {"values": {"loss": 1.0}}},
        "run: required for metrics events",
        "",
        id="metrics-without-run",
    ),
    pytest.param(
        {"type": "run.started"}, "run: required for run.started events", "", id="started-without-run"
    ),
    pytest.param(
        {"type": "run.updated", "data": {}}, "run: required for run.updated", "", id="updated-without-run"
    ),
    pytest.param(
        {"type": "run.finished", "data": {"status": "completed"}},
        "run: required",
        "",
        id="finished-without-run",
    ),
    pytest.param({"type": "run.deleted"}, "run: required", "", id="deleted-without-run"),
    pytest.param({"type": "item"}, "run: required for item events", "", id="item-without-run"),
    pytest.param(
        {"type": "artifact", "data": {"kind": "plot", "path": "p.png"}},
        "run: required",
        "",
        id="artifact-without-run",
    ),
    pytest.param({"type": "metrics", "run": "", "data": {"values": {"a": 1}}}, "run:", "", id="run-empty"),
    pytest.param(
        {"type": "metrics", "run": "r" * 129, "data": {"values": {"a": 1}}}, "run:", "128", id="run-too-long"
    ),
    pytest.param({"type": "nope", "run": "r"}, "type: unknown event type 'nope'", "", id="unknown-type"),
    pytest.param({"run": "r", "data": {"values": {"a": 1}}}, "type: missing", "", id="missing-type"),
    pytest.param({"type": 5, "run": "r"}, "type: expected a string", "", id="type-not-a-string"),
    pytest.param(
        {"type": "metrics", "run": "r", "data": {"values": {LONG: 1.0}}},
        "metrics.values:",
        "250",
        id="metric-name-too-long",
    ),
    pytest.param(
        {"type": "metrics", "run": "r", "data": {"values": {"": 1.0}}},
        "metrics.values:",
        "1",
        id="metric-name-empty",
    ),
    pytest.param(
        {"type": "metrics", "run": "r", "data": {"values": {"lo\x01ss": 1.0}}},
        "metrics.values",
        "",
        id="metric-name-control-char",
    ),
    pytest.param(
        {"type": "metrics", "run": "r", "data": {"values": {"lo\nss": 1.0}}},
        "metrics.values",
        "",
        id="metric-name-newline-inside",
    ),
    pytest.param(
        {"type": "metrics", "run": "r", "data": {"values": {"loss\x7f": 1.0}}},
        "metrics.values",
        "",
        id="metric-name-del",
    ),
    pytest.param(
        {"type": "run.started", "run": "r", "data": {"tags": ["ok", LONG]}},
        "run.started.tags[1]:",
        "250",
        id="tag-too-long",
    ),
    pytest.param(
        {"type": "run.started", "run": "r", "data": {"tags": [""]}},
        "run.started.tags[0]:",
        "",
        id="tag-empty",
    ),
    pytest.param(
        {"type": "run.started", "run": "r", "data": {"tags": ["a\tb"]}},
        "run.started.tags",
        "",
        id="tag-control-char",
    ),
    pytest.param(
        {"type": "run.updated", "run": "r", "data": {"add_tags": [LONG]}},
        "run.updated.add_tags[0]:",
        "250",
        id="added-tag-too-long",
    ),
    pytest.param(
        {"type": "run.updated", "run": "r", "data": {"remove_tags": [""]}},
        "run.updated.remove_tags[0]:",
        "",
        id="removed-tag-empty",
    ),
    pytest.param(
        {"type": "run.started", "run": "r", "data": {"config": {LONG: 1}}},
        "run.started.config:",
        "250",
        id="config-key-too-long",
    ),
    pytest.param(
        {"type": "run.started", "run": "r", "data": {"config": {"": 1}}},
        "run.started.config:",
        "",
        id="config-key-empty",
    ),
    pytest.param(
        {"type": "run.updated", "run": "r", "data": {"config": {"a\x00": 1}}},
        "run.updated.config",
        "",
        id="config-key-control-char",
    ),
    pytest.param(
        {"type": "cache.put", "data": {"key": LONG, "value": 1}},
        "cache.put.key:",
        "250",
        id="cache-key-too-long",
    ),
    pytest.param(
        {"id": "i" * (MAX_ID_CHARS + 1), "type": "run.started", "run": "r"}, "id:", "128", id="id-too-long"
    ),
    pytest.param(
        {"id": 7, "type": "run.started", "run": "r"}, "id: expected a string", "", id="id-not-a-string"
    ),
    pytest.param(
        {"type": "run.started", "run": "r", "ts": "now"}, "ts: expected a number", "", id="ts-a-string"
    ),
    pytest.param(
        {"type": "metrics", "run": "r", "data": {"values": {"a": 1}, "step": 1.5}},
        "metrics.step: expected an integer",
        "",
        id="step-float",
    ),
    pytest.param(
        {"type": "metrics", "run": "r", "data": {"values": {"a": 1}, "step": True}},
        "metrics.step: expected an integer",
        "",
        id="step-bool",
    ),
    pytest.param(
        {"type": "metrics", "run": "r", "data": {"values": {"a": 1}, "epoch": 2.5}},
        "metrics.epoch: expected an integer",
        "",
        id="epoch-float",
    ),
    pytest.param(
        {"type": "item", "run": "r", "data": {"iteration": "3"}},
        "item.iteration: expected an integer",
        "",
        id="iteration-string",
    ),
    pytest.param(
        {"type": "run.finished", "run": "r", "data": {"status": "done"}},
        "run.finished.status:",
        "'done'",
        id="bad-finish-status",
    ),
    pytest.param(
        {"type": "run.finished", "run": "r", "data": {"status": "running"}},
        "run.finished.status:",
        "",
        id="finish-status-running",
    ),
    pytest.param(
        {"type": "run.finished", "run": "r", "data": {}},
        "run.finished:",
        "status",
        id="finish-without-status",
    ),
    pytest.param(
        {"type": "item", "run": "r", "data": {"status": "weird"}},
        "item.status:",
        "'weird'",
        id="bad-item-status",
    ),
    pytest.param(
        {"type": "artifact", "run": "r", "data": {"kind": "plot"}},
        "artifact:",
        "path",
        id="artifact-without-path",
    ),
    pytest.param(
        {"type": "cache.put", "data": {"key": "k", "value": 1, "ttl": "soon"}},
        "cache.put.ttl: expected a number",
        "",
        id="ttl-string",
    ),
    pytest.param(
        {"type": "dedup.recorded", "run": "r", "data": {"namespace": "n", "kind": "hash", "value": "v"}},
        "type: dedup.recorded events are written by the daemon only",
        "",
        id="client-dedup-recorded",
    ),
    pytest.param(
        {"type": "item", "run": "r", "data": {"data": nested(MAX_DEPTH + 6)}},
        "item.data: nested deeper than 64 levels",
        "",
        id="item-data-too-deep",
    ),
    pytest.param(
        {"type": "item", "run": "r", "data": {"data": {"a": nested(MAX_DEPTH + 1, {"b": 1})}}},
        "item.data: nested deeper",
        "",
        id="item-data-maps-too-deep",
    ),
    pytest.param(
        {"type": "run.started", "run": "r", "data": {"config": {"a": nested(MAX_DEPTH + 1)}}},
        "run.started.config: nested deeper",
        "",
        id="config-too-deep",
    ),
    pytest.param(
        {"type": "cache.put", "data": {"key": "k", "value": nested(MAX_DEPTH + 1)}},
        "cache.put.value: nested deeper",
        "",
        id="cache-value-too-deep",
    ),
    pytest.param(
        {
            "type": "artifact",
            "run": "r",
            "data": {"kind": "k", "path": "p", "metadata": {"m": nested(MAX_DEPTH + 1)}},
        },
        "artifact.metadata: nested deeper",
        "",
        id="artifact-metadata-too-deep",
    ),
    pytest.param(5, "event: expected an object", "", id="event-a-number"),
    pytest.param("run.started", "event: expected an object", "", id="event-a-string"),
    pytest.param([GOOD], "event: expected an object", "", id="event-a-list"),
    pytest.param(None, "event: expected an object", "", id="event-null"),
]


@ENCODINGS
@pytest.mark.parametrize(("bad", "starts", "words"), BAD_EVENTS)
def test_bad_event_between_good_ones_is_rejected_alone_with_its_index_and_a_message_naming_the_field(
    binary: bool, bad: Any, starts: str, words: str
) -> None:
    msg = decode_append([GOOD, bad, {**GOOD, "data": {"values": {"acc": 1.0}}}], binary, ref=5)
    assert msg.ref == 5
    assert [r.index for r in msg.rejected] == [1]
    rejection = msg.rejected[0]
    assert rejection.code == errors.INVALID_EVENT == "invalid_event"
    assert rejection.message.startswith(starts), rejection.message
    assert words in rejection.message
    assert msg.indexes == [0, 2]
    assert [e.data.values for e in msg.events] == [{"loss": 0.5}, {"acc": 1.0}]


@ENCODINGS
@pytest.mark.parametrize("value", [{"a": 1}, [1.0], {}], ids=["map", "list", "empty-map"])
def test_metric_value_that_is_a_map_or_list_is_rejected_naming_the_field(binary: bool, value: Any) -> None:
    msg = decode_append([GOOD, {"type": "metrics", "run": "r", "data": {"values": {"loss": value}}}], binary)
    assert [(r.index, r.message.split(":")[0]) for r in msg.rejected] == [(1, "metrics.values.loss")]
    assert "expected a number" in msg.rejected[0].message


@ENCODINGS
def test_each_bad_event_of_an_append_gets_its_own_rejection_and_the_good_ones_keep_their_order(
    binary: bool,
) -> None:
    events = [
        {"type": "nope", "run": "r"},
        {**GOOD, "id": "a"},
        {"type": "metrics", "run": "r", "data": {"values": {"loss": True}}},
        {"type": "metrics", "data": {"values": {"loss": 1.0}}},
        {**GOOD, "id": "b"},
        7,
        {**GOOD, "id": "c"},
    ]
    msg = decode_append(events, binary)
    assert [(r.index, r.message.split(":")[0]) for r in msg.rejected] == [
        (0, "type"),
        (2, "metrics.values.loss"),
        (3, "run"),
        (5, "event"),
    ]
    assert [e.id for e in msg.events] == ["a", "b", "c"]
    assert msg.indexes == [1, 4, 6]


@ENCODINGS
def test_append_whose_only_problem_is_a_missing_run_still_keeps_the_good_events(binary: bool) -> None:
    # Every event here decodes; the missing run is found by check_event, not by msgspec.
    msg = decode_append([GOOD, {"type": "run.started"}, GOOD], binary)
    assert [(r.index, r.message) for r in msg.rejected] == [(1, "run: required for run.started events")]
    assert msg.indexes == [0, 2]
    assert len(msg.events) == 2


@ENCODINGS
def test_append_of_only_bad_events_keeps_nothing_and_rejects_each(binary: bool) -> None:
    msg = decode_append([{"type": "nope"}, {"type": "run.started"}], binary)
    assert msg.events == []
    assert [r.index for r in msg.rejected] == [0, 1]
    assert msg.indexes == []


def test_non_finite_ts_is_rejected_naming_the_field() -> None:
    msg = decode_append([{**GOOD, "ts": math.nan}, GOOD], binary=True)
    assert [(r.index, r.message) for r in msg.rejected] == [(0, "ts: expected a finite number")]


def test_value_nested_exactly_to_the_limit_with_an_empty_list_at_the_bottom_is_accepted() -> None:
    # MAX_DEPTH - 1 lists around an empty list: MAX_DEPTH levels of containers.
    msg = decode_append([{"type": "item", "run": "r", "data": {"data": nested(MAX_DEPTH - 1, leaf=[])}}])
    assert msg.rejected == []


def test_value_nested_exactly_to_the_limit_with_a_number_at_the_bottom_is_accepted() -> None:
    msg = decode_append([{"type": "item", "run": "r", "data": {"data": nested(MAX_DEPTH)}}])
    assert msg.rejected == []


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"type": "metrics", "run": "r", "data": {"values": {"a": 1}, "step": 2**63}}, "metrics.step"),
        ({"type": "metrics", "run": "r", "data": {"values": {"a": 1}, "epoch": 2**64 - 1}}, "metrics.epoch"),
        ({"type": "item", "run": "r", "data": {"iteration": 2**63}}, "item.iteration"),
        (
            {"type": "artifact", "run": "r", "data": {"kind": "k", "path": "p", "size": 2**63}},
            "artifact.size",
        ),
    ],
    ids=["step", "epoch", "iteration", "size"],
)
def test_integer_beyond_int64_is_rejected_naming_the_field(event: Any, field: str) -> None:
    msg = decode_append([GOOD, event])
    assert [(r.index, r.message.split(":")[0]) for r in msg.rejected] == [(1, field)]


@pytest.mark.parametrize(
    "event",
    [
        {"type": "metrics", "run": "r", "data": {"values": {"loss\n": 1.0}}},
        {"type": "run.started", "run": "r", "data": {"tags": ["tag\n"]}},
        {"type": "run.started", "run": "r", "data": {"config": {"key\n": 1}}},
        {"type": "run.started", "run": "r\n"},
        {"type": "run.updated", "run": "r", "data": {"remove_tags": ["tag\n"]}},
        {"type": "cache.put", "data": {"key": "key\n", "value": 1}},
        {"type": "cache.invalidated", "data": {"key": "key\n"}},
        {"type": "artifact", "run": "r", "data": {"kind": "plot\n", "path": "p"}},
    ],
    ids=[
        "metric-name",
        "tag",
        "config-key",
        "run-id",
        "removed-tag",
        "cache-key",
        "invalidated-key",
        "artifact-kind",
    ],
)
def test_name_ending_in_a_newline_is_rejected_as_a_control_character(event: Any) -> None:
    msg = decode_append([GOOD, event])
    assert [r.index for r in msg.rejected] == [1]


def test_parent_run_id_with_a_control_character_is_rejected_naming_the_field() -> None:
    msg = decode_append([{"type": "run.started", "run": "r", "data": {"parent": "p\x01"}}])
    assert [r.message.split(":")[0] for r in msg.rejected] == ["run.started.parent"]


@pytest.mark.parametrize(
    "event",
    [
        {"type": "metrics", "run": "r", "data": {"values": {LONG: 1.0}}},
        {"type": "run.started", "run": "r", "data": {"tags": [""]}},
        {"id": "i" * (MAX_ID_CHARS + 1), "type": "run.started", "run": "r"},
        {"type": "metrics", "run": "r", "data": {"values": {}}},
    ],
    ids=["name-too-long", "tag-empty", "id-too-long", "values-empty"],
)
def test_length_and_pattern_rejections_read_as_a_clear_sentence(event: Any) -> None:
    message = decode_append([event]).rejected[0].message
    assert "`" not in message
    assert not message.rstrip().endswith("got")


# -- NaN and the infinities --------------------------------------------------------------------


def test_json_strings_for_nan_and_the_infinities_decode_to_floats() -> None:
    msg = decode_append(
        [
            {
                "type": "metrics",
                "run": "r",
                "data": {"values": {"a": "NaN", "b": "Infinity", "c": "-Infinity", "d": 1}},
            }
        ]
    )
    values = msg.events[0].data.values
    assert all(type(v) is float for v in values.values())
    assert math.isnan(values["a"])
    assert values["b"] == math.inf
    assert values["c"] == -math.inf
    assert values["d"] == 1.0


def test_json_nan_strings_decode_to_floats_in_an_append_that_also_has_rejections() -> None:
    msg = decode_append([{"type": "nope"}, {"type": "metrics", "run": "r", "data": {"values": {"a": "NaN"}}}])
    assert [r.index for r in msg.rejected] == [0]
    assert math.isnan(msg.events[0].data.values["a"])


def test_msgpack_floats_nan_and_infinities_pass_as_floats() -> None:
    msg = decode_append(
        [{"type": "metrics", "run": "r", "data": {"values": {"a": math.nan, "b": math.inf, "c": -math.inf}}}],
        binary=True,
    )
    assert msg.rejected == []
    values = msg.events[0].data.values
    assert math.isnan(values["a"]) and values["b"] == math.inf and values["c"] == -math.inf


def test_json_encoding_of_a_result_turns_nan_and_infinities_into_strings() -> None:
    result = Result(
        seq=3, rows=[{"last": math.nan, "series": [math.inf, -math.inf, 1.5], "n": 2}], total=1, ref=9
    )
    assert json.loads(CODEC.encode(result, binary=False)) == {
        "op": "result",
        "seq": 3,
        "rows": [{"last": "NaN", "series": ["Infinity", "-Infinity", 1.5], "n": 2}],
        "total": 1,
        "ref": 9,
    }


def test_json_encoding_of_a_result_whose_rows_are_structs_turns_nan_into_a_string() -> None:
    row = StoredEvent(1, "metrics", {"values": {"loss": math.nan}}, 2.0, 1.0, None, "r")
    encoded = json.loads(CODEC.encode(Result(seq=1, rows=[row]), binary=False))
    assert encoded["rows"][0]["data"] == {"values": {"loss": "NaN"}}


def test_json_encoding_of_events_turns_nan_and_infinities_into_strings() -> None:
    stored = StoredEvent(
        4, "metrics", {"values": {"a": math.nan, "b": math.inf, "c": -math.inf}}, 2.0, 1.0, "e", "r"
    )
    encoded = json.loads(CODEC.encode(Events(sub=1, events=[stored]), binary=False))
    assert encoded == {
        "op": "events",
        "sub": 1,
        "events": [
            {
                "seq": 4,
                "type": "metrics",
                "data": {"values": {"a": "NaN", "b": "Infinity", "c": "-Infinity"}},
                "recorded": 2.0,
                "ts": 1.0,
                "id": "e",
                "run": "r",
            }
        ],
    }


def test_json_encoding_of_events_as_the_store_makes_them_turns_nan_into_strings() -> None:
    data = ev.MetricsData(values={"a": math.nan, "b": math.inf}, step=1)
    stored = StoredEvent(4, "metrics", data, 2.0, 1.0, None, "r")
    encoded = json.loads(CODEC.encode(Events(sub=1, events=[stored]), binary=False))
    assert encoded["events"][0]["data"]["values"] == {"a": "NaN", "b": "Infinity"}


def test_msgpack_encoding_of_a_result_keeps_nan_as_a_float() -> None:
    decoded = msgspec.msgpack.decode(
        CODEC.encode(Result(seq=1, rows=[{"v": math.nan, "w": -math.inf}]), True)
    )
    assert math.isnan(decoded["rows"][0]["v"]) and decoded["rows"][0]["w"] == -math.inf


def test_ack_encodes_with_duplicates_and_rejections() -> None:
    ack = Ack(
        accepted=2,
        first_seq=41,
        last_seq=42,
        duplicates=[Duplicate(3, 17)],
        rejected=[Rejection(5, "invalid_event", "metrics.values.loss: expected a number")],
        ref=7,
    )
    assert json.loads(CODEC.encode(ack, binary=False)) == {
        "op": "ack",
        "accepted": 2,
        "first_seq": 41,
        "last_seq": 42,
        "duplicates": [{"index": 3, "seq": 17}],
        "rejected": [
            {"index": 5, "code": "invalid_event", "message": "metrics.values.loss: expected a number"}
        ],
        "ref": 7,
    }


@ENCODINGS
def test_error_encodes_its_code_message_and_ref(binary: bool) -> None:
    raw = CODEC.encode_error(errors.UnknownOp("op: unknown op 'x'", 5), binary)
    decoded = msgspec.msgpack.decode(raw) if binary else json.loads(raw)
    assert decoded == {"op": "error", "code": "unknown_op", "message": "op: unknown op 'x'", "ref": 5}


# -- frame and message errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw", ["{nope", "", '{"op": "hello"', "\x00"], ids=["garbage", "empty", "truncated", "nul"]
)
def test_undecodable_json_frame_is_a_bad_frame(raw: str) -> None:
    with pytest.raises(errors.BadFrame) as info:
        CODEC.decode(raw)
    assert info.value.code == "bad_frame"


@pytest.mark.parametrize("raw", [b"\xc1", b"", b"\x82\xa2op"], ids=["bad-opcode", "empty", "truncated"])
def test_undecodable_msgpack_frame_is_a_bad_frame(raw: bytes) -> None:
    with pytest.raises(errors.BadFrame):
        CODEC.decode(raw)


@ENCODINGS
def test_unknown_op_is_unknown_op_with_the_ref_echoed(binary: bool) -> None:
    with pytest.raises(errors.UnknownOp, match="frob") as info:
        decode({"op": "frob", "ref": 4}, binary)
    assert info.value.ref == 4
    assert info.value.code == "unknown_op"


@ENCODINGS
def test_missing_op_is_a_bad_message_with_the_ref_echoed(binary: bool) -> None:
    with pytest.raises(errors.BadMessage, match="op") as info:
        decode({"ref": 4, "events": []}, binary)
    assert info.value.ref == 4
    assert info.value.code == "bad_message"


@ENCODINGS
def test_op_that_is_not_a_string_is_a_bad_message(binary: bool) -> None:
    with pytest.raises(errors.BadMessage, match="op: expected a string"):
        decode({"op": 3}, binary)


@ENCODINGS
@pytest.mark.parametrize("msg", [[1, 2], "hello", 5], ids=["array", "string", "number"])
def test_message_that_is_not_an_object_is_a_bad_message(binary: bool, msg: Any) -> None:
    with pytest.raises(errors.BadMessage):
        decode(msg, binary)


@ENCODINGS
def test_ref_that_is_not_an_integer_is_not_echoed(binary: bool) -> None:
    with pytest.raises(errors.UnknownOp) as info:
        decode({"op": "frob", "ref": "seven"}, binary)
    assert info.value.ref is None


@ENCODINGS
def test_more_than_ten_thousand_events_is_too_large(binary: bool) -> None:
    assert MAX_EVENTS_PER_APPEND == 10_000
    with pytest.raises(errors.TooLarge, match="10001") as info:
        decode({"op": "append", "ref": 6, "events": [GOOD] * (MAX_EVENTS_PER_APPEND + 1)}, binary)
    assert info.value.ref == 6
    assert info.value.code == "too_large"


@ENCODINGS
def test_more_than_ten_thousand_events_with_some_bad_is_too_large(binary: bool) -> None:
    with pytest.raises(errors.TooLarge):
        decode({"op": "append", "events": [GOOD] * MAX_EVENTS_PER_APPEND + [{"type": "nope"}]}, binary)


def test_exactly_ten_thousand_events_are_accepted() -> None:
    msg = decode_append([GOOD] * MAX_EVENTS_PER_APPEND)
    assert len(msg.events) == MAX_EVENTS_PER_APPEND


@ENCODINGS
def test_client_cannot_inject_rejected_or_indexes_into_a_good_append(binary: bool) -> None:
    msg = decode_append([GOOD], binary, rejected=[{"index": 0, "code": "x", "message": "y"}], indexes=[5])
    assert msg.rejected == []
    assert msg.indexes is None
    assert len(msg.events) == 1


@ENCODINGS
def test_client_cannot_inject_rejected_or_indexes_into_a_partly_bad_append(binary: bool) -> None:
    # A missing run: every event decodes, check_event finds the problem.
    msg = decode_append(
        [GOOD, {"type": "item"}], binary, rejected=[{"index": 0, "code": "x", "message": "y"}], indexes=[9, 9]
    )
    assert [r.index for r in msg.rejected] == [1]
    assert msg.indexes == [0]
    # An unknown type: the slow path decodes the events one by one.
    msg = decode_append(
        [GOOD, {"type": "nope"}], binary, rejected=[{"index": 0, "code": "x", "message": "y"}], indexes=[9, 9]
    )
    assert [r.index for r in msg.rejected] == [1]
    assert msg.indexes == [0]


@ENCODINGS
def test_client_sent_rejected_of_the_wrong_shape_does_not_fail_a_good_append(binary: bool) -> None:
    msg = decode_append([GOOD], binary, rejected="all of them", indexes="none")
    assert msg.rejected == []
    assert len(msg.events) == 1
    assert msg.indexes in (None, [0])  # no index map, or the identity


@ENCODINGS
def test_unknown_fields_are_ignored_on_messages_events_and_data(binary: bool) -> None:
    assert decode({"op": "hello", "protocol": 1, "shiny": {"x": 1}}, binary) == Hello(protocol=1)
    msg = decode_append(
        [{**GOOD, "colour": "red", "data": {"values": {"a": 1}, "future": [1]}}], binary, extension=True
    )
    assert msg.rejected == []
    assert msg.events[0].data == ev.MetricsData(values={"a": 1.0})
    msg = decode({"op": "subscribe", "filter": {"runs": ["r"], "later": 1}, "x": 2}, binary)
    assert isinstance(msg, Subscribe) and msg.filter is not None and msg.filter.runs == ["r"]


@ENCODINGS
def test_check_op_decodes_into_a_check_with_the_ref(binary: bool) -> None:
    msg = decode({"op": "check", "ref": 8, "namespace": "n", "kind": "hash", "text": "t"}, binary)
    assert isinstance(msg, Check)
    assert msg.ref == 8


# -- properties -----------------------------------------------------------------------------

names = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=MAX_NAME_CHARS
)
finite = st.floats(allow_nan=False, allow_infinity=False)
json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | finite | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(values=st.dictionaries(names, finite, min_size=1, max_size=8), step=st.none() | st.integers(0, 2**62))
def test_any_map_of_finite_floats_round_trips_through_json_append_decoding(
    values: dict[str, float], step: int | None
) -> None:
    msg = decode_append([{"type": "metrics", "run": "r", "data": {"values": values, "step": step}}])
    assert msg.rejected == []
    assert msg.events[0].data.values == values
    assert msg.events[0].data.step == step


@settings(max_examples=150, deadline=None)
@given(values=st.dictionaries(names, st.floats(), min_size=1, max_size=8))
def test_any_map_of_floats_with_non_finite_ones_spelled_as_strings_decodes_to_the_same_floats(
    values: dict[str, float],
) -> None:
    sent = ev.finite_floats_as_strings(values)
    msg = decode_append([{"type": "metrics", "run": "r", "data": {"values": sent}}])
    got = msg.events[0].data.values
    assert list(got) == list(values)
    for name, value in values.items():
        assert got[name] == value or (math.isnan(got[name]) and math.isnan(value))


@settings(max_examples=150, deadline=None)
@given(value=json_values, binary=st.booleans())
def test_any_json_safe_value_in_item_data_survives_decoding(value: Any, binary: bool) -> None:
    msg = decode_append([{"type": "item", "run": "r", "data": {"data": value}}], binary)
    assert msg.rejected == []
    assert msg.events[0].data.data == value


@settings(max_examples=100, deadline=None)
@given(value=json_values)
def test_any_json_safe_value_survives_a_cache_put_and_json_encoding_of_a_result(value: Any) -> None:
    msg = decode_append([{"type": "cache.put", "data": {"key": "k", "value": value}}])
    assert msg.events[0].data.value == value
    encoded = json.loads(
        CODEC.encode(Result(seq=1, rows=[{"value": msg.events[0].data.value}]), binary=False)
    )
    assert encoded["rows"] == [{"value": value}]


# -- values every reader can take back (non-JSON values refused at the door) -------------------

GOOD_ITEM = {"type": "item", "run": "r", "data": {"data": {"ok": 1}}}


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"type": "item", "run": "r", "data": {"data": {1: "a"}}}, "item.data.1: map keys must be strings"),
        (
            {"type": "run.started", "run": "r", "data": {"config": {"layers": {0: 64}}}},
            "run.started.config.layers.0: map keys must be strings",
        ),
        (
            {"type": "run.updated", "run": "r", "data": {"config": {"a": [{"b": {True: 1}}]}}},
            "run.updated.config.a[0].b.True: map keys must be strings",
        ),
        (
            {"type": "cache.put", "data": {"key": "k", "value": {(1, 2): "v"}}},
            "cache.put.value.(1, 2): map keys must be strings",
        ),
        (
            {"type": "cache.put", "data": {"key": "k", "value": msgspec.msgpack.Ext(1, b"x")}},
            "cache.put.value: expected a JSON value (null, boolean, number, string, list or map),"
            " got a MessagePack extension (type 1)",
        ),
        (
            {"type": "item", "run": "r", "data": {"data": {"blob": b"\x00\x01"}}},
            "item.data.blob: expected a JSON value (null, boolean, number, string, list or map), got bytes",
        ),
        (
            {
                "type": "artifact",
                "run": "r",
                "data": {"kind": "k", "path": "p", "metadata": {"m": [1, b"x"]}},
            },
            "artifact.metadata.m[1]: expected a JSON value (null, boolean, number, string, list or map),"
            " got bytes",
        ),
        (
            {"type": "item", "run": "r", "data": {"data": [2**64 - 1]}},
            "item.data[0]: integer beyond 64 bits",
        ),
    ],
)
def test_a_value_not_every_reader_can_take_back_is_rejected_naming_its_path_and_the_rest_is_kept(
    event: Any, message: str
) -> None:
    msg = decode_append([GOOD_ITEM, event, GOOD], binary=True)
    assert [(r.index, r.code, r.message) for r in msg.rejected] == [(1, errors.INVALID_EVENT, message)]
    assert msg.indexes == [0, 2] and len(msg.events) == 2


def test_a_messagepack_timestamp_in_a_free_form_value_is_rejected() -> None:
    import datetime as dt

    when = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    msg = decode_append([{"type": "item", "run": "r", "data": {"data": {"at": when}}}], binary=True)
    assert [r.message for r in msg.rejected] == [
        "item.data.at: expected a JSON value (null, boolean, number, string, list or map), got a timestamp"
    ]


@pytest.mark.parametrize("number", ["123456789012345678901234567890", "-9223372036854775809"])
def test_a_json_integer_beyond_64_bits_in_a_free_form_value_is_rejected(number: str) -> None:
    raw = f'{{"op":"append","events":[{{"type":"cache.put","data":{{"key":"k","value":{{"n":{number}}}}}}}]}}'
    msg = CODEC.decode(raw)
    assert isinstance(msg, Append)
    assert [r.message for r in msg.rejected] == ["cache.put.value.n: integer beyond 64 bits"]


def test_the_int64_bounds_and_non_finite_floats_are_kept_in_free_form_values() -> None:
    value = {"lo": -(2**63), "hi": 2**63 - 1, "nan": math.nan, "inf": math.inf, "s": "NaN"}
    msg = decode_append([{"type": "item", "run": "r", "data": {"data": value}}], binary=True)
    assert msg.rejected == []


@ENCODINGS
def test_a_check_value_that_is_not_a_json_value_is_a_bad_message_naming_the_field(binary: bool) -> None:
    value: Any = {"x": b"raw"} if binary else {"x": 2**70}
    with pytest.raises(errors.BadMessage, match=r"^check\.value\.x: "):
        decode({"op": "check", "namespace": "n", "kind": "hash", "value": value}, binary)
    with pytest.raises(errors.BadMessage, match=r"^check\.inputs\[1\]\.value\.x: "):
        decode(
            {"op": "check", "namespace": "n", "kind": "hash", "inputs": [{"text": "a"}, {"value": value}]},
            binary,
        )


def test_a_number_json_cannot_hold_as_a_float_is_rejected_naming_the_field() -> None:
    msg = CODEC.decode(
        '{"op":"append","events":[{"type":"item","run":"r","data":{"duration":1e400}},'
        '{"type":"metrics","run":"r","data":{"values":{"a":1,"b":-1e400}}}]}'
    )
    assert isinstance(msg, Append)
    assert [r.message for r in msg.rejected] == [
        "item.duration: number out of range",
        "metrics.values.b: number out of range",
    ]


def test_a_messagepack_event_with_a_string_that_is_not_utf8_is_rejected_alone() -> None:
    good = msgspec.msgpack.encode(GOOD)
    bad = msgspec.msgpack.encode({"type": "item", "run": "r", "data": {"stage": "AB"}})
    bad = bad.replace(b"\xa2AB", b"\xa2\xff\xfe")
    # An append whose first event fails validation takes the per-event path.
    first_bad = msgspec.msgpack.encode({"type": "metrics", "run": "r", "data": {"values": {"x": "?"}}})
    frame = b"\x82\xa2op\xa6append\xa6events\x93" + first_bad + bad + good
    msg = CODEC.decode(frame)
    assert isinstance(msg, Append)
    assert [r.index for r in msg.rejected] == [0, 1]
    assert msg.rejected[1].message.startswith("event: undecodable")
    assert msg.indexes == [2]


def test_a_logged_value_json_cannot_carry_is_sent_readable_not_as_a_failed_reply() -> None:
    """Values logged before the door checked them (a tuple key, an extension, a 70-bit
    integer) still reach a JSON reader, in a readable form; nothing acked is unreadable."""
    codec = Codec()
    data = {"data": {(1, 2): "v", "x": msgspec.msgpack.Ext(1, b"ab"), 3: 2**70, "f": float("nan")}}
    event = StoredEvent(7, "item", data, 1.0, 1.0, "e-7", "r")
    readable = {"data": {"(1, 2)": "v", "x": "msgpack-ext(1, 6162)", "3": str(2**70), "f": "NaN"}}
    assert json.loads(codec.encode_stored(event, False))["data"] == readable
    assert json.loads(codec.encode(Events(sub=1, events=[event]), False))["events"][0]["data"] == readable
    result = json.loads(codec.encode(Result(seq=7, rows=[{"value": data}], ref=3), False))
    assert result["rows"] == [{"value": readable}] and result["ref"] == 3
