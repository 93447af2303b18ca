"""The SQLite read model: a read-only connection answering every question of `ReadModel`.

Each reader thread opens its own (`SqliteReadModel.open`). The questions' SQL lives in
the topic modules beside this one (runs, metrics, items, search, stats, cache, events,
sql); this class binds them to its connection and keeps sqlite3's exceptions inside the
storage package: a statement SQLite refuses for its size or shape, or a number beyond 64
bits, is `errors.BadQuery`; any other database failure is `errors.StorageError`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Final, TypeVar

from tracklog.protocol import errors
from tracklog.protocol.messages import Query, StoredEvent

from ..readmodel import ChunkColumns, ReadModel, Rows
from . import cache, events, experiments, items, metrics, runs, search, sql, stats
from .connect import connect
from .rows import artifact_rows, stored_blobs

_T = TypeVar("_T")

#: SQLite errors that a query causes by its size or shape (not a fault of the daemon).
QUERY_FAULTS: Final = (
    "expression tree is too large",
    "too many sql variables",
    "tables in a join",
    "like or glob pattern too complex",
    "parser stack overflow",
    "string or blob too big",
    "too many terms",
    "too many columns",
    "bad json path",
    "malformed json",
    "json path error",
)
#: Pages of cache (in KiB, as SQLite's negative cache_size) for a model that reads once.
SCAN_CACHE_KIB: Final = 2048


def sqlite_path(url: str) -> str:
    """The file a `sqlite:///path` URL (or a plain path) names."""
    for prefix in ("sqlite:///", "sqlite://"):
        if url.startswith(prefix):
            rest = url[len(prefix) :]
            return "/" + rest if prefix == "sqlite:///" and not rest.startswith("/") else rest
    return url


def translate(exc: sqlite3.Error | OverflowError, what: str) -> errors.TracklogError:
    """The project's exception for a driver error raised while answering `what`."""
    if isinstance(exc, OverflowError):
        return errors.BadQuery(f"{what}: a number is out of range (64-bit integers): {exc}")
    text = str(exc)
    if any(fault in text.lower() for fault in QUERY_FAULTS):
        return errors.BadQuery(f"{what}: the database refuses this query as too large or complex: {text}")
    return errors.StorageError(f"query failed: {exc}")


class _Snapshot:
    """One read transaction on a connection, translating sqlite3's errors raised inside it.

    A class rather than a generator-based context manager: it is entered once per query,
    and this costs a fraction of the generator's overhead.
    """

    __slots__ = ("conn", "what")

    def __init__(self, conn: sqlite3.Connection, what: str) -> None:
        self.conn = conn
        self.what = what

    def __enter__(self) -> None:
        try:
            self.conn.execute("BEGIN")
        except sqlite3.Error as exc:
            raise translate(exc, self.what) from exc

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as failed:
            if exc is None:
                raise translate(failed, self.what) from failed
        if isinstance(exc, (sqlite3.Error, OverflowError)):
            raise translate(exc, self.what) from exc


class SqliteReadModel(ReadModel):
    """The read model on one read-only SQLite connection (WAL: readers never wait on the writer)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    @classmethod
    def open(cls, path: str, *, scan: bool = False) -> SqliteReadModel:
        """A read-only connection to the database at path; with `scan`, a small page cache."""
        try:
            conn = connect(path, readonly=True)
            if scan:
                conn.execute(f"PRAGMA cache_size = -{SCAN_CACHE_KIB}")
        except sqlite3.Error as exc:
            raise errors.StorageError(f"cannot open {path} for reading: {exc}") from exc
        return cls(conn)

    def close(self) -> None:
        self.conn.close()

    def _call(self, fn: Callable[..., _T], *args: Any, what: str = "query") -> _T:
        try:
            return fn(self.conn, *args)
        except (sqlite3.Error, OverflowError) as exc:
            raise translate(exc, what) from exc

    def snapshot(self, what: str = "query") -> _Snapshot:
        return _Snapshot(self.conn, what)

    def applied_seq(self) -> int:
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'applied_seq'").fetchone()
        except sqlite3.Error as exc:
            raise translate(exc, "query") from exc
        return int(row[0]) if row and row[0] is not None else 0

    # -- the questions ----------------------------------------------------------------------

    def events(self, q: Query) -> Rows:
        return self._call(events.query_events, q, what=q.q)

    def runs(self, q: Query) -> Rows:
        return self._call(runs.query_runs, q, what=q.q)

    def run(self, q: Query) -> Rows:
        return self._call(runs.query_run, q, what=q.q)

    def resolve(self, q: Query) -> Rows:
        return self._call(runs.query_resolve, q, what=q.q)

    def metrics(self, q: Query) -> Rows:
        return self._call(metrics.query_metrics, q, what=q.q)

    def compare(self, q: Query) -> Rows:
        return self._call(metrics.query_compare, q, what=q.q)

    def best(self, q: Query) -> Rows:
        return self._call(runs.query_best, q, what=q.q)

    def items(self, q: Query) -> Rows:
        return self._call(items.query_items, q, what=q.q)

    def item_facets(self, q: Query) -> Rows:
        return self._call(items.query_item_facets, q, what=q.q)

    def artifacts(self, q: Query) -> Rows:
        return self._call(items.query_artifacts, q, what=q.q)

    def search(self, q: Query) -> Rows:
        return self._call(search.query_search, q, what=q.q)

    def stats(self, q: Query) -> Rows:
        return self._call(stats.query_stats, q, what=q.q)

    def experiments(self, q: Query) -> Rows:
        return self._call(experiments.query_experiments, q, what=q.q)

    def cache(self, q: Query, now: float) -> Rows:
        return self._call(cache.query_cache, q, now, what=q.q)

    def sql(self, q: Query) -> Rows:
        return self._call(sql.query_sql, q, what=q.q)

    def schema(self, q: Query) -> Rows:
        return self._call(sql.query_schema, q, what=q.q)

    # -- the daemon's own reads -------------------------------------------------------------

    def scan_events(
        self,
        after: int,
        limit: int,
        runs: frozenset[str] | None,
        types: frozenset[str] | None,
        pipelines: frozenset[str] | None,
    ) -> tuple[list[StoredEvent], int, int]:
        return self._call(events.scan_events, after, limit, runs, types, pipelines, what="subscribe")

    def run_pipelines(self) -> tuple[dict[str, str | None], dict[str, str]]:
        return self._call(runs.run_pipelines)

    # -- export rows ------------------------------------------------------------------------

    def run_summary(self, run: str) -> dict[str, Any]:
        rows, _ = self._call(runs.query_run, Query(q="run", run=run), what="export")
        summary: dict[str, Any] = dict(rows[0])
        summary.pop("artifacts", None)
        return summary

    def metric_names(self, run: str) -> list[tuple[str, int]]:
        return self._call(metrics.metric_names, run, what="export")

    def metric_chunks(self, run: str, name: str) -> Iterator[ChunkColumns]:
        # A generator: its reads happen as it is consumed, inside the caller's snapshot.
        return metrics.metric_chunks(self.conn, run, name)

    def item_rows(self, run: str) -> Iterator[dict[str, Any]]:
        return items.item_rows(self.conn, run)

    def artifact_rows(self, run: str) -> list[dict[str, Any]]:
        return self._call(artifact_rows, run, what="export")

    def stored_blobs(self) -> list[dict[str, Any]]:
        return self._call(stored_blobs, what="verify")
