"""The read model of an in-memory log: its projections in plain Python structures.

`MemoryReadModel` applies a `MemoryEventLog`'s committed events through the same pure
projection (`projections.project`) the SQL tables get, into dicts and lists, and answers
each question as the SQLite read model does: the same rows, in the same order, built by
the same row mappings (`sqlcommon/rows.py`) from tuples laid out as the SQL columns are.
Metric series keep their chunks exactly as the tables do (`tables.Series`), so
downsampling from the chunks' extremes picks the same points.

What differs: `search` is a plain token match (every word, `word*` a prefix, case
folded), ranked by how many times the words occur (not bm25), with the document's start
as its snippet; `stats` reports sizes of 0; `sql` and `schema` are bad_query.

One lock guards the projection: `snapshot()` holds it, and catches up with the log
first, so every read inside sees one state.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
import time
import unicodedata
from collections.abc import Iterator
from typing import Any, Final

import msgspec
import numpy as np

from tracklog.protocol import errors
from tracklog.protocol.limits import MAX_QUERY_LIMIT
from tracklog.protocol.messages import Query, StoredEvent

from .. import projections as p
from ..filter_grammar import FieldRef, parse_run_query
from ..series import Series as ColumnSeries
from ..series import extremes_index
from .memory import MemoryEventLog
from .memory_filter import config_value, evaluate, order_runs
from .readmodel import (
    DEFAULT_EXPERIMENTS,
    DEFAULT_ITEMS,
    DEFAULT_RUNS,
    MAX_EXPERIMENTS,
    MAX_ITEMS,
    MAX_RUNS,
    ChunkColumns,
    ReadModel,
    Rows,
)
from .sqlcommon.events import SCAN_WINDOW
from .sqlcommon.items import FACET_COLUMNS
from .sqlcommon.metrics import MAX_SERIES_POINTS, series_of_chunks
from .sqlcommon.rows import (
    RUN_SUMMARY_NAMES,
    artifact_row,
    epoch_or_none,
    item_row,
    page,
    run_row,
    search_page,
    search_row,
    search_words,
    summary_row,
)
from .sqlcommon.runref import MAX_CANDIDATES, Resolved
from .sqlcommon.schema import NO_EPOCH
from .sqlcommon.stats import ITEM_STATUSES, STAGE_QUANTILES, _stage_row
from .sqlcommon.tables import Series, item_table_row, json_text, tier_row

_msgpack_decode: Final = msgspec.msgpack.Decoder().decode
_json_decode: Final = msgspec.json.Decoder().decode
#: The run fields a `SetRunFields` change may set (as the runs table's columns).
_RUN_FIELDS: Final = frozenset(
    {"name", "pipeline", "notes", "parent", "user", "host", "session", "started", "deleted", "experiment"}
)
NOT_AVAILABLE: Final = "not available on the memory backend"
#: A word of a search document or text: letters and digits (the underscore is no letter).
_WORD: Final = re.compile(r"[^\W_]+")


class _Projection:
    """The tables of `sqlcommon/schema.py` as dicts and lists, fed change by change."""

    def __init__(self) -> None:
        self.applied = 0
        #: run -> its row, keyed by the runs table's column names (config as canonical JSON text).
        self.runs: dict[str, dict[str, Any]] = {}
        self.tags: dict[str, dict[str, str | None]] = {}
        self.series: dict[tuple[str, str], Series] = {}
        #: (run, name) -> its chunk rows (as metric_chunks holds them), the open one last.
        self.chunks: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
        self.items: list[tuple[Any, ...]] = []
        self.artifacts: list[tuple[Any, ...]] = []
        self.experiments: dict[str, dict[str, Any]] = {}
        self.experiment_tags: dict[str, dict[str, str]] = {}
        self.cache: dict[str, tuple[bytes, float | None]] = {}
        #: doc -> (kind, run, title, body): runs under -created_seq, items and artifacts their seq.
        self.docs: dict[int, tuple[str, str, str, str]] = {}

    def apply(self, event: p.LoggedEvent) -> None:
        touched: set[str] = set()
        for change in p.project(event):
            self._apply(change, touched)
        for run in touched:
            self._run_document(run)
        self.applied = event.seq

    def _apply(self, change: p.AnyChange, touched: set[str]) -> None:
        match change:
            case p.TouchRun(run, seq, ts):
                row = self.runs.get(run)
                if row is None:
                    row = self.runs[run] = {
                        **dict.fromkeys(RUN_SUMMARY_NAMES),
                        "run": run,
                        "status": "running",
                        "config": "{}",
                        "started": ts,
                        "created_seq": seq,
                        "deleted": 0,
                        "n_events": 0,
                        "n_points": 0,
                        "n_items": 0,
                        "n_failed": 0,
                        "n_artifacts": 0,
                    }
                    self.tags[run] = {}
                row["n_events"] += 1
                row["updated_seq"] = seq
                row["last_ts"] = ts
            case p.AddPoints(run, ts, values, step, epoch):
                self.runs[run]["n_points"] += len(values)
                for name, value in values.items():
                    key = (run, name)
                    series = self.series.get(key)
                    if series is None:
                        series = self.series[key] = Series(run, name)
                        self.chunks[key] = []
                    series.add(step, epoch, value, ts)
                    chunks = self.chunks[key]
                    if series.sealed:
                        # A chunk filled: it replaces its open row, and the next one opens.
                        if chunks and chunks[-1][2] == series.sealed[0][2]:
                            chunks.pop()
                        chunks.extend(series.sealed)
                        series.sealed.clear()
                    elif chunks and chunks[-1][2] == series.chunk:
                        chunks[-1] = series.chunk_row()
                    else:
                        chunks.append(series.chunk_row())
            case p.AddItem(seq, run, ts, item):
                self.items.append(item_table_row(seq, run, ts, item))
                row = self.runs[run]
                row["n_items"] += 1
                if item.status == "failed":
                    row["n_failed"] += 1
                self.docs[seq] = ("item", run, *p.item_search_document(item))
            case p.AddArtifact(seq, run, ts, art):
                self.artifacts.append(
                    (
                        seq,
                        run,
                        art.kind,
                        art.path,
                        art.size,
                        art.digest,
                        json_text(art.metadata),
                        ts,
                        art.blob,
                    )
                )
                self.runs[run]["n_artifacts"] += 1
                self.docs[seq] = ("artifact", run, *p.artifact_search_document(art))
            case p.SetRunFields(run, fields):
                row = self.runs.get(run)
                if row is not None:
                    for name, value in fields.items():
                        if name in _RUN_FIELDS:
                            row[name] = value
                    touched.add(run)
            case p.MergeConfig(run, config):
                row = self.runs[run]
                merged = _json_decode(row["config"]) if row["config"] else {}
                merged.update(config)
                row["config"] = json_text(merged)
            case p.ChangeTags(run, add, remove):
                tags = self.tags[run]
                for tag in add:
                    tags.setdefault(tag, None)
                for tag in remove:
                    tags.pop(tag, None)
                touched.add(run)
            case p.SetTagValues(run, values):
                self.tags[run].update(values)
                touched.add(run)
            case p.ApplyExperiment(seq, ts, exp):
                found = self.experiments.get(exp.experiment)
                if found is None:
                    self.experiments[exp.experiment] = {
                        "experiment": exp.experiment,
                        "name": exp.name if exp.name is not None else exp.experiment,
                        "lifecycle": exp.lifecycle or "active",
                        "artifact_location": exp.artifact_location,
                        "created": ts,
                        "updated": ts,
                        "created_seq": seq,
                        "updated_seq": seq,
                    }
                else:
                    for name in ("name", "lifecycle", "artifact_location"):
                        if (value := getattr(exp, name)) is not None:
                            found[name] = value
                    found["updated"] = ts
                    found["updated_seq"] = seq
                exp_tags = self.experiment_tags.setdefault(exp.experiment, {})
                exp_tags.update(exp.tags or {})
                for tag in exp.remove_tags or ():
                    exp_tags.pop(tag, None)
            case p.FinishRun(run, status, error, finished):
                row = self.runs[run]
                row["status"], row["error"], row["finished"] = status, error, finished
            case p.ResumeRun(run):
                row = self.runs[run]
                row["status"], row["error"], row["finished"] = "running", None, None
            case p.PutCache(key, value, expires_at, _):
                self.cache[key] = (value, expires_at)
            case p.DropCache(key):
                if key is None:
                    self.cache.clear()
                else:
                    self.cache.pop(key, None)
            case p.AddDedupEntry() | p.ClearDedup():
                pass  # the log keeps the dedup indexes itself
            case _:
                raise TypeError(f"unknown change {change!r}")

    def _run_document(self, run: str) -> None:
        row = self.runs.get(run)
        if row is None:
            return
        title, body = p.run_search_document(
            row["name"], row["notes"], row["pipeline"], sorted(self.tags[run])
        )
        self.docs[-row["created_seq"]] = ("run", run, title, body)


class MemoryReadModel(ReadModel):
    """Questions answered from a `MemoryEventLog`'s events, projected in memory.

    Any number of models may read one log; each holds its own projection and catches up
    with the log's committed events when a snapshot begins.
    """

    def __init__(self, log: MemoryEventLog) -> None:
        self.log = log
        self._lock = threading.RLock()
        self._data = _Projection()
        #: How many snapshots are open (nested): only the outermost catches up.
        self._depth = 0

    # -- consistency ----------------------------------------------------------------------

    @contextlib.contextmanager
    def snapshot(self, what: str = "query") -> Iterator[None]:
        """The state as the log's committed events left it when the outermost snapshot
        began: a snapshot inside another (each question opens one) catches up with nothing,
        so an export's reads, or a question and its `applied_seq`, see one state."""
        with self._lock:
            if self._depth == 0:
                self._catch_up()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1

    def _catch_up(self) -> None:
        data = self._data
        committed = self.log.applied_seq
        if committed < data.applied:  # rebuilt to an earlier seq: start over
            data = self._data = _Projection()
        for seq, event_id, type_, run, ts, recorded, payload in self.log.rows[data.applied : committed]:
            data.apply(p.LoggedEvent(seq, type_, run, ts, recorded, payload, event_id))

    @contextlib.contextmanager
    def _state(self) -> Iterator[_Projection]:
        with self.snapshot():
            yield self._data

    def applied_seq(self) -> int:
        with self._state() as data:
            return data.applied

    def close(self) -> None:
        pass

    def database_bytes(self) -> int | None:
        return 0  # no database: `/metrics` reports 0, as `stats` does

    # -- run references -------------------------------------------------------------------

    def _resolve(
        self, data: _Projection, ref: str | None, field: str = "run", ref_id: int | None = None
    ) -> Resolved:
        """As `runref.resolve`: an id, then a name (the latest), then a unique id prefix."""
        if not ref:
            raise errors.BadQuery(f"{field}: required (a run id, a unique id prefix or a run name)", ref_id)
        row = data.runs.get(ref)
        if row is not None:
            return Resolved(ref, ref, row["name"], bool(row["deleted"]), "id")
        named_rows = sorted(
            (r for r in data.runs.values() if r["name"] == ref),
            key=lambda r: (r["deleted"], -r["created_seq"]),
        )
        # ORDER BY deleted, created_seq DESC, run DESC: the last tie-break by run descending.
        named_rows.sort(key=lambda r: r["run"], reverse=True)
        named_rows.sort(key=lambda r: (r["deleted"], -r["created_seq"]))
        prefixed = sorted(
            (r for r in data.runs.values() if r["run"] > ref and r["run"].startswith(ref)),
            key=lambda r: r["run"],
        )[: MAX_CANDIDATES + 1]
        shown = repr(ref[:128])

        def describe(r: dict[str, Any]) -> str:
            return f"{r['run']} ({r['name']})" if r["name"] else r["run"]

        if named_rows:
            named = named_rows[0]
            if any(r["run"] != named["run"] for r in prefixed):
                candidates = [f"{named['run']} (named {ref})"]
                candidates += [describe(r) for r in prefixed[:MAX_CANDIDATES] if r["run"] != named["run"]]
                raise errors.BadQuery(
                    f"{field}: {shown} is ambiguous: the name of {named['run']} and a prefix of other ids; "
                    f"candidates: {', '.join(candidates)}",
                    ref_id,
                )
            return Resolved(ref, named["run"], ref, bool(named["deleted"]), "name", len(named_rows))
        if len(prefixed) == 1:
            r = prefixed[0]
            return Resolved(ref, r["run"], r["name"], bool(r["deleted"]), "prefix")
        if prefixed:
            more = " and more" if len(prefixed) > MAX_CANDIDATES else ""
            listed = ", ".join(describe(r) for r in prefixed[:MAX_CANDIDATES])
            count = len(prefixed[:MAX_CANDIDATES])
            raise errors.BadQuery(
                f"{field}: {shown} is ambiguous: it is a prefix of {count}{more} run ids: "
                f"{listed}; give more characters",
                ref_id,
            )
        raise errors.NotFound(f"{field}: no run {shown} (no run has that id, id prefix or name)", ref_id)

    def _require_run(self, data: _Projection, q: Query) -> str:
        if not q.run:
            raise errors.BadQuery(f"run: required for q '{q.q}'", q.ref)
        return self._resolve(data, q.run, "run", q.ref).id

    # -- rows ------------------------------------------------------------------------------

    @staticmethod
    def _run_row(data: _Projection, run: str) -> dict[str, Any]:
        row = data.runs[run]
        return run_row(tuple(row[name] for name in RUN_SUMMARY_NAMES))

    @staticmethod
    def _summary_tuple(series: Series) -> tuple[Any, ...]:
        """A metric_summaries row's SUMMARY_COLUMNS, with SQLite's NaN-as-NULL."""
        row = series.summary_row()[2:]
        values = list(row)
        for index in (1, 5, 8, 11):  # last, min, max, sum: NaN is NULL in SQLite
            if isinstance(values[index], float) and math.isnan(values[index]):
                values[index] = None
        return tuple(values)

    def _metric_names(self, data: _Projection, run: str) -> list[str]:
        return sorted(name for (r, name) in data.series if r == run)

    # -- the questions -----------------------------------------------------------------------

    def events(self, q: Query) -> Rows:
        from_seq = q.from_seq or 0
        if from_seq < 0:
            raise errors.BadQuery("from_seq: expected 0 or more", q.ref)
        limit = 1000 if q.limit is None else q.limit
        if limit < 0 or limit > MAX_QUERY_LIMIT:
            raise errors.BadQuery(f"limit: expected 0 to {MAX_QUERY_LIMIT}", q.ref)
        with self._state() as data:
            if limit == 0:
                return [], None
            return self.log.read(from_seq, limit, q.run, q.types, to_seq=data.applied), None

    def _matching_runs(self, data: _Projection, q: Query, order_by: list[str] | None) -> list[str]:
        try:
            parsed = parse_run_query(q.filter, order_by)
        except errors.BadQuery as exc:
            raise errors.BadQuery(exc.message, q.ref) from None
        runs = sorted(data.runs.values(), key=lambda r: (r["created_seq"], r["run"]))
        if not q.deleted:
            runs = [r for r in runs if not r["deleted"]]
        if parsed.condition is not None:
            condition = parsed.condition

            def matches(row: dict[str, Any]) -> bool:
                tags = data.tags[row["run"]]
                return evaluate(condition, lambda ref: self._field(data, row, ref), tags.__contains__) is True

            runs = [r for r in runs if matches(r)]
        if parsed.order:
            runs = order_runs(runs, parsed.order, lambda r, ref: self._field(data, r, ref)[0])
        return [r["run"] for r in runs]

    def _field(self, data: _Projection, row: dict[str, Any], ref: FieldRef) -> tuple[Any, bool | None]:
        """A run's value of a filter field, and its column's affinity (number, text or none)."""
        if ref.kind == "metric":
            series = data.series.get((row["run"], ref.name))
            if series is None or series.last is None or math.isnan(series.last):
                return None, True
            return series.last, True
        if ref.kind == "config":
            return config_value(_json_decode(row["config"]), ref.name), None
        if ref.kind == "tag":
            tags = data.tags[row["run"]]
            if ref.name not in tags:
                return None, None
            value = tags[ref.name]
            return ("" if value is None else value), None
        name = ref.name
        if name == "experiment_name":
            experiment = data.experiments.get(row["experiment"]) if row["experiment"] is not None else None
            return (None if experiment is None else experiment["name"]), False
        column = {"id": "run", "created": "created_seq", "updated": "updated_seq"}.get(name, name)
        numeric = name in ("started", "finished", "created", "updated", "deleted")
        return row[column], numeric

    def _with_tags_and_metrics(self, data: _Projection, run: str) -> dict[str, Any]:
        out = self._run_row(data, run)
        tags = data.tags[run]
        out["tags"] = sorted(tags)
        out["tag_values"] = {tag: tags[tag] for tag in sorted(tags) if tags[tag] is not None}
        return out

    def runs(self, q: Query) -> Rows:
        limit, offset = page(q, DEFAULT_RUNS, MAX_RUNS)
        with self._state() as data:
            ids = self._matching_runs(data, q, q.order_by)
            rows = []
            for run in ids[offset : offset + limit]:
                out = self._with_tags_and_metrics(data, run)
                out["metrics"] = {}
                for name in self._metric_names(data, run):
                    last = data.series[(run, name)].last
                    out["metrics"][name] = last
                rows.append(out)
            return rows, len(ids)

    def run(self, q: Query) -> Rows:
        if not q.run:
            raise errors.BadQuery("run: required for q 'run'", q.ref)
        with self._state() as data:
            run = self._resolve(data, q.run, "run", q.ref).id
            return [self._full_run(data, run, with_artifacts=True)], 1

    def _full_run(self, data: _Projection, run: str, *, with_artifacts: bool) -> dict[str, Any]:
        out = self._with_tags_and_metrics(data, run)
        out["metrics"] = {
            name: summary_row(self._summary_tuple(data.series[(run, name)]), with_last_ts=True)
            for name in self._metric_names(data, run)
        }
        if with_artifacts:
            out["artifacts"] = [
                {key: value for key, value in artifact.items() if key != "run"}
                for artifact in self._artifact_rows(data, run)
            ]
        return out

    def resolve(self, q: Query) -> Rows:
        with self._state() as data:
            return [msgspec.structs.asdict(self._resolve(data, q.run, "run", q.ref))], 1

    def metrics(self, q: Query) -> Rows:
        with self._state() as data:
            run = self._require_run(data, q)
            if q.max_points is not None and q.max_points < 2:
                raise errors.BadQuery(
                    "max_points: expected 2 or more (the first and the last points are always kept);"
                    " leave it out for every point",
                    q.ref,
                )
            if q.step_from is not None and q.step_to is not None and q.step_from > q.step_to:
                raise errors.BadQuery("step_from: greater than step_to", q.ref)
            summaries = {
                name: summary_row(self._summary_tuple(data.series[(run, name)]))
                for name in self._metric_names(data, run)
            }
            names = list(summaries) if q.names is None else list(dict.fromkeys(q.names))
            unknown = [name for name in names if name not in summaries]
            if unknown:
                shown = ", ".join(f"'{name[:128]}'" for name in unknown[:10])
                more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
                raise errors.NotFound(f"names: run '{run[:128]}' has no metric {shown}{more}", q.ref)
            rows: list[dict[str, Any]] = []
            for name in names:
                summary = summaries[name]
                chunks = data.chunks[(run, name)]
                tiered = None
                if q.max_points is not None and summary["count"] > q.max_points:
                    tiered = _downsample_from_tiers(chunks, q.max_points, q.step_from, q.step_to)
                if tiered is not None:
                    series, points = tiered
                    rows.append(
                        {
                            "run": run,
                            "name": name,
                            "points": points,
                            "downsampled": True,
                            **series.columns(),
                            "summary": summary,
                        }
                    )
                    continue
                series = _read_series(chunks, q.step_from, q.step_to)
                points = len(series)
                if q.max_points is not None and points > q.max_points:
                    series = series.take(extremes_index(series.values, q.max_points))
                elif points > MAX_SERIES_POINTS:
                    raise errors.BadQuery(f"metrics: {name} has {points} points; ask with max_points", q.ref)
                rows.append(
                    {
                        "run": run,
                        "name": name,
                        "points": points,
                        "downsampled": len(series) < points,
                        **series.columns(),
                        "summary": summary,
                    }
                )
            return rows, len(rows)

    def compare(self, q: Query) -> Rows:
        refs = q.runs or ([q.run] if q.run else [])
        if not refs:
            raise errors.BadQuery("runs: required for q 'compare' (a list of run ids)", q.ref)
        if len(refs) > MAX_RUNS:
            raise errors.BadQuery(f"runs: at most {MAX_RUNS}", q.ref)
        with self._state() as data:
            runs: list[str] = []
            for ref in refs:
                found = self._resolve(data, ref, "runs", q.ref)
                if found.deleted and not q.deleted:
                    shown = f"{found.id} ({found.name})" if found.name else found.id
                    raise errors.NotFound(
                        f"runs: run {shown} is deleted; ask with deleted=true to include it", q.ref
                    )
                runs.append(found.id)
            runs = list(dict.fromkeys(runs))
            wanted = q.metrics if q.metrics is not None else q.names
            rows: list[dict[str, Any]] = []
            for run in runs:
                for name in self._metric_names(data, run):
                    if wanted is not None and name not in wanted:
                        continue
                    epochs = np.unique(
                        np.frombuffer(b"".join(c[8] for c in data.chunks[(run, name)]), np.int64)
                    )
                    rows.append(
                        {
                            "run": run,
                            "run_name": data.runs[run]["name"],
                            "metric": name,
                            **summary_row(self._summary_tuple(data.series[(run, name)])),
                            "epochs": int((epochs != NO_EPOCH).sum()),
                        }
                    )
            return rows, len(rows)

    def best(self, q: Query) -> Rows:
        if not q.metric:
            raise errors.BadQuery("metric: required for q 'best'", q.ref)
        mode = q.mode or "min"
        if mode not in ("min", "max"):
            raise errors.BadQuery("mode: expected 'min' or 'max'", q.ref)
        with self._state() as data:
            candidates = []
            for run in self._matching_runs(data, q, None):
                series = data.series.get((run, q.metric))
                value = None if series is None else getattr(series, mode)
                if value is not None:
                    candidates.append((value, run, series))
            if not candidates:
                return [], 0
            # ORDER BY value, created_seq, run: the runs are in creation order already.
            pick = (
                min(candidates, key=lambda c: c[0]) if mode == "min" else max(candidates, key=lambda c: c[0])
            )
            value, run, series = pick
            assert series is not None
            summary = self._run_row(data, run)
            return [
                {
                    "run": run,
                    "name": summary["name"],
                    "metric": q.metric,
                    "mode": mode,
                    "value": value,
                    "step": getattr(series, f"{mode}_step"),
                    "epoch": epoch_or_none(getattr(series, f"{mode}_epoch")),
                    "count": series.count,
                    "summary": summary,
                }
            ], 1

    def items(self, q: Query) -> Rows:
        limit, offset = page(q, DEFAULT_ITEMS, MAX_ITEMS)
        with self._state() as data:
            run = None if q.run is None else self._resolve(data, q.run, "run", q.ref).id
            # Column indexes in ITEM_COLUMNS: run 1, stage 4, status 6, model 9, backend 10.
            tests = [
                (i, v)
                for i, v in ((1, run), (4, q.stage), (6, q.status), (9, q.model), (10, q.backend))
                if v is not None
            ]
            matched = [row for row in data.items if all(row[i] == v for i, v in tests)]
            return [item_row(row) for row in matched[offset : offset + limit]], len(matched)

    def item_facets(self, q: Query) -> Rows:
        with self._state() as data:
            run = self._require_run(data, q)
            items = [row for row in data.items if row[1] == run]
            rows: list[dict[str, Any]] = []
            index = {"stage": 4, "status": 6, "model": 9, "backend": 10, "kind": 3}
            for column in FACET_COLUMNS:
                groups: dict[Any, list[tuple[Any, ...]]] = {}
                for row in items:
                    groups.setdefault(row[index[column]], []).append(row)
                for value in sorted(groups, key=lambda v: (v is not None, v or "")):
                    group = groups[value]
                    durations = [row[11] for row in group if row[11] is not None]
                    rows.append(
                        {
                            "field": column,
                            "value": value,
                            "count": len(group),
                            "failed": sum(1 for row in group if row[6] == "failed"),
                            "mean": sum(durations) / len(durations) if durations else None,
                        }
                    )
            return rows, len(rows)

    @staticmethod
    def _artifact_rows(data: _Projection, run: str) -> list[dict[str, Any]]:
        return [artifact_row(row) for row in data.artifacts if row[1] == run]

    def artifacts(self, q: Query) -> Rows:
        with self._state() as data:
            rows = self._artifact_rows(data, self._require_run(data, q))
            return rows, len(rows)

    def search(self, q: Query) -> Rows:
        """Documents holding every word (`word*`: a word starting so), case folded; ranked
        by how often the words occur, then by document. Not bm25: the order may differ
        from SQLite's, and the snippet is the body's start."""
        limit, offset = search_page(q)
        assert q.text is not None
        # Each word is a phrase of tokens, as FTS5 reads `"doc-1"`: doc then 1.
        phrases = [(tokens, prefix) for word, prefix in search_words(q.text) if (tokens := _tokens(word))]
        if not phrases:
            return [], 0
        with self._state() as data:
            hits: list[tuple[float, int, dict[str, Any]]] = []
            for doc, (kind, run, title, body) in data.docs.items():
                row = data.runs.get(run)
                if row is None or (row["deleted"] and not q.deleted):
                    continue
                tokens = _tokens(f"{title} {body}")
                score = 0
                for phrase, prefix in phrases:
                    found = _phrase_count(tokens, phrase, prefix)
                    if not found:
                        break
                    score += found
                else:
                    snippet = body[:80] + ("..." if len(body) > 80 else "")
                    hits.append(
                        (-score, doc, search_row(doc, kind, run, row["name"], title, snippet, float(score)))
                    )
            hits.sort(key=lambda h: (h[0], h[1]))
            return [h[2] for h in hits[offset : offset + limit]], None

    def stats(self, q: Query) -> Rows:
        with self._state() as data:
            if q.run is not None:
                run = self._require_run(data, q)
                items = [row for row in data.items if row[1] == run]
                by_status: dict[str, int] = {}
                for row in items:
                    by_status[row[6]] = by_status.get(row[6], 0) + 1
                return [
                    {
                        "run": run,
                        "items": len(items),
                        "items_by_status": dict(sorted(by_status.items())),
                        "stages": _stage_summaries(items, one_run=True),
                        "time": time.time(),
                    }
                ], 1
            head = data.applied
            now = time.time()
            live = [r for r in data.runs.values() if q.deleted or not r["deleted"]]
            runs_by_status: dict[str, int] = {}
            for r in live:
                runs_by_status[r["status"]] = runs_by_status.get(r["status"], 0) + 1
            items_by_status = dict.fromkeys(ITEM_STATUSES, 0)
            for row in data.items:
                items_by_status[row[6]] += 1
            artifacts_by_kind: dict[str, int] = {}
            for row in data.artifacts:
                artifacts_by_kind[row[2]] = artifacts_by_kind.get(row[2], 0) + 1
            tag_counts: dict[str, int] = {}
            for tags in data.tags.values():
                for tag in tags:
                    tag_counts[tag] = tag_counts.get(tag, 0) + 1
            top = sorted(tag_counts.items(), key=lambda t: (-t[1], t[0]))[:10]
            recent = sorted(live, key=lambda r: r["run"])
            recent.sort(key=lambda r: r["last_ts"], reverse=True)
            summary = {
                "head": head,
                "events": head,
                "runs": len(live),
                "deleted_runs": sum(r["deleted"] for r in data.runs.values()),
                "runs_by_status": dict(sorted(runs_by_status.items())),
                "items": len(data.items),
                "items_by_status": {s: n for s, n in sorted(items_by_status.items()) if n},
                "stages": _stage_summaries(data.items),
                "artifacts": len(data.artifacts),
                "artifacts_by_kind": dict(sorted(artifacts_by_kind.items())),
                "metric_points": sum(r["n_points"] for r in data.runs.values()),
                "metric_series": len(data.series),
                "top_tags": [{"tag": t, "runs": n} for t, n in top],
                "recent_runs": [
                    {"id": r["run"], "name": r["name"], "status": r["status"], "last_ts": r["last_ts"]}
                    for r in recent[:10]
                ],
                "database_bytes": 0,
                "wal_bytes": 0,
                "log_bytes": 0,
                "log_bytes_exact": True,
                "ingest_rate": self._ingest_rate(head, now),
                "time": now,
            }
            return [summary], 1

    def _ingest_rate(self, head: int, now: float, window: float = 60.0) -> float:
        rows = self.log.rows
        since = now - window
        recent = sum(1 for row in rows[:head] if row[5] >= since)
        return recent / window if head else 0.0

    def experiments(self, q: Query) -> Rows:
        limit, offset = page(q, DEFAULT_EXPERIMENTS, MAX_EXPERIMENTS)
        with self._state() as data:
            found = sorted(data.experiments.values(), key=lambda e: (e["created_seq"], e["experiment"]))
            if q.experiments is not None:
                found = [e for e in found if e["experiment"] in q.experiments]
            if q.names is not None:
                found = [e for e in found if e["name"] in q.names]
            if not q.deleted:
                found = [e for e in found if e["lifecycle"] == "active"]
            out: list[dict[str, Any]] = []
            for e in found[offset : offset + limit]:
                experiment = dict(e)
                experiment["id"] = experiment.pop("experiment")
                tags = data.experiment_tags.get(e["experiment"], {})
                experiment["tags"] = {tag: tags[tag] for tag in sorted(tags)}
                experiment["runs"] = sum(
                    1 for r in data.runs.values() if r["experiment"] == e["experiment"] and not r["deleted"]
                )
                out.append(experiment)
            return out, len(found)

    def cache(self, q: Query, now: float) -> Rows:
        if not q.key:
            raise errors.BadQuery("key: required for q 'cache'", q.ref)
        with self._state() as data:
            entry = data.cache.get(q.key)
            if entry is None or (entry[1] is not None and entry[1] <= now):
                return [], 0
            return [{"key": q.key, "value": _msgpack_decode(entry[0]), "expires_at": entry[1]}], 1

    def sql(self, q: Query) -> Rows:
        raise errors.BadQuery(f"sql: {NOT_AVAILABLE}", q.ref)

    def schema(self, q: Query) -> Rows:
        raise errors.BadQuery(f"schema: {NOT_AVAILABLE}", q.ref)

    # -- the daemon's own reads ---------------------------------------------------------------

    def scan_events(
        self,
        after: int,
        limit: int,
        runs: frozenset[str] | None,
        types: frozenset[str] | None,
        pipelines: frozenset[str] | None,
    ) -> tuple[list[StoredEvent], int, int]:
        with self._state() as data:
            head = data.applied
            end = min(head, after + SCAN_WINDOW)
            events: list[StoredEvent] = []
            for event in self.log.read(after, end - after if end > after else 0, to_seq=end):
                if runs is not None and event.run not in runs:
                    continue
                if types is not None and event.type not in types:
                    continue
                if pipelines is not None and (
                    event.run is None
                    or event.run not in data.runs
                    or data.runs[event.run]["pipeline"] not in pipelines
                ):
                    continue
                events.append(event)
                if len(events) >= limit:
                    break
            scanned_to = events[-1].seq if len(events) >= limit and events else end
            return events, scanned_to, head

    def run_pipelines(self) -> tuple[dict[str, str | None], dict[str, str]]:
        with self._state() as data:
            return (
                {run: row["pipeline"] for run, row in data.runs.items()},
                {run: row["status"] for run, row in data.runs.items()},
            )

    # -- export rows ------------------------------------------------------------------------

    def run_summary(self, run: str) -> dict[str, Any]:
        with self._state() as data:
            found = self._resolve(data, run, "run").id
            return self._full_run(data, found, with_artifacts=False)

    def metric_names(self, run: str) -> list[tuple[str, int]]:
        with self._state() as data:
            return [(name, data.series[(run, name)].count) for name in self._metric_names(data, run)]

    def metric_chunks(self, run: str, name: str) -> Iterator[ChunkColumns]:
        with self._state() as data:
            chunks = list(data.chunks.get((run, name), []))
        for chunk in chunks:
            steps, vals, epochs, ts = chunk[6:10]
            epoch_list: list[int | None] = np.frombuffer(epochs, np.int64).tolist()
            if NO_EPOCH in epoch_list:
                epoch_list = [None if e == NO_EPOCH else e for e in epoch_list]
            yield (
                np.frombuffer(steps, np.int64).tolist(),
                np.frombuffer(vals, np.float64).tolist(),
                epoch_list,
                np.frombuffer(ts, np.float64).tolist(),
            )

    def item_rows(self, run: str) -> Iterator[dict[str, Any]]:
        with self._state() as data:
            rows = [row for row in data.items if row[1] == run]
        return (item_row(row) for row in rows)

    def artifact_rows(self, run: str) -> list[dict[str, Any]]:
        with self._state() as data:
            return self._artifact_rows(data, run)

    def stored_blobs(self) -> list[dict[str, Any]]:
        with self._state() as data:
            return [
                {"run": row[1], "path": row[3], "size": row[4], "blob": row[8]}
                for row in data.artifacts
                if row[8] is not None
            ]


def _tokens(text: str) -> list[str]:
    """Words as FTS5's unicode61 tokenizer cuts them: runs of letters and digits, case
    folded, diacritics taken off. No stemming (SQLite's index also applies porter)."""
    out: list[str] = []
    for word in _WORD.findall(text):
        folded = unicodedata.normalize("NFKD", word.casefold())
        out.append("".join(ch for ch in folded if not unicodedata.combining(ch)))
    return out


def _phrase_count(tokens: list[str], phrase: list[str], prefix: bool) -> int:
    """How many times the phrase occurs in tokens (its last token a prefix when `prefix`)."""
    n = len(phrase)
    count = 0
    for start in range(len(tokens) - n + 1):
        if tokens[start : start + n - 1] == phrase[:-1]:
            last = tokens[start + n - 1]
            if last.startswith(phrase[-1]) if prefix else last == phrase[-1]:
                count += 1
    return count


def _stage_summaries(items: list[tuple[Any, ...]], *, one_run: bool = False) -> list[dict[str, Any]]:
    """Items by (stage, kind): count, failed, durations' total, mean and "lower" quantiles.

    The total is summed as each SQL answer sums it: over every run, in duration order (the
    covering index `items_stage` is read in that order); for one run, with numpy over the
    sorted durations (`stats.run_stage_summaries`)."""
    groups: dict[tuple[Any, Any], list[tuple[Any, ...]]] = {}
    for item in items:
        groups.setdefault((item[4], item[3]), []).append(item)
    out = []
    for stage, kind in sorted(
        groups, key=lambda g: (g[0] is not None, g[0] or "", g[1] is not None, g[1] or "")
    ):
        group = groups[(stage, kind)]
        durations = sorted(item[11] for item in group if item[11] is not None)
        total: float | None = None
        if durations:
            total = float(np.array(durations, np.float64).sum()) if one_run else sum(durations, 0.0)
        failed = sum(1 for item in group if item[6] == "failed")
        stage_row = _stage_row(stage, kind, len(group), failed, len(durations), total)
        for name, quantile in STAGE_QUANTILES:
            if durations:
                stage_row[name] = durations[int(quantile * (len(durations) - 1))]
        out.append(stage_row)
    return out


def _read_series(chunks: list[tuple[Any, ...]], step_from: int | None, step_to: int | None) -> ColumnSeries:
    """As `sqlcommon.metrics.read_series`, over the chunk rows held in memory."""
    kept = [
        c for c in chunks if (step_from is None or c[5] >= step_from) and (step_to is None or c[4] <= step_to)
    ]
    return series_of_chunks([c[6:10] for c in kept], step_from, step_to)


def _downsample_from_tiers(
    chunks: list[tuple[Any, ...]], max_points: int, step_from: int | None, step_to: int | None
) -> tuple[ColumnSeries, int] | None:
    """As `sqlcommon.metrics.downsample_from_tiers`, from the chunks' extremes (`tier_row`)."""
    kept = [
        c for c in chunks if (step_from is None or c[5] >= step_from) and (step_to is None or c[4] <= step_to)
    ]
    buckets = (max_points - 2) // 2
    if not kept or len(kept) <= buckets:
        return None
    if (step_from is not None and any(c[4] < step_from for c in kept)) or (
        step_to is not None and any(c[5] > step_to for c in kept)
    ):
        return None
    # tier_row: run, name, chunk, n, step_min, step_max, lo, lo_at, lo_step, lo_epoch, lo_ts, hi, ...
    tiers = [tier_row(c)[3:] for c in kept]  # n, step_min, step_max, lo..., hi...
    total = int(sum(t[0] for t in tiers))

    def point(chunk: tuple[Any, ...], at: int) -> tuple[int, float, int, float]:
        return (
            int(np.frombuffer(chunk[6], np.int64)[at]),
            float(np.frombuffer(chunk[7], np.float64)[at]),
            int(np.frombuffer(chunk[8], np.int64)[at]),
            float(np.frombuffer(chunk[9], np.float64)[at]),
        )

    last_at = kept[-1][3] - 1
    picks = {(0, 0): point(kept[0], 0), (len(kept) - 1, last_at): point(kept[-1], last_at)}
    if buckets > 0:
        per = -(-len(tiers) // buckets)
        size = buckets * per

        def grid(values: list[Any], fill: float) -> Any:
            out = np.full(size, fill)
            out[: len(values)] = [fill if v is None else v for v in values]
            return out.reshape(buckets, per)

        low = grid([t[3] for t in tiers], np.inf).argmin(axis=1)
        high = grid([t[8] for t in tiers], -np.inf).argmax(axis=1)
        base = np.arange(buckets) * per
        for indexes, value_col in ((base + low, 3), (base + high, 8)):
            for index in indexes.tolist():
                if index >= len(tiers) or tiers[index][value_col] is None:
                    continue
                tier = tiers[index]
                at, step, epoch, ts = tier[value_col + 1 : value_col + 5]
                picks[(index, at)] = (step, tier[value_col], epoch, ts)
    ordered = [picks[key] for key in sorted(picks)]
    return (
        ColumnSeries(
            np.array([q[0] for q in ordered], np.int64),
            np.array([q[1] for q in ordered], np.float64),
            np.array([q[2] for q in ordered], np.int64),
            np.array([q[3] for q in ordered], np.float64),
        ),
        total,
    )
