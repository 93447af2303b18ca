"""The read model over SQL, written once for SQLite and PostgreSQL.

`SqlReadModel` binds the questions whose SQL every database shares (the topic modules
beside this one: runs, metrics, items, stats, cache, events, runref) to a connection
spelled by its dialect. A backend subclasses it with what cannot be shared: its
connection and snapshot, the translation of its driver's errors (`_call`), full-text
search, the `sql` and `schema` questions, and how it measures its sizes for `stats`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from tracklog.protocol.messages import Query, StoredEvent

from ..readmodel import ChunkColumns, ReadModel, Rows
from . import cache, events, experiments, items, metrics, runs, stats
from .dialect import Connection, Dialect
from .rows import artifact_rows, stored_blobs

_T = TypeVar("_T")


class SqlReadModel(ReadModel):
    """The questions of `ReadModel` on one connection; the backend supplies the rest."""

    conn: Connection
    dialect: Dialect

    @abstractmethod
    def _call(self, fn: Callable[..., _T], *args: Any, what: str = "query") -> _T:
        """fn(conn, *args), the driver's errors translated for the question `what`."""

    @abstractmethod
    def sizes(self, conn: Connection, head: int) -> dict[str, Any]:
        """`database_bytes`, `wal_bytes`, `log_bytes` and `log_bytes_exact` for `stats`."""

    def applied_seq(self) -> int:
        return self._call(_applied_seq)

    # -- the questions ----------------------------------------------------------------------

    def events(self, q: Query) -> Rows:
        return self._call(events.query_events, q, what=q.q)

    def runs(self, q: Query) -> Rows:
        return self._call(runs.query_runs, q, self.dialect, what=q.q)

    def run(self, q: Query) -> Rows:
        return self._call(runs.query_run, q, what=q.q)

    def resolve(self, q: Query) -> Rows:
        return self._call(runs.query_resolve, q, what=q.q)

    def metrics(self, q: Query) -> Rows:
        return self._call(metrics.query_metrics, q, what=q.q)

    def compare(self, q: Query) -> Rows:
        return self._call(metrics.query_compare, q, what=q.q)

    def best(self, q: Query) -> Rows:
        return self._call(runs.query_best, q, self.dialect, what=q.q)

    def items(self, q: Query) -> Rows:
        return self._call(items.query_items, q, what=q.q)

    def item_facets(self, q: Query) -> Rows:
        return self._call(items.query_item_facets, q, what=q.q)

    def artifacts(self, q: Query) -> Rows:
        return self._call(items.query_artifacts, q, what=q.q)

    def stats(self, q: Query) -> Rows:
        return self._call(stats.query_stats, q, self.sizes, what=q.q)

    def experiments(self, q: Query) -> Rows:
        return self._call(experiments.query_experiments, q, what=q.q)

    def cache(self, q: Query, now: float) -> Rows:
        return self._call(cache.query_cache, q, now, what=q.q)

    # -- the daemon's own reads -------------------------------------------------------------

    def scan_events(
        self,
        after: int,
        limit: int,
        runs: frozenset[str] | None,
        types: frozenset[str] | None,
        pipelines: frozenset[str] | None,
    ) -> tuple[list[StoredEvent], int, int]:
        with self.snapshot("subscribe"):
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


def _applied_seq(conn: Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'applied_seq'").fetchone()
    return int(row[0]) if row and row[0] is not None else 0
