"""Behaviours every ReadModel has, whatever its backend.

A backend's test module subclasses `ReadModelSuite` and says how to build a store holding
some events (`build`); every test here then runs against it. The events go in as the
wire has them (JSON objects), so a backend is held to what the protocol promises, not to
how SQLite happens to store it. The SQLite suite is tests/storage/test_readmodel_sqlite.py;
the in-memory and PostgreSQL backends subclass this one the same way.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import pytest

from tracklog.daemon.queries import answer
from tracklog.daemon.storage.readmodel import ReadModel
from tracklog.protocol import errors
from tracklog.protocol.messages import Query

#: The daemon's clock while the events are appended (cache expiry counts from it).
RECORDED = 1_000_000_000.0


def run_started(run: str, name: str, **data: Any) -> dict[str, Any]:
    return {"type": "run.started", "run": run, "ts": 1.0, "data": {"name": name, **data}}


def metrics(run: str, step: int, **values: float) -> dict[str, Any]:
    return {"type": "metrics", "run": run, "ts": float(step), "data": {"step": step, "values": values}}


def item(run: str, name: str, **data: Any) -> dict[str, Any]:
    return {"type": "item", "run": run, "ts": 2.0, "data": {"item": name, **data}}


#: Three runs: two finished with a loss each, one still running and then deleted.
EVENTS: list[dict[str, Any]] = [
    run_started(
        "aaa111",
        "alpha",
        pipeline="train",
        tags=["base", "gpu"],
        config={"lr": 0.1},
        notes="a fox by a river",
    ),
    run_started("aab222", "beta", pipeline="train", tags=["gpu"], config={"lr": 0.01}),
    run_started("ccc333", "gamma", pipeline="eval"),
    *(metrics("aaa111", step, loss=1.0 / (step + 1), acc=step / 10) for step in range(10)),
    *(metrics("aab222", step, loss=0.5 + step / 100) for step in range(5)),
    item("aaa111", "doc-1", stage="fetch", kind="doc", duration=0.5),
    item("aaa111", "doc-2", stage="fetch", kind="doc", status="failed", error="timeout", duration=1.5),
    item("aaa111", "doc-3", stage="translate", kind="doc", data={"words": 3}),
    item("aab222", "doc-4", stage="fetch", kind="doc", status="skipped"),
    {"type": "artifact", "run": "aaa111", "ts": 3.0, "data": {"kind": "model", "path": "m.pt", "size": 10}},
    {"type": "artifact", "run": "aaa111", "ts": 4.0, "data": {"kind": "log", "path": "out.txt"}},
    {"type": "run.finished", "run": "aaa111", "ts": 5.0, "data": {"status": "completed"}},
    {"type": "run.finished", "run": "aab222", "ts": 5.0, "data": {"status": "failed", "error": "oom"}},
    {"type": "cache.put", "ts": 6.0, "data": {"key": "short", "value": [1, 2], "ttl": 10}},
    {"type": "cache.put", "ts": 6.0, "data": {"key": "forever", "value": {"a": 1}}},
    {"type": "run.deleted", "run": "ccc333", "ts": 7.0},
]


class ReadModelSuite(ABC):
    """The behaviours; `build` is the backend's."""

    @abstractmethod
    def build(self, events: list[dict[str, Any]]) -> ReadModel:
        """A read model on a fresh store holding `events`, appended in order, recorded at RECORDED."""

    @pytest.fixture
    def model(self) -> Iterator[ReadModel]:
        model = self.build(EVENTS)
        try:
            yield model
        finally:
            model.close()

    def ask(self, model: ReadModel, q: str, **fields: Any) -> list[Any]:
        """The rows of a query answered as the daemon answers it (fields checked, one snapshot)."""
        return list(answer(model, Query(q=q, **fields), clock=lambda: RECORDED).rows)

    # -- consistency ----------------------------------------------------------------------

    def test_applied_seq_is_the_seq_of_the_last_event(self, model: ReadModel) -> None:
        with model.snapshot():
            assert model.applied_seq() == len(EVENTS)
        assert answer(model, Query(q="runs")).seq == len(EVENTS)

    def test_an_empty_store_has_applied_nothing_and_has_no_runs(self) -> None:
        model = self.build([])
        try:
            with model.snapshot():
                assert model.applied_seq() == 0
            assert self.ask(model, "runs") == []
        finally:
            model.close()

    # -- runs -------------------------------------------------------------------------------

    def test_runs_leave_deleted_runs_out_unless_asked(self, model: ReadModel) -> None:
        assert [r["id"] for r in self.ask(model, "runs")] == ["aaa111", "aab222"]
        assert [r["id"] for r in self.ask(model, "runs", deleted=True)] == ["aaa111", "aab222", "ccc333"]

    def test_runs_filter_orders_and_counts_the_total(self, model: ReadModel) -> None:
        result = answer(
            model, Query(q="runs", filter="pipeline = 'train'", order_by=["metrics.loss asc"], limit=1)
        )
        assert [r["id"] for r in result.rows] == ["aaa111"] and result.total == 2
        (row,) = self.ask(model, "runs", filter="tags.base and config.lr > 0.05")
        assert row["name"] == "alpha" and row["tags"] == ["base", "gpu"] and row["config"] == {"lr": 0.1}
        assert row["metrics"] == {"acc": 0.9, "loss": 0.1}

    def test_a_bad_filter_is_bad_query(self, model: ReadModel) -> None:
        with pytest.raises(errors.BadQuery):
            self.ask(model, "runs", filter="status = ")

    def test_run_has_its_summary_tags_metric_summaries_and_artifacts(self, model: ReadModel) -> None:
        (run,) = self.ask(model, "run", run="alpha")
        assert run["id"] == "aaa111" and run["status"] == "completed" and run["pipeline"] == "train"
        assert run["tags"] == ["base", "gpu"] and not run["deleted"]
        loss = run["metrics"]["loss"]
        assert loss["count"] == 10 and loss["min"] == 0.1 and loss["min_step"] == 9
        assert loss["max"] == 1.0 and loss["max_step"] == 0 and loss["last"] == 0.1 and loss["last_ts"] == 9.0
        assert [(a["kind"], a["path"], a["size"]) for a in run["artifacts"]] == [
            ("model", "m.pt", 10),
            ("log", "out.txt", None),
        ]

    def test_resolve_takes_an_id_a_name_or_a_unique_prefix(self, model: ReadModel) -> None:
        assert [self.ask(model, "resolve", run=ref)[0]["by"] for ref in ("aab222", "beta", "aab")] == [
            "id",
            "name",
            "prefix",
        ]
        with pytest.raises(errors.BadQuery, match="ambiguous"):
            self.ask(model, "resolve", run="aa")
        with pytest.raises(errors.NotFound):
            self.ask(model, "resolve", run="zzz")

    def test_best_is_the_run_with_the_extreme_value(self, model: ReadModel) -> None:
        (low,) = self.ask(model, "best", metric="loss", mode="min")
        (high,) = self.ask(model, "best", metric="loss", mode="max")
        assert (low["run"], low["value"], low["step"]) == ("aaa111", 0.1, 9)
        assert (high["run"], high["value"]) == ("aaa111", 1.0)
        assert self.ask(model, "best", metric="nothing") == []

    # -- metrics ----------------------------------------------------------------------------

    def test_metrics_are_columns_with_the_whole_series_summary(self, model: ReadModel) -> None:
        (row,) = self.ask(model, "metrics", run="aaa111", names=["loss"])
        assert row["steps"] == list(range(10)) and row["points"] == 10 and not row["downsampled"]
        assert row["values"] == [1.0 / (s + 1) for s in range(10)] and row["epochs"] == [None] * 10
        assert row["summary"]["count"] == 10 and math.isclose(row["summary"]["mean"], sum(row["values"]) / 10)

    def test_metrics_downsampled_keep_the_first_and_the_last_point(self, model: ReadModel) -> None:
        (row,) = self.ask(model, "metrics", run="aaa111", names=["loss"], max_points=4)
        assert row["downsampled"] and len(row["steps"]) <= 4
        assert row["steps"][0] == 0 and row["steps"][-1] == 9 and row["summary"]["last"] == 0.1

    def test_metrics_in_a_step_range(self, model: ReadModel) -> None:
        (row,) = self.ask(model, "metrics", run="aaa111", names=["acc"], step_from=3, step_to=5)
        assert row["steps"] == [3, 4, 5]

    def test_a_metric_the_run_never_logged_is_not_found(self, model: ReadModel) -> None:
        with pytest.raises(errors.NotFound):
            self.ask(model, "metrics", run="aab222", names=["acc"])

    def test_compare_gives_a_summary_per_run_and_metric(self, model: ReadModel) -> None:
        rows = self.ask(model, "compare", runs=["alpha", "beta"], metrics=["loss"])
        assert [(r["run"], r["run_name"], r["metric"], r["min"]) for r in rows] == [
            ("aaa111", "alpha", "loss", 0.1),
            ("aab222", "beta", "loss", 0.5),
        ]

    # -- items and artifacts ----------------------------------------------------------------

    def test_items_by_stage_and_status_with_the_total(self, model: ReadModel) -> None:
        result = answer(model, Query(q="items", stage="fetch", limit=1))
        assert [i["item"] for i in result.rows] == ["doc-1"] and result.total == 3
        (failed,) = self.ask(model, "items", run="alpha", status="failed")
        assert failed["item"] == "doc-2" and failed["error"] == "timeout" and failed["duration"] == 1.5
        (translated,) = self.ask(model, "items", stage="translate")
        assert translated["data"] == {"words": 3}

    def test_artifacts_of_a_run_oldest_first(self, model: ReadModel) -> None:
        rows = self.ask(model, "artifacts", run="alpha")
        assert [(a["run"], a["kind"]) for a in rows] == [("aaa111", "model"), ("aaa111", "log")]
        assert self.ask(model, "artifacts", run="beta") == []

    # -- search, stats, cache, events ---------------------------------------------------------

    def test_search_finds_a_run_by_a_word_of_its_notes(self, model: ReadModel) -> None:
        rows = self.ask(model, "search", text="fox")
        assert [(r["kind"], r["run"]) for r in rows] == [("run", "aaa111")]
        assert self.ask(model, "search", text="nothing-like-this") == []

    def test_stats_count_runs_items_and_artifacts(self, model: ReadModel) -> None:
        (row,) = self.ask(model, "stats")
        assert row["head"] == len(EVENTS) and row["runs"] == 2 and row["deleted_runs"] == 1
        assert row["runs_by_status"] == {"completed": 1, "failed": 1}
        assert row["items_by_status"] == {"failed": 1, "ok": 2, "skipped": 1}
        assert row["artifacts_by_kind"] == {"log": 1, "model": 1} and row["metric_points"] == 25
        (one,) = self.ask(model, "stats", run="alpha")
        assert one["items"] == 3 and [(s["stage"], s["count"]) for s in one["stages"]] == [
            ("fetch", 2),
            ("translate", 1),
        ]

    def test_a_cache_entry_lives_until_it_expires(self, model: ReadModel) -> None:
        with model.snapshot():
            (entry,) = model.cache(Query(q="cache", key="short"), RECORDED + 5)[0]
            assert entry["value"] == [1, 2] and entry["expires_at"] == RECORDED + 10
            assert model.cache(Query(q="cache", key="short"), RECORDED + 10)[0] == []
            assert model.cache(Query(q="cache", key="forever"), RECORDED + 1e9)[0][0]["value"] == {"a": 1}
            assert model.cache(Query(q="cache", key="absent"), RECORDED)[0] == []

    def test_events_from_a_seq_of_a_run_and_types(self, model: ReadModel) -> None:
        rows = self.ask(model, "events", run="aaa111", types=["item"], from_seq=1)
        assert [e.data["item"] for e in rows] == ["doc-1", "doc-2", "doc-3"]
        assert all(e.run == "aaa111" and e.type == "item" for e in rows)
        assert len(self.ask(model, "events", limit=3)) == 3

    def test_scan_events_reports_how_far_it_read_and_the_head(self, model: ReadModel) -> None:
        found, read_to, head = model.scan_events(0, 2, None, frozenset({"artifact"}), None)
        assert [e.type for e in found] == ["artifact", "artifact"] and read_to == found[-1].seq
        assert head == len(EVENTS)
        found, read_to, _ = model.scan_events(0, 100, None, None, frozenset({"eval"}))
        assert [e.type for e in found] == ["run.started", "run.deleted"] and read_to == head

    def test_run_pipelines_give_every_runs_pipeline_and_status(self, model: ReadModel) -> None:
        pipelines, statuses = model.run_pipelines()
        assert pipelines == {"aaa111": "train", "aab222": "train", "ccc333": "eval"}
        assert statuses == {"aaa111": "completed", "aab222": "failed", "ccc333": "running"}

    # -- export rows ------------------------------------------------------------------------------

    def test_export_rows_read_in_one_snapshot(self, model: ReadModel) -> None:
        with model.snapshot("export"):
            summary = model.run_summary("aaa111")
            assert "artifacts" not in summary and summary["metrics"]["loss"]["count"] == 10
            assert model.metric_names("aaa111") == [("acc", 10), ("loss", 10)]
            steps: list[int] = []
            values: list[float] = []
            for chunk_steps, chunk_values, epochs, ts in model.metric_chunks("aaa111", "loss"):
                assert len(chunk_steps) == len(chunk_values) == len(epochs) == len(ts)
                steps += chunk_steps
                values += chunk_values
            assert steps == list(range(10)) and values == [1.0 / (s + 1) for s in range(10)]
            assert [i["item"] for i in model.item_rows("aaa111")] == ["doc-1", "doc-2", "doc-3"]
            assert [a["path"] for a in model.artifact_rows("aaa111")] == ["m.pt", "out.txt"]

    # -- the answer around the questions -----------------------------------------------------------

    def test_an_unknown_question_is_bad_query_naming_the_known_ones(self, model: ReadModel) -> None:
        with pytest.raises(errors.BadQuery, match="expected one of"):
            self.ask(model, "nothing")
