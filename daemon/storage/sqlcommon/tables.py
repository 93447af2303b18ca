"""Applies projection changes to the tables, batched per transaction, in any SQL dialect.

`Tables` runs on the writer's thread, inside the writer's transaction. Row changes that
are frequent (metric points, run counters, items, artifacts) are gathered in memory and
written once per transaction by `flush`; rare ones (a run's fields, tags, the cache) are
written as they come. The result does not depend on how events were grouped into
transactions, which is what lets `rebuild` reproduce the live tables byte for byte.
"""

from __future__ import annotations

import math
import struct
from array import array
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Final

import msgspec
import numpy as np

from tracklog.protocol.events import ExperimentData, MetricsData

from ... import projections as p
from .dialect import SQLITE, Connection, Dialect
from .schema import CHUNK_POINTS, NO_EPOCH

_json_encode = msgspec.json.Encoder(order="sorted").encode
_json_decode = msgspec.json.Decoder().decode
_msgpack_encode = msgspec.msgpack.Encoder().encode
#: One value of a chunk's int64 and float64 columns (native byte order, as numpy writes them).
_INT64: Final = struct.Struct("=q")
_FLOAT64: Final = struct.Struct("=d")

#: How many metric series keep their open chunk in memory between transactions.
MAX_CACHED_SERIES: Final = 2048
_RUN_COLUMNS: Final = frozenset(
    {"name", "pipeline", "notes", "parent", "user", "host", "session", "started", "deleted", "experiment"}
)


def tier_row(chunk: tuple[Any, ...]) -> tuple[Any, ...]:
    """A chunk's lowest and highest value, with their index, step, epoch and ts (NaN skipped).

    The open chunk's row is rewritten at every commit that adds to it (a client logging one
    point per append pays this each time), so the common case, no NaN, takes plain argmin
    and argmax (the same first index) and reads the other columns at that index without
    making arrays; with NaN, `np.nanargmin` and `np.nanargmax` decide, as they always have."""
    run, name, number, n, step_min, step_max, steps, vals, epochs, ts = chunk
    values = np.frombuffer(vals, np.float64)
    # min and max are NaN when any value is; np.isnan(...).all() is true of an empty chunk.
    clean = bool(values.size) and not (math.isnan(values.min()) or math.isnan(values.max()))
    if clean:
        positions = (int(values.argmin()), int(values.argmax()))
    elif np.isnan(values).all():
        return (run, name, number, n, step_min, step_max, *(None,) * 10)
    else:
        positions = (int(np.nanargmin(values)), int(np.nanargmax(values)))
    out: list[Any] = [run, name, number, n, step_min, step_max]
    for at in positions:
        out.extend(
            (
                float(values[at]),
                at,
                _INT64.unpack_from(steps, at * 8)[0],
                _INT64.unpack_from(epochs, at * 8)[0],
                _FLOAT64.unpack_from(ts, at * 8)[0],
            )
        )
    return tuple(out)


def item_table_row(seq: int, run: str, ts: float, item: Any) -> tuple[Any, ...]:
    """An item event's row of the items table, in its column order."""
    return (
        seq,
        run,
        item.item,
        item.kind,
        item.stage,
        item.iteration,
        item.status,
        json_text(item.data),
        item.path,
        item.model,
        item.backend,
        item.duration,
        item.error,
        ts,
    )


def json_text(value: Any) -> str | None:
    """Canonical JSON text for a free-form value (keys sorted), or None."""
    if value is None:
        return None
    return _json_encode(value).decode()


class Series:
    """One metric of one run: its open chunk and its summary."""

    __slots__ = (
        "chunk",
        "count",
        "dirty",
        "epochs",
        "last",
        "last_epoch",
        "last_step",
        "last_ts",
        "max",
        "max_epoch",
        "max_step",
        "min",
        "min_epoch",
        "min_step",
        "name",
        "run",
        "sealed",
        "steps",
        "sum",
        "summed",
        "ts",
        "vals",
    )

    def __init__(self, run: str, name: str) -> None:
        self.run = run
        self.name = name
        self.chunk = 0
        self.count = 0
        self.steps = array("q")
        self.vals = array("d")
        self.epochs = array("q")
        self.ts = array("d")
        self.sealed: list[tuple[Any, ...]] = []
        self.dirty = False
        self.last: float | None = None
        self.last_step: int | None = None
        self.last_epoch: int | None = None
        self.last_ts: float | None = None
        self.min: float | None = None
        self.min_step: int | None = None
        self.min_epoch: int | None = None
        self.max: float | None = None
        self.max_step: int | None = None
        self.max_epoch: int | None = None
        #: Sum of the values other than NaN, in logging order (so a rebuild gives the same bits).
        self.sum = 0.0
        self.summed = 0

    def add(self, step: int | None, epoch: int | None, value: float, ts: float) -> None:
        if step is None:
            step = self.count  # no step given: the point's index in its series
        steps = self.steps
        steps.append(step)
        self.vals.append(value)
        self.epochs.append(NO_EPOCH if epoch is None else epoch)
        self.ts.append(ts)
        self.count += 1
        self.last = value
        self.last_step = step
        self.last_epoch = epoch
        self.last_ts = ts
        if value == value:  # NaN never becomes a min or a max, nor part of the mean
            self.sum += value
            self.summed += 1
            # Strict comparisons: the first point to reach an extreme keeps it.
            low = self.min
            if low is None or value < low:
                self.min, self.min_step, self.min_epoch = value, step, epoch
            high = self.max
            if high is None or value > high:
                self.max, self.max_step, self.max_epoch = value, step, epoch
        self.dirty = True
        if len(steps) == CHUNK_POINTS:
            self.sealed.append(self.chunk_row())
            self.chunk += 1
            self.steps = array("q")
            self.vals = array("d")
            self.epochs = array("q")
            self.ts = array("d")

    def chunk_row(self) -> tuple[Any, ...]:
        return (
            self.run,
            self.name,
            self.chunk,
            len(self.steps),
            min(self.steps),
            max(self.steps),
            self.steps.tobytes(),
            self.vals.tobytes(),
            self.epochs.tobytes(),
            self.ts.tobytes(),
        )

    def summary_row(self) -> tuple[Any, ...]:
        return (
            self.run,
            self.name,
            self.count,
            self.last,
            self.last_step,
            self.last_epoch,
            self.last_ts,
            self.min,
            self.min_step,
            self.min_epoch,
            self.max,
            self.max_step,
            self.max_epoch,
            self.sum,
            self.summed,
        )


class Tables:
    """The projection tables as the writer sees them, with per-transaction batching."""

    def __init__(self, conn: Connection, dialect: Dialect = SQLITE) -> None:
        self.conn = conn
        #: Whether to feed SQLite's FTS5 index (other databases index search_docs themselves).
        self.fts5 = dialect.fts5
        self._series: OrderedDict[tuple[str, str], Series] = OrderedDict()
        self._known_runs: set[str] = set()
        self._counters: dict[str, list[Any]] = {}
        self._items: list[tuple[Any, ...]] = []
        self._artifacts: list[tuple[Any, ...]] = []
        self._dirty_series: list[Series] = []
        #: Search documents of items and artifacts, and runs whose document is to rewrite.
        self._search_docs: list[tuple[Any, ...]] = []
        self._search_runs: set[str] = set()

    def reset(self) -> None:
        """Forget everything cached: call after a rollback."""
        self._series.clear()
        self._known_runs.clear()
        self._counters.clear()
        self._items.clear()
        self._artifacts.clear()
        self._dirty_series.clear()
        self._search_docs.clear()
        self._search_runs.clear()

    def apply_event(self, event: p.LoggedEvent) -> None:
        """Apply one logged event: exactly `apply` over `project(event)`."""
        data = event.data
        if data.__class__ is MetricsData:
            # The hot path, inlined: the same as TouchRun then AddPoints (a test holds
            # the two paths equal), without building the change objects.
            self.add_metrics(event.run, event.seq, event.ts, data)  # type: ignore[arg-type]
            return
        for change in p.project(event):
            self.apply(change)

    def add_metrics(self, run: str, seq: int, ts: float, data: MetricsData) -> None:
        counter = self._counters.get(run)
        if counter is None:
            self._touch_new(run, seq, ts)
            counter = self._counters[run]
        else:
            counter[0] += 1
            counter[5] = seq
            counter[6] = ts
        values: dict[str, float]
        if TYPE_CHECKING:
            values = p.metric_values(data)
        else:  # the same dict, without a call per event on the hot path of ingest
            values = data.values
        counter[1] += len(values)
        step = data.step
        epoch = data.epoch
        cache = self._series
        for name, value in values.items():
            series = cache.get((run, name))
            if series is None:
                series = self._get_series(run, name)
            if not series.dirty:
                self._dirty_series.append(series)
            series.add(step, epoch, value, ts)

    def _touch_new(self, run: str, seq: int, ts: float) -> None:
        if run not in self._known_runs:
            self.conn.execute(
                "INSERT OR IGNORE INTO runs(run, status, started, created_seq, updated_seq, last_ts)"
                " VALUES (?, 'running', ?, ?, ?, ?)",
                (run, ts, seq, seq, ts),
            )
            self._known_runs.add(run)
        self._counters[run] = [1, 0, 0, 0, 0, seq, ts]

    def apply(self, change: p.AnyChange) -> None:
        conn = self.conn
        match change:
            case p.TouchRun(run, seq, ts):
                counter = self._counters.get(run)
                if counter is None:
                    self._touch_new(run, seq, ts)
                else:
                    counter[0] += 1
                    counter[5] = seq
                    counter[6] = ts
            case p.AddPoints(run, ts, values, step, epoch):
                for name, value in values.items():
                    series = self._get_series(run, name)
                    if not series.dirty:
                        self._dirty_series.append(series)
                    series.add(step, epoch, value, ts)
                self._counters[run][1] += len(values)
            case p.AddItem(seq, run, ts, item):
                self._items.append(item_table_row(seq, run, ts, item))
                counter = self._counters[run]
                counter[2] += 1
                if item.status == "failed":
                    counter[3] += 1
                self._search_docs.append((seq, "item", run, *p.item_search_document(item)))
            case p.AddArtifact(seq, run, ts, art):
                self._artifacts.append(
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
                self._counters[run][4] += 1
                self._search_docs.append((seq, "artifact", run, *p.artifact_search_document(art)))
            case p.SetRunFields(run, fields):
                names = [name for name in fields if name in _RUN_COLUMNS]
                if names:
                    assignments = ", ".join(f'"{name}" = ?' for name in names)  # `user` is reserved
                    conn.execute(
                        f"UPDATE runs SET {assignments} WHERE run = ?",  # names come from _RUN_COLUMNS
                        [*(fields[name] for name in names), run],
                    )
                    self._search_runs.add(run)
            case p.MergeConfig(run, config):
                row = conn.execute("SELECT config FROM runs WHERE run = ?", (run,)).fetchone()
                merged = _json_decode(row[0]) if row and row[0] else {}
                merged.update(config)
                conn.execute("UPDATE runs SET config = ? WHERE run = ?", (json_text(merged), run))
            case p.ChangeTags(run, add, remove):
                conn.executemany(
                    "INSERT OR IGNORE INTO run_tags(run, tag) VALUES (?, ?)", [(run, t) for t in add]
                )
                conn.executemany("DELETE FROM run_tags WHERE run = ? AND tag = ?", [(run, t) for t in remove])
                self._search_runs.add(run)
            case p.SetTagValues(run, values):
                # Standard SQL upsert (SQLite 3.24+ and PostgreSQL alike).
                conn.executemany(
                    "INSERT INTO run_tags(run, tag, value) VALUES (?, ?, ?)"
                    " ON CONFLICT (run, tag) DO UPDATE SET value = excluded.value",
                    [(run, tag, value) for tag, value in values.items()],
                )
                self._search_runs.add(run)
            case p.ApplyExperiment(seq, ts, exp):
                self._apply_experiment(seq, ts, exp)
            case p.FinishRun(run, status, error, finished):
                conn.execute(
                    "UPDATE runs SET status = ?, error = ?, finished = ? WHERE run = ?",
                    (status, error, finished, run),
                )
            case p.ResumeRun(run):
                conn.execute(
                    "UPDATE runs SET status = 'running', error = NULL, finished = NULL WHERE run = ?", (run,)
                )
            case p.PutCache(key, value, expires_at, seq):
                conn.execute(
                    "INSERT OR REPLACE INTO cache(key, value, expires_at, seq) VALUES (?, ?, ?, ?)",
                    (key, value, expires_at, seq),
                )
            case p.DropCache(key):
                if key is None:
                    conn.execute("DELETE FROM cache")
                else:
                    conn.execute("DELETE FROM cache WHERE key = ?", (key,))
            case p.AddDedupEntry(seq, run, entry):
                conn.execute(
                    "INSERT INTO dedup_entries(seq, namespace, kind, space, value, run, item)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        seq,
                        entry.namespace,
                        entry.kind,
                        entry.space,
                        _msgpack_encode(entry.value),
                        run,
                        entry.item,
                    ),
                )
            case p.ClearDedup(namespace, kind):
                if kind is None:
                    conn.execute("DELETE FROM dedup_entries WHERE namespace = ?", (namespace,))
                else:
                    conn.execute(
                        "DELETE FROM dedup_entries WHERE namespace = ? AND kind = ?", (namespace, kind)
                    )
            case _:
                raise TypeError(f"unknown change {change!r}")

    def _apply_experiment(self, seq: int, ts: float, exp: ExperimentData) -> None:
        """Create the experiment (name defaulting to its id, active) or change what the event gives."""
        conn = self.conn
        conn.execute(
            "INSERT INTO experiments(experiment, name, lifecycle, artifact_location, created, updated,"
            " created_seq, updated_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (experiment) DO UPDATE SET"
            " name = COALESCE(?, experiments.name),"
            " lifecycle = COALESCE(?, experiments.lifecycle),"
            " artifact_location = COALESCE(?, experiments.artifact_location),"
            " updated = excluded.updated, updated_seq = excluded.updated_seq",
            (
                exp.experiment,
                exp.name if exp.name is not None else exp.experiment,
                exp.lifecycle or "active",
                exp.artifact_location,
                ts,
                ts,
                seq,
                seq,
                exp.name,
                exp.lifecycle,
                exp.artifact_location,
            ),
        )
        if exp.tags:
            conn.executemany(
                "INSERT INTO experiment_tags(experiment, tag, value) VALUES (?, ?, ?)"
                " ON CONFLICT (experiment, tag) DO UPDATE SET value = excluded.value",
                [(exp.experiment, tag, value) for tag, value in exp.tags.items()],
            )
        if exp.remove_tags:
            conn.executemany(
                "DELETE FROM experiment_tags WHERE experiment = ? AND tag = ?",
                [(exp.experiment, tag) for tag in exp.remove_tags],
            )

    def flush(self) -> None:
        """Write what was gathered since the last flush (inside the open transaction)."""
        conn = self.conn
        if self._items:
            conn.executemany(
                "INSERT INTO items(seq, run, item, kind, stage, iteration, status, data, path, model,"
                " backend, duration, error, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                self._items,
            )
            self._items.clear()
        if self._artifacts:
            conn.executemany(
                "INSERT INTO artifacts(seq, run, kind, path, size, digest, metadata, ts, blob)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                self._artifacts,
            )
            self._artifacts.clear()
        if self._dirty_series:
            chunk_rows: list[tuple[Any, ...]] = []
            summary_rows: list[tuple[Any, ...]] = []
            for series in self._dirty_series:
                chunk_rows.extend(series.sealed)
                series.sealed.clear()
                if series.steps:
                    chunk_rows.append(series.chunk_row())
                summary_rows.append(series.summary_row())
                series.dirty = False
            self._dirty_series.clear()
            conn.executemany(
                "INSERT OR REPLACE INTO metric_chunks(run, name, chunk, n, step_min, step_max, steps, vals,"
                " epochs, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                chunk_rows,
            )
            conn.executemany(
                "INSERT OR REPLACE INTO metric_tiers(run, name, chunk, n, step_min, step_max,"
                " lo, lo_at, lo_step, lo_epoch, lo_ts, hi, hi_at, hi_step, hi_epoch, hi_ts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [tier_row(row) for row in chunk_rows],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO metric_summaries(run, name, count, last, last_step, last_epoch,"
                " last_ts, min, min_step, min_epoch, max, max_step, max_epoch, sum, summed)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                summary_rows,
            )
            while len(self._series) > MAX_CACHED_SERIES:
                self._series.popitem(last=False)
        if self._counters:
            conn.executemany(
                "UPDATE runs SET n_events = n_events + ?, n_points = n_points + ?, n_items = n_items + ?,"
                " n_failed = n_failed + ?, n_artifacts = n_artifacts + ?, updated_seq = ?, last_ts = ?"
                " WHERE run = ?",
                [(*c, run) for run, c in self._counters.items()],
            )
            self._counters.clear()
        if self._search_docs:
            if self.fts5:
                self._drop_stale_documents([d[0] for d in self._search_docs])
            conn.executemany(
                "INSERT OR REPLACE INTO search_docs(doc, kind, run, title, body) VALUES (?, ?, ?, ?, ?)",
                self._search_docs,
            )
            if self.fts5:
                conn.executemany(
                    "INSERT INTO search(rowid, title, body) VALUES (?, ?, ?)",
                    [(doc, title, body) for doc, _, _, title, body in self._search_docs],
                )
            self._search_docs.clear()
        if self._search_runs:
            self._write_run_documents()
        if len(self._known_runs) > 100_000:
            self._known_runs.clear()

    def _drop_stale_documents(self, docs: list[int]) -> None:
        """Take out of the index documents that are already there (only if the tables were
        set back by hand behind the log: a replay then writes them again)."""
        conn = self.conn
        for start in range(0, len(docs), 500):
            part = docs[start : start + 500]
            for doc, title, body in conn.execute(
                f"SELECT doc, title, body FROM search_docs WHERE doc IN ({','.join('?' * len(part))})", part
            ).fetchall():
                conn.execute(
                    "INSERT INTO search(search, rowid, title, body) VALUES ('delete', ?, ?, ?)",
                    (doc, title, body),
                )

    def _write_run_documents(self) -> None:
        """Rewrite the search document of each run whose name, notes or tags changed.

        A run's document is numbered -created_seq (items and artifacts use their own seq),
        and is made from the run's row as it stands, so it does not depend on batching.
        The FTS5 index holds no copy of the text: to take a document out of it, it is
        told the old text (the 'delete' command of external-content tables).
        """
        conn = self.conn
        for run in sorted(self._search_runs):
            row = conn.execute(
                "SELECT created_seq, name, notes, pipeline FROM runs WHERE run = ?", (run,)
            ).fetchone()
            if row is None:
                continue
            created, name, notes, pipeline = row
            tags = [t for (t,) in conn.execute("SELECT tag FROM run_tags WHERE run = ? ORDER BY tag", (run,))]
            title, body = p.run_search_document(name, notes, pipeline, tags)
            doc = -created
            old = conn.execute("SELECT title, body FROM search_docs WHERE doc = ?", (doc,)).fetchone()
            if old is not None:
                if tuple(old) == (title, body):
                    continue
                if self.fts5:
                    conn.execute(
                        "INSERT INTO search(search, rowid, title, body) VALUES ('delete', ?, ?, ?)",
                        (doc, *old),
                    )
            conn.execute(
                "INSERT OR REPLACE INTO search_docs(doc, kind, run, title, body) VALUES (?, 'run', ?, ?, ?)",
                (doc, run, title, body),
            )
            if self.fts5:
                conn.execute("INSERT INTO search(rowid, title, body) VALUES (?, ?, ?)", (doc, title, body))
        self._search_runs.clear()

    def _get_series(self, run: str, name: str) -> Series:
        key = (run, name)
        series = self._series.get(key)
        if series is not None:
            self._series.move_to_end(key)
            return series
        series = Series(run, name)
        row = self.conn.execute(
            "SELECT count, last, last_step, last_epoch, last_ts, min, min_step, min_epoch, max, max_step,"
            " max_epoch, sum, summed FROM metric_summaries WHERE run = ? AND name = ?",
            key,
        ).fetchone()
        if row is not None:
            (
                series.count,
                series.last,
                series.last_step,
                series.last_epoch,
                series.last_ts,
                series.min,
                series.min_step,
                series.min_epoch,
                series.max,
                series.max_step,
                series.max_epoch,
                total,
                series.summed,
            ) = row
            # SQLite keeps NaN as NULL: a sum that became NaN (inf + -inf) stays NaN.
            series.sum = math.nan if total is None else total
            chunk = self.conn.execute(
                "SELECT chunk, n, steps, vals, epochs, ts FROM metric_chunks WHERE run = ? AND name = ?"
                " ORDER BY chunk DESC LIMIT 1",
                key,
            ).fetchone()
            if chunk is not None:
                number, n, steps, vals, epochs, ts = chunk
                if n >= CHUNK_POINTS:
                    series.chunk = number + 1
                else:
                    series.chunk = number
                    series.steps.frombytes(steps)
                    series.vals.frombytes(vals)
                    series.epochs.frombytes(epochs)
                    series.ts.frombytes(ts)
        self._series[key] = series
        return series
