"""The ingest core and the liveness policy, called as pure functions: no database."""

from __future__ import annotations

from tracklog.daemon import liveness
from tracklog.daemon.ingest import (
    AppendRequest,
    CheckRequest,
    RawAppendRequest,
    plan_append,
    plan_fresh,
    weight,
)
from tracklog.protocol import events as ev
from tracklog.protocol.messages import Append, Check, Duplicate

NOW = 1_000.0


def metrics(id_: str | None, run: str = "r") -> ev.Event:
    return ev.Metrics(id=id_, run=run, data=ev.MetricsData(values={"a": 1.0}))


def test_fresh_plan_gives_every_event_the_next_seq_and_acks_the_range() -> None:
    plan = plan_fresh(Append(events=[metrics("a"), metrics("b")], ref=7), 5, NOW, publish=False)
    assert [row[0] for row in plan.rows] == [5, 6]
    assert (plan.ack.accepted, plan.ack.first_seq, plan.ack.last_seq, plan.ack.ref) == (2, 5, 6, 7)
    assert plan.events == []


def test_known_ids_and_ids_repeated_in_the_append_are_duplicates_naming_the_original_seq() -> None:
    append = Append(events=[metrics("old"), metrics("new"), metrics("new"), metrics(None)])
    plan = plan_append(append, 10, NOW, {"old": 3}, publish=True)
    assert [(row[0], row[1]) for row in plan.rows] == [(10, "new"), (11, None)]
    assert plan.ack.duplicates == [Duplicate(0, 3), Duplicate(2, 10)]
    assert (plan.ack.first_seq, plan.ack.last_seq) == (10, 11)
    assert [e.seq for e in plan.events] == [10, 11]


def test_an_append_of_only_known_ids_takes_no_seq() -> None:
    plan = plan_append(Append(events=[metrics("x")]), 4, NOW, {"x": 1}, publish=False)
    assert plan.rows == [] and plan.ack.first_seq is None and plan.ack.accepted == 0


def test_the_daemons_time_stands_in_for_a_missing_ts() -> None:
    plan = plan_fresh(Append(events=[metrics("a")]), 1, NOW, publish=False)
    assert plan.rows[0][4] == NOW and plan.rows[0][5] == NOW


def test_weight_counts_events_inputs_and_frame_bytes() -> None:
    assert weight(AppendRequest(Append(events=[metrics("a")] * 3))) == 3
    assert weight(CheckRequest(Check(namespace="n", kind="hash", text="t"))) == 1
    assert weight(RawAppendRequest(b"x" * 800)) == 11


def test_deleting_or_restoring_a_run_does_not_resume_it() -> None:
    events = [ev.RunDeleted(run="gone"), metrics("m", run="back")]
    assert liveness.resumable_runs(events) == {"back"}
    (resume,) = liveness.resume_events(["back"])
    assert isinstance(resume, ev.RunUpdated) and resume.data.status == "running"


def test_a_runs_status_follows_finish_and_resume() -> None:
    status = liveness.status_after(None, "metrics", None)
    assert status == "running"
    status = liveness.status_after(status, "run.finished", ev.RunFinishedData(status="lost"))
    assert status == "lost"
    assert liveness.status_after(status, "metrics", None) == "lost"
    assert liveness.status_after(status, "run.updated", {"status": "running"}) == "running"
