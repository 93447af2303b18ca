"""The Sequencer: a daemon's own commits and the log's other events reach the hub as one
gapless run, each event once, whatever order they arrive in."""

from __future__ import annotations

from tracklog.daemon.follow import Sequencer, contiguous
from tracklog.daemon.hub import Hub
from tracklog.protocol.messages import Codec, StoredEvent


def events(*seqs: int) -> list[StoredEvent]:
    return [StoredEvent(seq, "metrics", {"values": {}, "step": seq}, 0.0, 0.0, None, "r") for seq in seqs]


def sequencer() -> tuple[Sequencer, list[int], list[bool]]:
    hub = Hub(Codec())
    published: list[int] = []
    pokes: list[bool] = []
    original = hub.publish

    def publish(batch: list[StoredEvent]) -> None:
        published.extend(e.seq for e in batch)
        original(batch)

    hub.publish = publish  # type: ignore[method-assign]
    return Sequencer(hub, pokes.append), published, pokes


def test_an_own_commit_after_a_gap_waits_for_the_gap_from_the_log() -> None:
    seq, published, pokes = sequencer()
    seq.from_writer(events(1, 2))
    seq.from_writer(events(5, 6))  # 3 and 4: another daemon's
    assert published == [1, 2] and pokes == [False] and seq.waiting == 2
    seq.from_log(events(3, 4, 5))  # the log read reaches into the own commit
    assert published == [1, 2, 3, 4, 5, 6] and seq.waiting == 0


def test_what_was_published_is_dropped_from_either_side() -> None:
    seq, published, _ = sequencer()
    seq.from_log(events(1, 2, 3))
    seq.from_writer(events(2, 3, 4))  # read back from the log before the writer's callback
    seq.from_log(events(1, 2, 3, 4))
    assert published == [1, 2, 3, 4]


def test_a_log_batch_past_a_gap_asks_for_a_read_from_the_hubs_position() -> None:
    seq, published, pokes = sequencer()
    seq.from_log(events(3, 4))
    assert published == [] and pokes == [True]


def test_a_group_retried_request_by_request_is_cut_where_its_seqs_jump() -> None:
    assert [[e.seq for e in c] for c in contiguous(events(1, 2, 4, 5, 7))] == [[1, 2], [4, 5], [7]]
    seq, published, _ = sequencer()
    seq.from_writer(events(1, 2, 4, 5))
    assert published == [1, 2] and seq.waiting == 2
    seq.from_log(events(3))
    assert published == [1, 2, 3, 4, 5]
