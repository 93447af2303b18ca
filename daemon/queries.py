"""Read-only queries, answered by a small pool of reader threads, each with its own ReadModel.

Each query runs in one snapshot of the read model, so its rows and the `seq` it reports
come from the same state: a subscriber can follow on from that seq with no gap. This
module only checks a query's fields and routes it to the ReadModel method of its name;
what a question reads, and how, is the storage backend's (`daemon/storage/`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

from tracklog.protocol import errors
from tracklog.protocol.messages import Query, Result

from .storage.readmodel import ReadModel, Rows

READERS: Final = 2
_T = TypeVar("_T")

#: Every question a `query` may ask, by its `q` name.
QUERIES: Final = frozenset(
    {
        "events",
        "run",
        "resolve",
        "cache",
        "sql",
        "schema",
        "runs",
        "metrics",
        "compare",
        "best",
        "items",
        "item_facets",
        "artifacts",
        "search",
        "stats",
        "experiments",
    }
)

#: Integer fields of a query: storage holds 64-bit integers, so a larger one cannot be asked about.
_INTEGER_FIELDS: Final = ("limit", "offset", "max_points", "step_from", "step_to", "from_seq")
#: List fields of a query, and how many entries each may hold.
_LIST_FIELDS: Final = ("runs", "names", "metrics", "types", "order_by", "experiments")
MAX_LIST_ENTRIES: Final = 1000
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


def check_query_fields(q: Query) -> None:
    """Refuse integers beyond 64 bits and overlong lists before any storage sees them."""
    for name in _INTEGER_FIELDS:
        value = getattr(q, name)
        if value is not None and not _INT64_MIN <= value <= _INT64_MAX:
            raise errors.BadQuery(f"{name}: {str(value)[:40]} is out of range (64-bit integers)", q.ref)
    for name in _LIST_FIELDS:
        value = getattr(q, name)
        if value is not None and len(value) > MAX_LIST_ENTRIES:
            raise errors.BadQuery(f"{name}: more than {MAX_LIST_ENTRIES} entries", q.ref)


def dispatch(model: ReadModel, q: Query, now: float) -> Rows:
    """The rows of the ReadModel method `q.q` names; `now` decides what has expired in the cache."""
    match q.q:
        case "events":
            return model.events(q)
        case "run":
            return model.run(q)
        case "resolve":
            return model.resolve(q)
        case "cache":
            return model.cache(q, now)
        case "sql":
            return model.sql(q)
        case "schema":
            return model.schema(q)
        case "runs":
            return model.runs(q)
        case "metrics":
            return model.metrics(q)
        case "compare":
            return model.compare(q)
        case "best":
            return model.best(q)
        case "items":
            return model.items(q)
        case "item_facets":
            return model.item_facets(q)
        case "artifacts":
            return model.artifacts(q)
        case "search":
            return model.search(q)
        case "stats":
            return model.stats(q)
        case "experiments":
            return model.experiments(q)
    raise errors.BadQuery(
        f"q: unknown query '{q.q[:64]}', expected one of {', '.join(sorted(QUERIES))}", q.ref
    )


def answer(model: ReadModel, q: Query, clock: Callable[[], float] = time.time) -> Result:
    """Answer one query in one snapshot; `clock` decides what has expired in the cache.

    A query the backend refuses for its size or shape (too deep, too many values or
    joins, a number out of range) is `bad_query`; only other storage failures are `internal`.
    """
    if q.q not in QUERIES:
        dispatch(model, q, 0.0)  # raises the unknown-query error
    check_query_fields(q)
    try:
        with model.snapshot(q.q):
            seq = model.applied_seq()
            rows, total = dispatch(model, q, clock())
    except errors.BadQuery as exc:
        if exc.ref is None and q.ref is not None:
            raise errors.BadQuery(exc.message, q.ref) from exc
        raise
    except errors.StorageError as exc:
        raise errors.InternalError(str(exc), q.ref) from exc
    return Result(seq=seq, rows=rows, total=total, ref=q.ref)


class Readers:
    """A few threads, each with its own ReadModel, opened by `open_model` on first use."""

    def __init__(
        self,
        open_model: Callable[[], ReadModel],
        threads: int = READERS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.open_model = open_model
        self.clock = clock
        self._local = threading.local()
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tracklog-reader")
        self._models: list[ReadModel] = []
        self._lock = threading.Lock()

    def model(self) -> ReadModel:
        """This thread's ReadModel (opened on first use)."""
        model: ReadModel | None = getattr(self._local, "model", None)
        if model is None:
            model = self.open_model()
            self._local.model = model
            with self._lock:
                self._models.append(model)
        return model

    def _answer(self, q: Query) -> Result:
        return answer(self.model(), q, self.clock)

    async def query(self, q: Query) -> Result:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._answer, q)

    async def call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run fn(model, *args) on a reader thread, with that thread's ReadModel."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: fn(self.model(), *args)
        )

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            for model in self._models:
                model.close()
            self._models.clear()
