"""Read-only queries, answered on read-only connections from a small thread pool.

Each query runs in one read transaction, so its rows and the `seq` it reports come from
the same snapshot: a subscriber can follow on from that seq with no gap.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import msgspec

from tracklog.protocol import errors
from tracklog.protocol.limits import MAX_QUERY_LIMIT
from tracklog.protocol.messages import Query, Result, StoredEvent

from . import reads
from .runref import resolve
from .sqlquery import query_sql
from .schema import NO_EPOCH
from .store import connect, read_events

_json_decode = msgspec.json.Decoder().decode
_msgpack_decode = msgspec.msgpack.Decoder().decode
READERS: Final = 2

QueryHandler = Callable[[sqlite3.Connection, Query], tuple[list[Any], int | None]]


def _epoch(value: int | None) -> int | None:
    return None if value is None or value == NO_EPOCH else value


def _limit(q: Query, default: int) -> int:
    limit = default if q.limit is None else q.limit
    if limit < 0 or limit > MAX_QUERY_LIMIT:
        raise errors.BadQuery(f"limit: expected 0 to {MAX_QUERY_LIMIT}", q.ref)
    return limit


def query_events(conn: sqlite3.Connection, q: Query) -> tuple[list[Any], int | None]:
    from_seq = q.from_seq or 0
    if from_seq < 0:
        raise errors.BadQuery("from_seq: expected 0 or more", q.ref)
    rows = read_events(conn, from_seq, _limit(q, 1000), q.run, q.types)
    return rows, None


_RUN_COLUMNS: Final = (
    "run, name, pipeline, user, host, session, notes, parent, status, error, config, started, finished,"
    " created_seq, updated_seq, last_ts, deleted, n_events, n_points, n_items, n_failed, n_artifacts"
)


def run_row(row: sqlite3.Row | tuple[Any, ...], names: list[str]) -> dict[str, Any]:
    out = dict(zip(names, row, strict=True))
    out["id"] = out.pop("run")
    out["config"] = _json_decode(out["config"]) if out["config"] else {}
    out["deleted"] = bool(out["deleted"])
    return out


def query_run(conn: sqlite3.Connection, q: Query) -> tuple[list[Any], int | None]:
    if not q.run:
        raise errors.BadQuery("run: required for q 'run'", q.ref)
    run = resolve(conn, q.run, "run", q.ref).id
    cur = conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run = ?", (run,))
    row = cur.fetchone()
    names = [d[0] for d in cur.description]
    out = run_row(row, names)
    out["tags"] = [t for (t,) in conn.execute("SELECT tag FROM run_tags WHERE run = ? ORDER BY tag", (run,))]
    metrics: dict[str, Any] = {}
    for (
        name,
        count,
        last,
        last_step,
        last_epoch,
        last_ts,
        mn,
        mn_step,
        mn_epoch,
        mx,
        mx_step,
        mx_epoch,
        total,
        summed,
    ) in conn.execute(
        "SELECT name, count, last, last_step, last_epoch, last_ts, min, min_step, min_epoch, max, max_step,"
        " max_epoch, sum, summed FROM metric_summaries WHERE run = ? ORDER BY name",
        (run,),
    ):
        metrics[name] = {
            "count": count,
            # SQLite stores NaN as NULL; only `last` can be NaN (min and max skip it).
            "last": math.nan if last is None and count else last,
            "last_step": last_step,
            "last_epoch": _epoch(last_epoch),
            "last_ts": last_ts,
            "min": mn,
            "min_step": mn_step,
            "min_epoch": _epoch(mn_epoch),
            "max": mx,
            "max_step": mx_step,
            "max_epoch": _epoch(mx_epoch),
            "mean": reads.metric_mean(total, summed),
        }
    out["metrics"] = metrics
    out["artifacts"] = artifacts_of(conn, run)
    return [out], 1


def query_resolve(conn: sqlite3.Connection, q: Query) -> tuple[list[Any], int | None]:
    """The run a reference names (`run`: an id, a unique id prefix or a name), and how it
    matched: `{ref, id, name, deleted, by, same_name}`; not_found, or bad_query when ambiguous."""
    return [msgspec.structs.asdict(resolve(conn, q.run, "run", q.ref))], 1


def artifacts_of(conn: sqlite3.Connection, run: str) -> list[dict[str, Any]]:
    return [
        {
            "seq": seq,
            "kind": kind,
            "path": path,
            "size": size,
            "digest": digest,
            "metadata": _json_decode(meta) if meta else None,
            "ts": ts,
        }
        for seq, kind, path, size, digest, meta, ts in conn.execute(
            "SELECT seq, kind, path, size, digest, metadata, ts FROM artifacts WHERE run = ? ORDER BY seq",
            (run,),
        )
    ]


def query_cache(conn: sqlite3.Connection, q: Query, now: float | None = None) -> tuple[list[Any], int | None]:
    """The entry under q.key, unless absent or expired at `now` (default: the time now)."""
    if not q.key:
        raise errors.BadQuery("key: required for q 'cache'", q.ref)
    row = conn.execute("SELECT value, expires_at FROM cache WHERE key = ?", (q.key,)).fetchone()
    if row is None or (row[1] is not None and row[1] <= (time.time() if now is None else now)):
        return [], 0
    return [{"key": q.key, "value": _msgpack_decode(row[0]), "expires_at": row[1]}], 1


#: Seqs a catch-up read looks through at most, so a narrow filter over a long log still
#: answers in bounded time (and reports how far it looked).
SCAN_WINDOW: Final = 20_000


def scan_events(
    conn: sqlite3.Connection,
    after: int,
    limit: int,
    runs: frozenset[str] | None,
    types: frozenset[str] | None,
    pipelines: frozenset[str] | None,
) -> tuple[list[Any], int, int]:
    """Matching events after `after`: (events, the seq read up to, the log's head)."""
    conn.execute("BEGIN")
    try:
        head = conn.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
        end = min(head, after + SCAN_WINDOW)
        where = ["seq > ?", "seq <= ?"]
        args: list[Any] = [after, end]
        if runs is not None:
            where.append(f"run IN ({','.join('?' * len(runs))})")
            args.extend(runs)
        if types is not None:
            where.append(f"type IN ({','.join('?' * len(types))})")
            args.extend(types)
        if pipelines is not None:
            where.append(
                f"run IN (SELECT run FROM runs WHERE pipeline IN ({','.join('?' * len(pipelines))}))"
            )
            args.extend(pipelines)
        args.append(limit)
        rows = conn.execute(
            f"SELECT seq, id, type, run, ts, recorded, data FROM events WHERE {' AND '.join(where)}"
            " ORDER BY seq LIMIT ?",
            args,
        ).fetchall()
    finally:
        conn.execute("COMMIT")
    events = [
        StoredEvent(seq, type_, _msgpack_decode(blob), recorded, ts, id_, run)
        for seq, id_, type_, run, ts, recorded, blob in rows
    ]
    scanned_to = events[-1].seq if len(events) >= limit else end
    return events, scanned_to, head


def run_pipelines(conn: sqlite3.Connection) -> tuple[dict[str, str | None], dict[str, str]]:
    """Every run's pipeline and status, for the hub's filters and the liveness check."""
    pipelines: dict[str, str | None] = {}
    statuses: dict[str, str] = {}
    for run, pipeline, status in conn.execute("SELECT run, pipeline, status FROM runs"):
        pipelines[run] = pipeline
        statuses[run] = status
    return pipelines, statuses


HANDLERS: Final[dict[str, QueryHandler]] = {
    "events": query_events,
    "run": query_run,
    "resolve": query_resolve,
    "cache": query_cache,
    "sql": query_sql,
    **reads.HANDLERS,
}


#: Integer fields of a query: SQLite holds 64-bit integers, so a larger one cannot be asked about.
_INTEGER_FIELDS: Final = ("limit", "offset", "max_points", "step_from", "step_to", "from_seq")
#: List fields of a query, and how many entries each may hold.
_LIST_FIELDS: Final = ("runs", "names", "metrics", "types", "order_by")
MAX_LIST_ENTRIES: Final = 1000
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
#: SQLite errors that a query causes by its size or shape (not a fault of the daemon).
_QUERY_FAULTS: Final = (
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


def check_query_fields(q: Query) -> None:
    """Refuse integers beyond 64 bits and overlong lists before any SQL sees them."""
    for name in _INTEGER_FIELDS:
        value = getattr(q, name)
        if value is not None and not _INT64_MIN <= value <= _INT64_MAX:
            raise errors.BadQuery(f"{name}: {str(value)[:40]} is out of range (64-bit integers)", q.ref)
    for name in _LIST_FIELDS:
        value = getattr(q, name)
        if value is not None and len(value) > MAX_LIST_ENTRIES:
            raise errors.BadQuery(f"{name}: more than {MAX_LIST_ENTRIES} entries", q.ref)


def answer(conn: sqlite3.Connection, q: Query, clock: Callable[[], float] = time.time) -> Result:
    """Answer one query in one read transaction; `clock` decides what has expired in the cache.

    A query SQLite refuses for its size or shape (too deep, too many values or joins, a
    number out of range) is `bad_query`; only other database failures are `internal`.
    """
    handler = HANDLERS.get(q.q)
    if handler is None:
        raise errors.BadQuery(
            f"q: unknown query '{q.q[:64]}', expected one of {', '.join(sorted(HANDLERS))}", q.ref
        )
    check_query_fields(q)
    conn.execute("BEGIN")
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'applied_seq'").fetchone()
        seq = int(row[0]) if row and row[0] is not None else 0
        rows, total = query_cache(conn, q, clock()) if handler is query_cache else handler(conn, q)
    except OverflowError as exc:
        raise errors.BadQuery(f"{q.q}: a number is out of range (64-bit integers): {exc}", q.ref) from exc
    except sqlite3.Error as exc:
        text = str(exc)
        if any(fault in text.lower() for fault in _QUERY_FAULTS):
            raise errors.BadQuery(
                f"{q.q}: the database refuses this query as too large or complex: {text}", q.ref
            ) from exc
        raise errors.InternalError(f"query failed: {exc}", q.ref) from exc
    finally:
        conn.execute("COMMIT")
    return Result(seq=seq, rows=rows, total=total, ref=q.ref)


class Readers:
    """A few threads, each with its own read-only connection."""

    def __init__(self, path: str, threads: int = READERS, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._local = threading.local()
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tracklog-reader")
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, readonly=True)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _answer(self, q: Query) -> Result:
        return answer(self._conn(), q, self.clock)

    async def query(self, q: Query) -> Result:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._answer, q)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(connection, *args) on a reader thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: fn(self._conn(), *args)
        )

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
