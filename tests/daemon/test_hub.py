"""The hub's pieces that need no socket: filters and the assembled `events` frames."""

from __future__ import annotations

import math

import pytest

from tracklog.daemon.hub import Filter, Hub
from tracklog.protocol.events import MetricsData
from tracklog.protocol.messages import Codec, Events, StoredEvent, SubscribeFilter


def events(n: int, start: int = 1) -> list[StoredEvent]:
    return [
        StoredEvent(seq, "metrics", MetricsData(values={"loss": 1 / seq, "odd": math.nan if seq % 2 else math.inf}, step=seq),
                    100.0 + seq, 50.0 + seq, f"id-{seq}", f"r{seq % 3}")
        for seq in range(start, start + n)
    ]


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("count", [1, 15, 16, 1000, 70_000])
def test_an_assembled_events_frame_equals_encoding_the_whole_message(binary: bool, count: int) -> None:
    codec = Codec()
    hub = Hub(codec)
    batch = events(count)
    assembled = hub.encode_events(7, batch, binary)
    whole = codec.encode(Events(sub=7, events=batch), binary)
    assert assembled == whole


def test_each_event_is_encoded_once_for_many_subscribers() -> None:
    codec = Codec()
    hub = Hub(codec)
    batch = events(10)
    calls = 0
    real = codec.encode_stored

    def counting(e: StoredEvent, binary: bool) -> bytes:
        nonlocal calls
        calls += 1
        return real(e, binary)

    codec.encode_stored = counting  # type: ignore[method-assign]
    for sub in range(100):
        hub.encode_events(sub, batch, True)
    assert calls == 10


def test_a_filter_selects_by_run_type_and_the_pipeline_of_the_run() -> None:
    batch = events(6)
    assert Filter(None).select(batch, {}) is batch
    by_run = Filter(SubscribeFilter(runs=["r1"]))
    assert [e.seq for e in by_run.select(batch, {})] == [1, 4]
    by_type = Filter(SubscribeFilter(types=["item"]))
    assert by_type.select(batch, {}) == []
    by_pipeline = Filter(SubscribeFilter(pipelines=["train"]))
    assert [e.seq for e in by_pipeline.select(batch, {"r2": "train"})] == [2, 5]
