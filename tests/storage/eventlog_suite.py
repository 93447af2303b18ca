"""One behaviour for every EventLog: each backend's test module subclasses
`EventLogContract` and says how to open an empty log.

Gapless seqs, ids acked once with their original seq, rejected events left out, range
reads with filters, head and applied position, a rebuild equal to the live projections,
lost runs resumed in the same transaction, near-duplicate checks, and a failing request
that leaves nothing of itself behind while the rest of its group commits.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tracklog.daemon import liveness
from tracklog.daemon.storage.eventlog import AppendResult, CheckResult, EventLog
from tracklog.protocol import errors
from tracklog.protocol import events as ev
from tracklog.protocol.messages import Append, Check, Codec, Duplicate, StoredEvent

#: The log's clock in these tests: fixed, so `recorded` never depends on timing.
NOW = 1_000_000_000.0
CODEC = Codec()


def metrics(run: str, step: int, id_: str | None = None) -> ev.Event:
    return ev.Metrics(id=id_, run=run, data=ev.MetricsData(values={"loss": 1.0 / (step + 1)}, step=step))


def decoded(events: list[dict[str, Any]], ref: int | None = None) -> Append:
    """Client-form events checked by the codec, as the server hands them over."""
    msg = CODEC.decode(json.dumps({"op": "append", "ref": ref, "events": events}))
    assert isinstance(msg, Append)
    return msg


def ack_of(result: object) -> Any:
    assert isinstance(result, AppendResult), result
    return result.ack


class EventLogContract:
    """The tests every backend passes; subclasses define `open_log`."""

    def open_log(self, tmp_path: Any) -> EventLog:
        raise NotImplementedError

    @pytest.fixture
    def log(self, tmp_path: Any) -> Iterator[EventLog]:
        opened = self.open_log(tmp_path)
        opened.catch_up()
        try:
            yield opened
        finally:
            opened.close()

    def test_new_log_is_empty_with_head_and_applied_at_zero(self, log: EventLog) -> None:
        assert (log.head, log.applied_seq) == (0, 0)
        assert log.read() == []

    def test_seqs_start_at_one_and_stay_gapless_across_appends(self, log: EventLog) -> None:
        for size in (1, 3, 7):
            log.append_events([metrics("r", i) for i in range(size)])
        assert [e.seq for e in log.read()] == list(range(1, 12))
        assert (log.head, log.applied_seq) == (11, 11)

    def test_an_id_sent_again_is_a_duplicate_naming_the_original_seq_and_takes_no_seq(
        self, log: EventLog
    ) -> None:
        log.append_events([metrics("r", 0), metrics("r", 1, "a")])
        ack = log.append_events([metrics("r", 1, "a"), metrics("r", 2, "b")])
        assert ack.duplicates == [Duplicate(0, 2)]
        assert (ack.first_seq, ack.last_seq) == (3, 3)
        assert [e.id for e in log.read()] == [None, "a", "b"]

    def test_an_id_twice_in_one_append_is_logged_once(self, log: EventLog) -> None:
        ack = log.append_events([metrics("r", 0, "x"), metrics("r", 1, "x")])
        assert ack.accepted == 1 and ack.duplicates == [Duplicate(1, 1)]
        assert log.head == 1

    def test_rejected_events_are_acked_as_rejected_and_take_no_seq(self, log: EventLog) -> None:
        good = {"type": "metrics", "run": "r", "data": {"values": {"a": 1}}}
        bad = {"type": "metrics", "run": "r", "data": {"values": {"a": "text"}}}
        (result,) = log.append_group([decoded([good, bad, good], ref=4)])
        ack = ack_of(result)
        assert (ack.accepted, ack.first_seq, ack.last_seq, ack.ref) == (2, 1, 2, 4)
        assert [r.index for r in ack.rejected] == [1]
        (only_bad,) = log.append_group([decoded([bad])])
        assert ack_of(only_bad).accepted == 0 and log.head == 2

    def test_a_range_read_filters_by_position_run_and_type(self, log: EventLog) -> None:
        log.append_events(
            [
                ev.RunStarted(run="a", data=ev.RunStartedData(name="first")),
                metrics("a", 0),
                metrics("b", 0),
                metrics("a", 1),
                ev.RunFinished(run="a", data=ev.RunFinishedData(status="completed")),
            ]
        )
        assert [e.seq for e in log.read(after=2)] == [3, 4, 5]
        assert [e.seq for e in log.read(after=1, to_seq=3)] == [2, 3]
        assert [e.seq for e in log.read(run="a")] == [1, 2, 4, 5]
        assert [e.seq for e in log.read(types=["metrics"], run="a")] == [2, 4]
        assert [e.seq for e in log.read(limit=2)] == [1, 2]
        first = log.read(limit=1)[0]
        assert (first.type, first.run, first.recorded, first.ts) == ("run.started", "a", NOW, NOW)
        assert first.data["name"] == "first"

    def test_a_group_gives_each_request_consecutive_seqs_in_order_and_publishes_them(
        self, log: EventLog
    ) -> None:
        group = [Append(events=[metrics("r", i) for i in range(n)], ref=n) for n in (2, 3, 1)]
        results = log.append_group(group, publish=True)
        acks = [ack_of(r) for r in results]
        assert [(a.ref, a.first_seq, a.last_seq) for a in acks] == [(2, 1, 2), (3, 3, 5), (1, 6, 6)]
        assert [[e.seq for e in r.events] for r in results if isinstance(r, AppendResult)] == [
            [1, 2],
            [3, 4, 5],
            [6],
        ]

    def test_a_rebuild_equals_the_live_projections(self, log: EventLog) -> None:
        log.append_events([ev.RunStarted(run="a", data=ev.RunStartedData(name="n", tags=["x"]))])
        log.append_events([metrics("a", i, f"m{i}") for i in range(20)])
        log.append_events([ev.RunUpdated(run="a", data=ev.RunUpdatedData(notes="hi", add_tags=["y"]))])
        log.append_events([ev.RunFinished(run="a", data=ev.RunFinishedData(status="failed"))])
        out = io.StringIO()
        assert log.verify(out) == 0, out.getvalue()
        assert log.rebuild() == log.head == 23
        assert log.applied_seq == 23
        assert log.verify(io.StringIO()) == 0

    def test_a_lost_run_that_gets_events_again_is_resumed_just_before_them(self, log: EventLog) -> None:
        log.append_events([metrics("r", 0), liveness.lost_event("r")])
        (result,) = log.append_group([Append(events=[metrics("r", 1)])], publish=True)
        assert [(e.seq, e.type) for e in result.events] == [(3, "run.updated"), (4, "metrics")]
        log.append_events([ev.RunDeleted(run="r")])
        assert [e.type for e in log.read(after=4)] == ["run.deleted"]

    def test_a_run_marked_lost_in_a_group_is_resumed_by_a_later_append_of_that_group(
        self, log: EventLog
    ) -> None:
        log.append_events([metrics("r", 0), metrics("s", 0), liveness.lost_event("s")])
        group = [
            Append(events=[metrics("s", 1)], ref=1),
            Append(events=[liveness.lost_event("r")], ref=2),
            Append(events=[metrics("r", 1), metrics("s", 2)], ref=3),
        ]
        log.append_group(group)
        assert [(e.type, e.run) for e in log.read(after=3)] == [
            ("run.updated", "s"),
            ("metrics", "s"),
            ("run.finished", "r"),
            ("run.updated", "r"),
            ("metrics", "r"),
            ("metrics", "s"),
        ]

    def test_a_check_records_a_new_text_and_finds_it_the_second_time(self, log: EventLog) -> None:
        check = Check(namespace="docs", kind="hash", text="hello", run="r", item="i1", ref=1)
        first, second = log.append_group([check, Check(namespace="docs", kind="hash", text="hello", ref=2)])
        assert isinstance(first, CheckResult) and isinstance(second, CheckResult)
        assert not first.checked.duplicate and first.checked.recorded == 1
        assert second.checked.duplicate and second.checked.match is not None
        assert second.checked.match.seq == 1 and second.checked.match.item == "i1"
        assert [e.type for e in log.read()] == ["dedup.recorded"]

    def test_a_failing_request_leaves_nothing_behind_and_the_rest_of_its_group_commits(
        self, log: EventLog, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        real = liveness.resumable_runs

        def poisoned(events: Any) -> set[str]:
            runs = real(events)
            if "poison" in runs:
                raise RuntimeError("a request that cannot be committed")
            return runs

        monkeypatch.setattr(liveness, "resumable_runs", poisoned)
        log.append_events([metrics("r", 0, "before")])
        group = [
            Append(events=[metrics("r", 1, "one")], ref=1),
            Append(events=[metrics("r", 2, "x"), metrics("poison", 0, "y")], ref=2),
            Append(events=[metrics("r", 3, "three")], ref=3),
        ]
        first, bad, last = log.append_group(group)
        assert isinstance(bad, errors.InternalError) and bad.ref == 2
        assert (ack_of(first).first_seq, ack_of(last).first_seq) == (2, 3)
        assert [e.id for e in log.read()] == ["before", "one", "three"]
        (alone,) = log.append_group([group[1]])
        assert isinstance(alone, errors.InternalError)
        assert (log.head, log.applied_seq) == (3, 3)
        # Its ids were not remembered: once it can be committed, it is.
        monkeypatch.setattr(liveness, "resumable_runs", real)
        assert ack_of(log.append_group([group[1]])[0]).accepted == 2

    # -- stored events: imports, migrations, purges ---------------------------------

    def test_stored_events_are_appended_as_they_are_with_their_seqs_and_projected(
        self, log: EventLog
    ) -> None:
        stored = [
            StoredEvent(3, "run.started", {"name": "n", "tags": ["t"]}, 5.0, 4.0, "s-1", "a"),
            StoredEvent(4, "metrics", {"values": {"loss": 0.5}, "step": 1}, 6.0, 4.5, None, "a"),
            StoredEvent(9, "run.finished", {"status": "completed"}, 7.0, 6.5, "s-2", "a"),
        ]
        assert log.append_stored(stored) == 3
        assert (log.head, log.applied_seq) == (9, 9)
        assert log.read() == stored
        assert [e.seq for e in log.read(after=3, to_seq=8)] == [4]
        assert log.verify(io.StringIO()) == 0
        # The next append follows the head; an id sent again names its stored seq.
        ack = log.append_events([metrics("a", 2, "s-1"), metrics("a", 3)])
        assert (ack.first_seq, ack.duplicates) == (10, [Duplicate(0, 3)])

    def test_a_stored_event_at_or_below_the_head_or_with_a_known_id_is_refused_whole(
        self, log: EventLog
    ) -> None:
        log.append_events([metrics("r", 0, "x")])
        with pytest.raises(errors.StorageError, match="seq 1:"):
            log.append_stored([StoredEvent(1, "metrics", {"values": {"a": 1.0}}, 1.0, 1.0, None, "r")])
        with pytest.raises(errors.StorageError, match="seq 3: id 'x' is in the log already"):
            log.append_stored(
                [
                    StoredEvent(2, "metrics", {"values": {"a": 1.0}}, 1.0, 1.0, "y", "r"),
                    StoredEvent(3, "metrics", {"values": {"a": 2.0}}, 1.0, 1.0, "x", "r"),
                ]
            )
        with pytest.raises(errors.StorageError, match="seq 2: unknown event type 'nope'"):
            log.append_stored([StoredEvent(2, "nope", {}, 1.0, 1.0, None, None)])
        with pytest.raises(errors.StorageError, match="seq 2: metrics data"):
            log.append_stored([StoredEvent(2, "metrics", {"values": "many"}, 1.0, 1.0, None, "r")])
        assert log.head == 1 and [e.id for e in log.read()] == ["x"]
        assert log.verify(io.StringIO()) == 0

    def test_an_advanced_head_is_where_the_next_append_goes_on(self, log: EventLog) -> None:
        log.append_events([metrics("r", 0)])
        log.advance_head(7)
        log.advance_head(3)  # never backwards
        assert (log.head, log.applied_seq) == (7, 7)
        assert log.verify(io.StringIO()) == 0
        assert log.append_events([metrics("r", 1)]).first_seq == 8
        assert [e.seq for e in log.read()] == [1, 8]

    def test_a_stream_reads_a_range_in_batches(self, log: EventLog) -> None:
        log.append_events([metrics("a" if i % 2 else "b", i) for i in range(25)])
        assert [e.seq for e in log.stream(after=3, to_seq=20, batch=4)] == list(range(4, 21))
        assert [e.seq for e in log.stream(run="a", batch=3)] == list(range(2, 26, 2))
