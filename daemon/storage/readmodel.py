"""The read model: every question the daemon answers about its store, one method each.

The daemon's readers (`daemon/queries.py`) hold a `ReadModel` per thread and never see
SQL or a database connection: each query runs inside `snapshot()`, so its rows and the
`applied_seq()` it reports come from one consistent state, and a subscriber can follow on
from that seq with no gap. A backend translates its driver's errors at this boundary: a
query's own fault (too large, too deep, a number out of range) is `errors.BadQuery`,
anything else `errors.StorageError`.

Query methods take the protocol's `Query` and return `(rows, total)`: the rows are the
plain values the wire carries, the total how many match in all (None when not counted).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, Final, TypeAlias

from tracklog.protocol.messages import Query, StoredEvent

#: Pages of the questions that page: the default size and the most one page may hold.
DEFAULT_RUNS: Final = 100
MAX_RUNS: Final = 1000
DEFAULT_ITEMS: Final = 100
MAX_ITEMS: Final = 10_000
DEFAULT_SEARCH: Final = 20
MAX_SEARCH: Final = 1000
DEFAULT_EXPERIMENTS: Final = 1000
MAX_EXPERIMENTS: Final = 50_000

#: What a query answers: its rows, and how many match in all (None when not counted).
Rows: TypeAlias = tuple[list[Any], int | None]
#: One chunk of a metric's history as plain lists: (steps, values, epochs, ts).
ChunkColumns: TypeAlias = tuple[list[int], list[float], list[int | None], list[float]]


class ReadModel(ABC):
    """One reader's view of the store. Not shared between threads: each reader opens its own."""

    # -- consistency ------------------------------------------------------------------

    @abstractmethod
    def snapshot(self, what: str = "query") -> AbstractContextManager[None]:
        """One read transaction: every read inside sees the same state. `what` names the
        question in the BadQuery a refused query becomes."""

    @abstractmethod
    def applied_seq(self) -> int:
        """The seq of the last event the read model has applied (0 for an empty store)."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection or whatever else the model holds."""

    def database_bytes(self) -> int | None:
        """The database's size for `/metrics`, where only the database can tell it (None: the
        daemon measures the file itself, without a query)."""
        return None

    # -- the questions of the protocol (q names) -----------------------------------------

    @abstractmethod
    def events(self, q: Query) -> Rows:
        """Stored events from `from_seq` on, of a run and of some types."""

    @abstractmethod
    def runs(self, q: Query) -> Rows:
        """A page of run summaries matching the filter, in the order asked, and the total."""

    @abstractmethod
    def run(self, q: Query) -> Rows:
        """One run with its tags, metric summaries and artifacts."""

    @abstractmethod
    def resolve(self, q: Query) -> Rows:
        """The run a reference names and how it matched (id, name or id prefix)."""

    @abstractmethod
    def metrics(self, q: Query) -> Rows:
        """A run's metric histories as columns, downsampled on request, each with its summary."""

    @abstractmethod
    def compare(self, q: Query) -> Rows:
        """Per run and metric: the metric's summary, for several runs side by side."""

    @abstractmethod
    def best(self, q: Query) -> Rows:
        """The run with the lowest or highest value of a metric."""

    @abstractmethod
    def items(self, q: Query) -> Rows:
        """Items, oldest first, of a run or of all, by stage and status."""

    @abstractmethod
    def item_facets(self, q: Query) -> Rows:
        """A run's item stages, statuses, models, backends and kinds, each value with its count,
        failures and mean duration (the console's item filters and per-stage summary)."""

    @abstractmethod
    def artifacts(self, q: Query) -> Rows:
        """A run's artifacts, oldest first."""

    @abstractmethod
    def search(self, q: Query) -> Rows:
        """Runs, items and artifacts whose text matches, best first, each with a snippet."""

    @abstractmethod
    def stats(self, q: Query) -> Rows:
        """Counts, sizes and the ingest rate of the store, or one run's items by stage."""

    @abstractmethod
    def experiments(self, q: Query) -> Rows:
        """Experiments, oldest first, with their tags and run counts: those of `q.experiments`
        (ids) or `q.names` when given, deleted ones only with `q.deleted`; paged."""

    @abstractmethod
    def cache(self, q: Query, now: float) -> Rows:
        """The cache entry under `q.key`, unless absent or expired at `now`."""

    @abstractmethod
    def sql(self, q: Query) -> Rows:
        """One read-only SQL statement, for people (`tracklog sql`, `tracklog schema`)."""

    @abstractmethod
    def schema(self, q: Query) -> Rows:
        """One row describing the store: `{tables: {table: [{name, type, notnull, pk}]}, ddl: [...]}`."""

    # -- the daemon's own reads -----------------------------------------------------------

    @abstractmethod
    def scan_events(
        self,
        after: int,
        limit: int,
        runs: frozenset[str] | None,
        types: frozenset[str] | None,
        pipelines: frozenset[str] | None,
    ) -> tuple[list[StoredEvent], int, int]:
        """Matching events after `after`, looking through a bounded window of seqs:
        (events, the seq read up to, the log's head). A subscription's catch-up."""

    @abstractmethod
    def run_pipelines(self) -> tuple[dict[str, str | None], dict[str, str]]:
        """Every run's pipeline and status, for the hub's filters and the liveness check."""

    # -- rows of a run export (read inside one snapshot, a piece at a time) ----------------

    @abstractmethod
    def run_summary(self, run: str) -> dict[str, Any]:
        """The run's fields as the `run` query gives them, without its artifacts."""

    @abstractmethod
    def metric_names(self, run: str) -> list[tuple[str, int]]:
        """The run's metrics and their point counts, by name."""

    @abstractmethod
    def metric_chunks(self, run: str, name: str) -> Iterator[ChunkColumns]:
        """Each stored chunk of a metric as plain columns, in logging order."""

    @abstractmethod
    def item_rows(self, run: str) -> Iterator[dict[str, Any]]:
        """The run's items, oldest first, read a page at a time."""

    @abstractmethod
    def artifact_rows(self, run: str) -> list[dict[str, Any]]:
        """The run's artifacts, oldest first."""

    @abstractmethod
    def stored_blobs(self) -> list[dict[str, Any]]:
        """Every artifact whose bytes are in the artifact store, `{run, path, size, blob}`
        (what verify and backup check), oldest first."""


def open_read_model(url: str, *, scan: bool = False) -> ReadModel:
    """A read model on the store at `url`: an SQLite file path or a `sqlite:///` URL, or a
    `postgresql://` (`postgres://`) URL.

    With `scan`, the model is set up to read once, front to back (an export): on SQLite a
    small page cache, since a large one would only hold memory.

    `memory:` is refused: a log in memory belongs to the process holding it, so its read
    model comes from that `MemoryBackend` (`backend.open_read_model()`), not from a URL.
    """
    from . import MEMORY_URL, is_postgres_url

    if url == MEMORY_URL:
        from tracklog.protocol import errors

        raise errors.StorageError(
            "memory: a log held in memory has no URL another reader can open; ask the backend holding it"
        )

    if is_postgres_url(url):
        from .postgres.readmodel import PgReadModel

        return PgReadModel.open(url)
    from .sqlite.readmodel import SqliteReadModel, sqlite_path

    return SqliteReadModel.open(sqlite_path(url), scan=scan)
