"""project(event) -> row changes, for every event type, without a database."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from tracklog.daemon import projections as p
from tracklog.daemon.projections import LoggedEvent, project
from tracklog.protocol import events as ev

SEQ = 17
TS = 1_000.5
RECORDED = 2_000.25


def logged(
    type_: str,
    data: ev.Data,
    run: str | None = "r-1",
    seq: int = SEQ,
    ts: float = TS,
    recorded: float = RECORDED,
    id_: str | None = None,
) -> LoggedEvent:
    return LoggedEvent(seq, type_, run, ts, recorded, data, id_)


def touch(run: str = "r-1") -> p.TouchRun:
    return p.TouchRun(run, SEQ, TS)


# -- runs -----------------------------------------------------------------------------------


def test_run_started_sets_every_given_field_and_the_started_time_from_the_event_ts() -> None:
    data = ev.RunStartedData(
        name="n", pipeline="pipe", notes="why", parent="r-0", user="u", host="h", session="s"
    )
    assert project(logged("run.started", data)) == [
        touch(),
        p.SetRunFields(
            "r-1",
            {
                "name": "n",
                "pipeline": "pipe",
                "notes": "why",
                "parent": "r-0",
                "user": "u",
                "host": "h",
                "session": "s",
                "started": TS,
            },
        ),
    ]


def test_run_started_without_fields_sets_only_the_started_time() -> None:
    assert project(logged("run.started", ev.RunStartedData())) == [
        touch(),
        p.SetRunFields("r-1", {"started": TS}),
    ]


def test_run_started_merges_its_config_and_adds_its_tags() -> None:
    data = ev.RunStartedData(config={"lr": 0.1, "layers": [1, 2]}, tags=["a", "b"])
    assert project(logged("run.started", data)) == [
        touch(),
        p.SetRunFields("r-1", {"started": TS}),
        p.MergeConfig("r-1", {"lr": 0.1, "layers": [1, 2]}),
        p.ChangeTags("r-1", ["a", "b"], []),
    ]


def test_run_started_with_empty_config_and_tags_changes_neither() -> None:
    changes = project(logged("run.started", ev.RunStartedData(config={}, tags=[])))
    assert not any(isinstance(c, (p.MergeConfig, p.ChangeTags)) for c in changes)


def test_run_updated_sets_name_and_notes_merges_config_and_changes_tags() -> None:
    data = ev.RunUpdatedData(name="m", notes="later", config={"bs": 8}, add_tags=["x"], remove_tags=["a"])
    assert project(logged("run.updated", data)) == [
        touch(),
        p.SetRunFields("r-1", {"name": "m", "notes": "later"}),
        p.MergeConfig("r-1", {"bs": 8}),
        p.ChangeTags("r-1", ["x"], ["a"]),
    ]


def test_run_updated_never_sets_the_started_time() -> None:
    changes = project(logged("run.updated", ev.RunUpdatedData(name="m")))
    assert changes == [touch(), p.SetRunFields("r-1", {"name": "m"})]


def test_run_updated_that_only_removes_tags_adds_none() -> None:
    assert project(logged("run.updated", ev.RunUpdatedData(remove_tags=["a"]))) == [
        touch(),
        p.ChangeTags("r-1", [], ["a"]),
    ]


def test_run_updated_with_nothing_in_it_only_touches_the_run() -> None:
    assert project(logged("run.updated", ev.RunUpdatedData())) == [touch()]


def test_run_updated_with_status_running_resumes_the_run() -> None:
    assert project(logged("run.updated", ev.RunUpdatedData(status="running"))) == [
        touch(),
        p.ResumeRun("r-1"),
    ]


@pytest.mark.parametrize("status", ["completed", "failed", "killed", "lost"])
def test_run_finished_sets_status_error_and_the_finished_time_from_the_event_ts(status: str) -> None:
    error = "boom" if status == "failed" else None
    assert project(logged("run.finished", ev.RunFinishedData(status=status, error=error))) == [  # type: ignore[arg-type]
        touch(),
        p.FinishRun("r-1", status, error, TS),
    ]


def test_run_deleted_only_marks_the_run_deleted() -> None:
    # No TouchRun: deleting is not activity (last_ts, counts stay) and makes no new run.
    assert project(logged("run.deleted", ev.EmptyData())) == [p.SetRunFields("r-1", {"deleted": 1})]


def test_run_restored_only_clears_the_deleted_mark() -> None:
    assert project(logged("run.restored", ev.EmptyData())) == [p.SetRunFields("r-1", {"deleted": 0})]


# -- metrics, items, artifacts ------------------------------------------------------------------


def test_metrics_add_points_with_step_epoch_and_the_event_ts() -> None:
    data = ev.MetricsData(values={"loss": 0.42, "acc": 0.91}, step=100, epoch=1)
    assert project(logged("metrics", data)) == [
        touch(),
        p.AddPoints("r-1", TS, {"loss": 0.42, "acc": 0.91}, 100, 1),
    ]


def test_metrics_without_step_or_epoch_leave_them_to_the_tables() -> None:
    nan = float("nan")
    changes = project(logged("metrics", ev.MetricsData(values={"loss": nan})))
    assert changes[0] == touch()
    add = changes[1]
    assert isinstance(add, p.AddPoints)
    assert (add.step, add.epoch, add.run, add.ts) == (None, None, "r-1", TS)
    assert add.values["loss"] != add.values["loss"]  # NaN passes through untouched


def test_item_adds_an_item_row_keyed_by_seq() -> None:
    data = ev.ItemData(
        item="i-1",
        kind="translation_result",
        stage="s",
        iteration=3,
        status="failed",
        data={"x": 1},
        error="e",
    )
    assert project(logged("item", data)) == [touch(), p.AddItem(SEQ, "r-1", TS, data)]


def test_artifact_adds_an_artifact_row_keyed_by_seq() -> None:
    data = ev.ArtifactData(kind="checkpoint", path="/ckpt/1", size=10, digest="d", metadata={"a": 1})
    assert project(logged("artifact", data)) == [touch(), p.AddArtifact(SEQ, "r-1", TS, data)]


# -- cache and dedup --------------------------------------------------------------------------


def test_cache_put_expires_ttl_seconds_after_the_daemon_recorded_it_not_after_the_client_ts() -> None:
    changes = project(logged("cache.put", ev.CachePutData(key="k", value={"v": [1, 2]}, ttl=30.0), run=None))
    assert changes == [p.PutCache("k", msgspec.msgpack.encode({"v": [1, 2]}), RECORDED + 30.0, SEQ)]


def test_cache_put_without_ttl_never_expires() -> None:
    changes = project(logged("cache.put", ev.CachePutData(key="k", value="v"), run=None))
    assert changes == [p.PutCache("k", msgspec.msgpack.encode("v"), None, SEQ)]


def test_cache_put_value_is_stored_as_msgpack_that_decodes_back() -> None:
    value = {"nested": [1, 2.5, None, "s", {"t": True}]}
    (change,) = project(logged("cache.put", ev.CachePutData(key="k", value=value), run=None))
    assert isinstance(change, p.PutCache)
    assert msgspec.msgpack.decode(change.value) == value


def test_cache_invalidated_with_a_key_drops_that_key() -> None:
    assert project(logged("cache.invalidated", ev.CacheInvalidatedData(key="k"), run=None)) == [
        p.DropCache("k")
    ]


def test_cache_invalidated_without_a_key_drops_every_key() -> None:
    assert project(logged("cache.invalidated", ev.CacheInvalidatedData(), run=None)) == [p.DropCache(None)]


def test_dedup_recorded_adds_an_entry_for_its_run() -> None:
    data = ev.DedupRecordedData(namespace="ns", kind="simhash", value=123, item="i-1")
    assert project(logged("dedup.recorded", data)) == [touch(), p.AddDedupEntry(SEQ, "r-1", data)]


def test_dedup_recorded_without_a_run_adds_an_entry_and_touches_no_run() -> None:
    data = ev.DedupRecordedData(namespace="ns", kind="embedding", value=[0.1, 0.2], space="clip")
    assert project(logged("dedup.recorded", data, run=None)) == [p.AddDedupEntry(SEQ, None, data)]


def test_dedup_cleared_with_a_kind_clears_that_kind_of_the_namespace() -> None:
    data = ev.DedupClearedData(namespace="ns", kind="hash")
    assert project(logged("dedup.cleared", data, run=None)) == [p.ClearDedup("ns", "hash")]


def test_dedup_cleared_without_a_kind_clears_the_whole_namespace() -> None:
    assert project(logged("dedup.cleared", ev.DedupClearedData(namespace="ns"), run=None)) == [
        p.ClearDedup("ns", None)
    ]


# -- every type ---------------------------------------------------------------------------

SAMPLE_DATA: dict[str, ev.Data] = {
    "run.started": ev.RunStartedData(name="n", config={"a": 1}, tags=["t"]),
    "run.updated": ev.RunUpdatedData(name="m", add_tags=["x"], status="running"),
    "run.finished": ev.RunFinishedData(status="completed"),
    "run.deleted": ev.EmptyData(),
    "run.restored": ev.EmptyData(),
    "metrics": ev.MetricsData(values={"loss": 1.0}, step=1),
    "item": ev.ItemData(item="i"),
    "artifact": ev.ArtifactData(kind="plot", path="p.png"),
    "cache.put": ev.CachePutData(key="k", value=1, ttl=1.0),
    "cache.invalidated": ev.CacheInvalidatedData(key="k"),
    "dedup.recorded": ev.DedupRecordedData(namespace="ns", kind="hash", value="v"),
    "dedup.cleared": ev.DedupClearedData(namespace="ns"),
    "experiment": ev.ExperimentData(experiment="1", name="base", tags={"a": "b"}),
}
#: Events that only mark a run deleted or not: they touch no counter, make no run.
MARKS = {"run.deleted", "run.restored"}
RUN_SCOPED = sorted(set(ev.EVENT_TYPES) - ev.GLOBAL_TYPES - MARKS)


def test_samples_cover_every_event_type() -> None:
    assert set(SAMPLE_DATA) == set(ev.EVENT_TYPES) == set(ev.DATA_CLASSES)
    assert all(type(SAMPLE_DATA[t]) is ev.DATA_CLASSES[t] for t in SAMPLE_DATA)


@pytest.mark.parametrize("type_", RUN_SCOPED)
def test_every_run_scoped_event_touches_its_run_first_and_only_once(type_: str) -> None:
    changes = project(logged(type_, SAMPLE_DATA[type_], run="r-9", seq=5, ts=7.0))
    assert changes[0] == p.TouchRun("r-9", 5, 7.0)
    assert sum(isinstance(c, p.TouchRun) for c in changes) == 1
    assert len(changes) >= 2
    assert all(getattr(c, "run", "r-9") == "r-9" for c in changes)


@pytest.mark.parametrize("type_", sorted(ev.GLOBAL_TYPES))
def test_global_events_touch_no_run(type_: str) -> None:
    changes = project(logged(type_, SAMPLE_DATA[type_], run=None))
    assert changes
    assert not any(isinstance(c, p.TouchRun) for c in changes)


@pytest.mark.parametrize("type_", sorted(ev.EVENT_TYPES))
def test_project_is_pure_giving_equal_changes_twice_and_leaving_the_event_as_it_was(type_: str) -> None:
    event = logged(type_, SAMPLE_DATA[type_], run=None if type_ in ev.GLOBAL_TYPES else "r-1")
    before = msgspec.to_builtins(event)
    first = project(event)
    second = project(event)
    assert first == second
    assert msgspec.to_builtins(event) == before


@pytest.mark.parametrize("type_", sorted(ev.EVENT_TYPES))
def test_project_gives_the_same_changes_for_an_event_read_back_from_its_stored_bytes(type_: str) -> None:
    # What replay sees: data decoded from the msgpack the log holds.
    data = SAMPLE_DATA[type_]
    decoded: Any = msgspec.msgpack.decode(msgspec.msgpack.encode(data), type=type(data))
    run = None if type_ in ev.GLOBAL_TYPES else "r-1"
    assert project(logged(type_, decoded, run=run)) == project(logged(type_, data, run=run))


def test_project_refuses_data_it_has_no_projection_for() -> None:
    class Strange(ev.Data):
        pass

    with pytest.raises(TypeError, match="Strange"):
        project(logged("strange", Strange(), run=None))
