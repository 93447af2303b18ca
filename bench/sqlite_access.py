"""SQLite from asyncio, two ways: aiosqlite (an `await` per statement) against one thread per
connection running a whole transaction in one hop (what daemon/writer.py and daemon/queries.py do).

    python bench/sqlite_access.py            # 100 groups of 1,000 events, 2,000 runs to query
    python bench/sqlite_access.py --quick    # a small run, under a minute
    python bench/sqlite_access.py --reps 5   # more repetitions (the median is reported)

Both ways run the same statements with the same parameters. They are recorded from the
daemon's own code, through a connection that notes every execute and executemany and
passes it on: `SqliteEventLog.append_group` for writes (the events rows, the metric chunks,
tiers and summaries, the run counters, the projections' position, inside BEGIN IMMEDIATE
... COMMIT), `queries.answer` with the real handlers for reads (in one read transaction).
Then each recorded transaction is replayed on a fresh database of the daemon's schema:

- aiosqlite: an `await` per statement (`execute`, `executemany`, `execute_fetchall` for
  the reads, `commit`), on an aiosqlite connection made by `store.connect`;
- thread: the whole transaction in one `run_in_executor` call, on a dedicated thread with
  a plain sqlite3 connection made by `store.connect` (reads through the daemon's `Readers`).

So both sides use the same settings (WAL, synchronous=NORMAL, the same cache), checked by
reading the pragmas back, and after each write replay the tables are compared with those
the real store wrote. Python work of the daemon between statements (decoding, projecting,
building answers) is not in the replay: it is the same either way, and is shown apart
(`real SqliteEventLog.append_group`, `thread, real handler`) for scale.

Measured: group commit of 1,000 metric events (4 appends of 250, as 4 clients would send
them); 1, 10 and 100 tasks each committing appends of 10 events (a transaction each, one
connection, so a transaction's statements cannot interleave with another's); and three
real queries (a `runs` page with a metric filter and ordering, a run's metric histories, the
`stats` aggregate) with 1 and 8 concurrent callers over 2 connections each way. The sides
take turns in small pieces (a group, a round of 2 appends per run, a block of 50 queries),
the first one changing each turn, so a burst of load from elsewhere on the machine hits
both; each measurement is repeated `--reps` times and the median reported. `extra per
await` is how much longer the aiosqlite side took per statement beyond the first: the cost
of one hop between the event loop and the connection's thread. Results go to
bench/results/sqlite_access.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, cast

sys.path.insert(0, str(Path(__file__).parent))
from _common import LogBuilder, add_finished_run
from _daemon import machine

from tracklog.daemon import queries
from tracklog.daemon.storage.eventlog import AppendResult
from tracklog.daemon.storage.sqlite.connect import connect
from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog
from tracklog.daemon.storage.sqlite.readmodel import SqliteReadModel
from tracklog.protocol.events import (
    Metrics,
    MetricsData,
)
from tracklog.protocol.messages import Append, Query

try:
    import aiosqlite
except ImportError:  # pragma: no cover - a hint, not a failure mode to test
    aiosqlite = None

RESULTS: Final = Path(__file__).parent / "results" / "sqlite_access.json"

# How a recorded statement is replayed: executemany, execute and read every row, commit, execute.
MANY: Final = "many"
ROWS: Final = "rows"
COMMIT: Final = "commit"
EXEC: Final = "exec"

Statement = tuple[str, str, Any]
Transaction = list[Statement]

READ_PREFIXES: Final = ("SELECT", "PRAGMA", "WITH")
#: The connection pragmas both sides must share (read back and compared).
PRAGMAS: Final = (
    "journal_mode",
    "synchronous",
    "cache_size",
    "temp_store",
    "busy_timeout",
    "wal_autocheckpoint",
)


# -- recording ----------------------------------------------------------------------------


class RecordingConnection:
    """Stands in for a sqlite3.Connection: runs every statement on the real one and notes it.

    Parameters are copied when noted: the store clears some of its row lists after writing them.
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.statements: Transaction = []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        head = sql.lstrip().upper()
        if head == "COMMIT":
            kind = COMMIT
        elif head.startswith(READ_PREFIXES):
            kind = ROWS
        else:
            kind = EXEC
        self.statements.append((kind, sql, tuple(params)))
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, rows: Any) -> Any:
        rows = list(rows)
        self.statements.append((MANY, sql, rows))
        return self._conn.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def take(self) -> Transaction:
        """The statements noted since the last take."""
        out, self.statements = self.statements, []
        return out


def new_database(path: Path) -> None:
    """A database of the daemon's schema with empty projections, made by SqliteEventLog itself."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    store = SqliteEventLog(path)
    store.catch_up()
    store.close()


def recording_store(path: Path) -> tuple[SqliteEventLog, RecordingConnection]:
    """A SqliteEventLog on a new database whose statements are all noted."""
    new_database(path)
    store = SqliteEventLog(path)
    store.catch_up()
    recorder = RecordingConnection(store.conn)
    store.conn = cast(Any, recorder)
    store.tables.conn = cast(Any, recorder)
    return store, recorder


def uuid7(ms: int, rng: random.Random) -> str:
    """A time-ordered UUIDv7-like id, as the client makes them."""
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rng.getrandbits(12) << 64 | 0b10 << 62
    return str(uuid.UUID(int=value | rng.getrandbits(62)))


def metric_events(run: str, first_step: int, count: int, rng: random.Random, ts: float) -> list[Metrics]:
    """`count` metrics events of one run (two values and a step each), as bench/ingest.py sends."""
    return [
        Metrics(
            id=uuid7(int((ts + step * 1e-5) * 1000), rng),
            run=run,
            ts=ts + step * 1e-5,
            data=MetricsData(values={"loss": 1 / (step + 1), "acc": rng.random()}, step=step),
        )
        for step in range(first_step, first_step + count)
    ]


def record(store: SqliteEventLog, recorder: RecordingConnection, appends: list[Append]) -> Transaction:
    """Commit appends in one group through the real store; the statements it ran."""
    for append, result in zip(appends, store.append_group(appends), strict=True):
        if not isinstance(result, AppendResult) or result.ack.accepted != len(append.events):
            raise RuntimeError(f"the store did not accept an append: {result!r}")
    return recorder.take()


def group_appends(groups: int, clients: int, per_client: int, seed: int = 1) -> list[list[Append]]:
    """`groups` groups, each one append of `per_client` events from each of `clients` runs."""
    rng = random.Random(seed)
    ts = 1_700_000_000.0
    return [
        [
            Append(events=list(metric_events(f"run-{c}", g * per_client, per_client, rng, ts)))
            for c in range(clients)
        ]
        for g in range(groups)
    ]


def small_appends(runs: int, per_run: int, size: int, seed: int = 2) -> list[list[Append]]:
    """For each run, `per_run` appends of `size` events, in order."""
    rng = random.Random(seed)
    ts = 1_700_000_000.0
    return [
        [Append(events=list(metric_events(f"task-{r}", a * size, size, rng, ts))) for a in range(per_run)]
        for r in range(runs)
    ]


# -- replay -------------------------------------------------------------------------------


def run_in_thread(conn: Any, transaction: Transaction) -> int:
    """On the connection's thread: the whole transaction, every statement in turn."""
    rows = 0
    for kind, sql, params in transaction:
        if kind == MANY:
            conn.executemany(sql, params)
        elif kind == ROWS:
            rows += len(conn.execute(sql, params).fetchall())
        else:
            conn.execute(sql, params)
    return rows


async def run_awaiting(db: Any, transaction: Transaction) -> int:
    """Through aiosqlite: an await per statement, as code written against it would."""
    rows = 0
    for kind, sql, params in transaction:
        if kind == MANY:
            await db.executemany(sql, params)
        elif kind == ROWS:
            rows += len(await db.execute_fetchall(sql, params))
        elif kind == COMMIT:
            await db.commit()
        else:
            await db.execute(sql, params)
    return rows


def read_pragmas(conn: Any) -> dict[str, Any]:
    return {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in PRAGMAS}


async def read_pragmas_awaiting(db: Any) -> dict[str, Any]:
    return {name: (await db.execute_fetchall(f"PRAGMA {name}"))[0][0] for name in PRAGMAS}


class ThreadSide:
    """One dedicated thread owning a plain sqlite3 connection; a transaction per hop."""

    name = "thread"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-writer")
        self.conn: Any = None

    async def open(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        self.conn = await loop.run_in_executor(self.executor, connect, self.path)
        return await loop.run_in_executor(self.executor, read_pragmas, self.conn)

    async def transaction(self, statements: Transaction) -> int:
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, run_in_thread, self.conn, statements
        )

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.executor, self.conn.close)
        self.executor.shutdown(wait=True)


class AiosqliteSide:
    """One aiosqlite connection; a transaction's statements awaited one by one, one
    transaction at a time (a lock: two tasks' statements must not interleave)."""

    name = "aiosqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db: Any = None
        self.lock = asyncio.Lock()

    async def open(self) -> dict[str, Any]:
        path = self.path
        self.db = await aiosqlite.Connection(lambda: connect(path), 64)
        return await read_pragmas_awaiting(self.db)

    async def transaction(self, statements: Transaction) -> int:
        async with self.lock:
            return await run_awaiting(self.db, statements)

    async def close(self) -> None:
        await self.db.close()


def table_digest(path: Path, tables: Sequence[str]) -> str:
    """A digest of the rows of some tables, to show two databases hold the same."""
    digest = hashlib.sha256()
    conn = connect(path, readonly=True)
    try:
        for table in tables:
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2"):
                digest.update(repr(row).encode())
    finally:
        conn.close()
    return digest.hexdigest()


WRITE_TABLES: Final = ("events", "runs", "metric_chunks", "metric_tiers", "metric_summaries", "meta")


def rotated(names: Sequence[str], turn: int) -> list[str]:
    """The names in an order that moves on at each turn, so no side always goes first."""
    k = turn % len(names)
    return [*names[k:], *names[:k]]


async def open_sides(work: Path, prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both sides, each on a new database of the daemon's schema; and their pragmas."""
    sides: dict[str, Any] = {}
    pragmas: dict[str, Any] = {}
    for side_class in (AiosqliteSide, ThreadSide):
        path = work / f"{prefix}-{side_class.name}.db"
        new_database(path)
        sides[side_class.name] = side_class(path)
        pragmas[side_class.name] = await sides[side_class.name].open()
    if pragmas["aiosqlite"] != pragmas["thread"]:
        raise RuntimeError(f"the two sides' connections differ: {pragmas}")
    return sides, pragmas["thread"]


async def bench_group_commit(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Each group replayed on both sides and committed by a real store, one after the other
    (the order turning from group to group), so a burst of load elsewhere hits all three."""
    groups = group_appends(args.groups, clients=4, per_client=args.group_events // 4)
    events = sum(len(a.events) for g in groups for a in g)
    store, recorder = recording_store(work / "record-groups.db")
    recorded = [record(store, recorder, g) for g in groups]
    store.close()
    expected = table_digest(work / "record-groups.db", WRITE_TABLES)
    statements = statistics.median(len(t) for t in recorded)
    print(
        f"group commit: {args.groups} groups of {args.group_events} events, {statements:.0f} statements"
        " a group (median)"
    )
    names = ("aiosqlite", "thread", "real_store")
    reps: dict[str, list[float]] = {name: [] for name in names}
    pragmas: dict[str, Any] = {}
    for rep in range(args.reps):
        sides, pragmas = await open_sides(work, "groups")
        new_database(work / "groups-real.db")
        real = SqliteEventLog(work / "groups-real.db")
        real.catch_up()
        spent = dict.fromkeys(names, 0.0)
        for number, transaction in enumerate(recorded):
            for name in rotated(names, number + rep):
                began = time.perf_counter()
                if name == "real_store":
                    real.append_group(groups[number])
                else:
                    await sides[name].transaction(transaction)
                spent[name] += time.perf_counter() - began
        real.close()
        for name, side in sides.items():
            await side.close()
            if table_digest(side.path, WRITE_TABLES) != expected:
                raise RuntimeError(f"{name}: the replayed tables differ from those the store wrote")
        for name in names:
            reps[name].append(events / spent[name])
        print(f"  rep {rep + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} events/s" for k, v in reps.items()))
    median = {k: statistics.median(v) for k, v in reps.items()}
    return {
        "groups": args.groups,
        "events_per_group": args.group_events,
        "appends_per_group": 4,
        "statements_per_group_median": statements,
        "pragmas": pragmas,
        "events_per_s": median,
        "events_per_s_reps": reps,
        "thread_over_aiosqlite": median["thread"] / median["aiosqlite"],
        "tables_equal_to_store": True,
    }


async def replay_round(
    side: Any, per_run: list[list[Transaction]], tasks: int, positions: range, latencies: list[float]
) -> float:
    """`tasks` tasks share the runs (task i: runs i, i + tasks, ...); each commits its runs'
    appends at `positions`, in order, a transaction each. Returns the time taken."""

    async def task(number: int) -> None:
        for run in range(number, len(per_run), tasks):
            for position in positions:
                began = time.perf_counter()
                await side.transaction(per_run[run][position])
                latencies.append(time.perf_counter() - began)

    started = time.perf_counter()
    await asyncio.gather(*(task(n) for n in range(tasks)))
    return time.perf_counter() - started


async def bench_small_appends(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Small appends, a transaction each, from 1, 10 and 100 tasks. The appends go in rounds
    (each run's next 2 appends); each round runs on one side, then on the other."""
    runs = 100
    appends = small_appends(runs, args.small_per_run, args.small_size)
    store, recorder = recording_store(work / "record-small.db")
    per_run: list[list[Transaction]] = [[] for _ in range(runs)]
    for position in range(args.small_per_run):  # the runs' appends interleaved, as tasks would send them
        for run in range(runs):
            per_run[run].append(record(store, recorder, [appends[run][position]]))
    store.close()
    total = runs * args.small_per_run
    events = total * args.small_size
    statements = statistics.median(len(t) for r in per_run for t in r)
    print(
        f"small appends: {total} appends of {args.small_size} events, a transaction each,"
        f" {statements:.0f} statements each (median)"
    )
    out: dict[str, Any] = {
        "appends": total,
        "events_per_append": args.small_size,
        "statements_per_append_median": statements,
        "by_tasks": {},
    }
    names = ("aiosqlite", "thread")
    rounds = [range(start, min(start + 2, args.small_per_run)) for start in range(0, args.small_per_run, 2)]
    for tasks in (1, 10, 100):
        reps: dict[str, list[float]] = {name: [] for name in names}
        p50: dict[str, list[float]] = {name: [] for name in names}
        p99: dict[str, list[float]] = {name: [] for name in names}
        for rep in range(args.reps):
            sides, _ = await open_sides(work, "small")
            spent = dict.fromkeys(names, 0.0)
            latencies: dict[str, list[float]] = {name: [] for name in names}
            for number, positions in enumerate(rounds):
                for name in rotated(names, number + rep):
                    spent[name] += await replay_round(sides[name], per_run, tasks, positions, latencies[name])
            for name, side in sides.items():
                await side.close()
                if len(latencies[name]) != total:
                    raise RuntimeError(f"{name}: an append went missing")
                reps[name].append(events / spent[name])
                p50[name].append(percentile(latencies[name], 50) * 1e3)
                p99[name].append(percentile(latencies[name], 99) * 1e3)
        median = {k: statistics.median(v) for k, v in reps.items()}
        out["by_tasks"][str(tasks)] = {
            "events_per_s": median,
            "events_per_s_reps": reps,
            "latency_ms_p50": {k: statistics.median(v) for k, v in p50.items()},
            "latency_ms_p99": {k: statistics.median(v) for k, v in p99.items()},
            "thread_over_aiosqlite": median["thread"] / median["aiosqlite"],
            "extra_per_await_us": extra_per_await(
                {k: v / args.small_size for k, v in median.items()}, statements
            ),
        }
        print(f"  {tasks} tasks: " + ", ".join(f"{k} {v:,.0f} events/s" for k, v in median.items()))
    return out


# -- queries ------------------------------------------------------------------------------

WORDS: Final = [
    "translation",
    "fox",
    "river",
    "model",
    "tensor",
    "gradient",
    "image",
    "caption",
    "harbor",
    "mountain",
    "quantum",
    "lattice",
    "violet",
    "cipher",
    "orbit",
    "meadow",
]


def build_query_database(path: Path, runs: int, steps: int) -> None:
    """`runs` finished runs with a name, config, tag, notes, 3 metrics of `steps` points and 2 items,
    written by SqliteEventLog itself."""
    rng = random.Random(7)
    new_database(path)
    with LogBuilder(path) as log:
        for r in range(runs):
            add_finished_run(log.add, rng, f"run-{r:05d}", 1_700_000_000.0 + r, steps, WORDS)


def the_queries(runs: int) -> dict[str, Query]:
    return {
        "runs": Query(
            q="runs",
            filter="metrics.loss < 0.5 and status = 'completed'",
            order_by=["metrics.loss asc"],
            limit=50,
        ),
        "metrics": Query(q="metrics", run=f"run-{runs // 2:05d}"),
        "stats": Query(q="stats"),
    }


def record_query(path: Path, q: Query) -> Transaction:
    """The statements `queries.answer` runs for q (its read transaction included)."""
    conn = connect(path, readonly=True)
    recorder = RecordingConnection(conn)
    try:
        queries.answer(SqliteReadModel(cast(Any, recorder)), q)
    finally:
        conn.close()
    return recorder.take()


def run_on_model(model: SqliteReadModel, statements: Transaction) -> int:
    """`run_in_thread` on a reader's own connection (what `Readers.call` hands over)."""
    return run_in_thread(model.conn, statements)


class AiosqliteReaders:
    """`connections` read-only aiosqlite connections; a query holds one for its transaction.

    Callers get a connection first come, first served (as a thread pool's queue serves
    them): a returned connection goes straight to the longest waiting caller.
    """

    def __init__(self, path: Path, connections: int) -> None:
        self.path = path
        self.count = connections
        self.free: list[Any] = []
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.all: list[Any] = []

    async def open(self) -> None:
        path = self.path
        for _ in range(self.count):
            db = await aiosqlite.Connection(lambda: connect(path, readonly=True), 64)
            self.all.append(db)
            self.free.append(db)

    async def run(self, statements: Transaction) -> int:
        if self.free:
            db = self.free.pop()
        else:
            turn: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self.waiting.append(turn)
            db = await turn
        try:
            return await run_awaiting(db, statements)
        finally:
            if self.waiting:
                self.waiting.popleft().set_result(db)
            else:
                self.free.append(db)

    async def close(self) -> None:
        for db in self.all:
            await db.close()


#: Calls in a block: the sides take turns block by block.
QUERY_BLOCK: Final = 50


async def drive(call: Callable[[], Awaitable[Any]], total: int, callers: int) -> tuple[float, list[float]]:
    """`callers` tasks calling back to back until `total` calls are made: elapsed, latencies."""
    latencies: list[float] = []
    left = [total]

    async def caller() -> None:
        while left[0] > 0:
            left[0] -= 1
            began = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - began)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return time.perf_counter() - started, latencies


async def bench_queries(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    path = work / "queries.db"
    began = time.perf_counter()
    build_query_database(path, args.query_runs, args.query_steps)
    print(
        f"queries: {args.query_runs} runs of 3 metrics x {args.query_steps} points"
        f" ({path.stat().st_size / 1e6:.0f} MB), built in {time.perf_counter() - began:.0f} s"
    )
    asks = the_queries(args.query_runs)
    recorded = {name: record_query(path, q) for name, q in asks.items()}
    out: dict[str, Any] = {
        "runs": args.query_runs,
        "points_per_metric": args.query_steps,
        "connections_each_way": queries.READERS,
        "queries": {},
    }
    readers = queries.Readers(lambda: SqliteReadModel.open(str(path)))
    pool = AiosqliteReaders(path, queries.READERS)
    await pool.open()
    try:
        for name, statements in recorded.items():
            # Both sides read the same rows.
            a, b = await pool.run(statements), await readers.call(run_on_model, statements)
            if a != b:
                raise RuntimeError(f"{name}: {a} rows through aiosqlite, {b} on the thread")
            print(f"  {name}: {len(statements)} statements, {a} rows")
            q = asks[name]
            calls: dict[str, Callable[[], Awaitable[Any]]] = {
                "aiosqlite": lambda s=statements: pool.run(s),
                "thread": lambda s=statements: readers.call(run_on_model, s),
                "thread_real_handler": lambda q=q: readers.query(q),
            }
            entry: dict[str, Any] = {"statements": len(statements), "rows": a, "by_callers": {}}
            for callers in (1, 8):
                qps: dict[str, list[float]] = {k: [] for k in calls}
                p50: dict[str, list[float]] = {k: [] for k in calls}
                p99: dict[str, list[float]] = {k: [] for k in calls}
                blocks = max(1, args.query_calls // QUERY_BLOCK)
                for rep in range(args.reps):
                    spent = dict.fromkeys(calls, 0.0)
                    latencies: dict[str, list[float]] = {k: [] for k in calls}
                    for number in range(blocks):
                        for side in rotated(list(calls), number + rep):
                            elapsed, some = await drive(calls[side], QUERY_BLOCK, callers)
                            spent[side] += elapsed
                            latencies[side].extend(some)
                    for side in calls:
                        qps[side].append(blocks * QUERY_BLOCK / spent[side])
                        p50[side].append(percentile(latencies[side], 50) * 1e3)
                        p99[side].append(percentile(latencies[side], 99) * 1e3)
                median = {k: statistics.median(v) for k, v in qps.items()}
                entry["by_callers"][str(callers)] = {
                    "queries_per_s": median,
                    "queries_per_s_reps": qps,
                    "latency_ms_p50": {k: statistics.median(v) for k, v in p50.items()},
                    "latency_ms_p99": {k: statistics.median(v) for k, v in p99.items()},
                    "thread_over_aiosqlite": median["thread"] / median["aiosqlite"],
                    "extra_per_await_us": extra_per_await(median, len(statements)),
                }
                print(f"    {callers} callers: " + ", ".join(f"{k} {v:,.0f} q/s" for k, v in median.items()))
            out["queries"][name] = entry
    finally:
        await pool.close()
        readers.close()
    return out


# -- report -------------------------------------------------------------------------------


def extra_per_await(rates: dict[str, float], statements: float) -> float:
    """Microseconds the aiosqlite side spent per statement beyond the first, over the
    thread side (rates are transactions per second)."""
    return (1 / rates["aiosqlite"] - 1 / rates["thread"]) / max(1, statements - 1) * 1e6


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def _row(label: str, aio: str, thread: str, ratio: str = "") -> None:
    print(f"{label:60} {aio:>13} {thread:>13} {ratio:>10}")


def _rates(rate: dict[str, float], ratio: float) -> tuple[str, str, str]:
    return f"{rate['aiosqlite']:,.0f}", f"{rate['thread']:,.0f}", f"{ratio:.2f}x"


def _latencies(s: dict[str, Any], side: str) -> str:
    return f"{s['latency_ms_p50'][side]:.2f} / {s['latency_ms_p99'][side]:.2f}"


def print_table(result: dict[str, Any]) -> None:
    """The medians, one line a measurement, aiosqlite beside the thread."""
    print()
    _row("", "aiosqlite", "thread", "thread/aio")
    g = result["group_commit"]
    _row(
        f"group commit of {g['events_per_group']} events: events/s",
        *_rates(g["events_per_s"], g["thread_over_aiosqlite"]),
    )
    _row(
        "  (real SqliteEventLog.append_group, on one thread: events/s)",
        "",
        f"{g['events_per_s']['real_store']:,.0f}",
    )
    size = result["small_appends"]["events_per_append"]
    for tasks, s in result["small_appends"]["by_tasks"].items():
        _row(
            f"{tasks} tasks, appends of {size}: events/s",
            *_rates(s["events_per_s"], s["thread_over_aiosqlite"]),
        )
        _row("  per append p50 / p99 ms", _latencies(s, "aiosqlite"), _latencies(s, "thread"))
        if tasks == "1":
            _row("  extra per await (us)", f"{s['extra_per_await_us']:.0f}", "")
    for name, entry in result["queries"]["queries"].items():
        for callers, s in entry["by_callers"].items():
            _row(
                f"query {name} ({entry['statements']} statements), {callers} callers: q/s",
                *_rates(s["queries_per_s"], s["thread_over_aiosqlite"]),
            )
            _row("  p50 / p99 ms", _latencies(s, "aiosqlite"), _latencies(s, "thread"))
            if callers == "1":
                _row("  extra per await (us)", f"{s['extra_per_await_us']:.0f}", "")
            _row(
                "  thread, the real handler (answer built too): q/s, p50 / p99 ms",
                f"{s['queries_per_s']['thread_real_handler']:,.0f}",
                _latencies(s, "thread_real_handler"),
            )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tracklog-access-") as tmp:
        work = Path(tmp)
        result: dict[str, Any] = {
            "machine": machine(),
            "aiosqlite": aiosqlite.__version__,
            "reps": args.reps,
            "quick": args.quick,
            "load_average_before": load_before,
        }
        result["group_commit"] = await bench_group_commit(work, args)
        result["small_appends"] = await bench_small_appends(work, args)
        result["queries"] = await bench_queries(work, args)
    result["load_average_after"] = os.getloadavg()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run")
    parser.add_argument(
        "--reps", type=int, default=3, help="repetitions of each measurement (median reported)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args()
    if aiosqlite is None:
        sys.exit(
            "aiosqlite is not installed: it is only needed for this benchmark, so it is not a dependency."
            " Install it beside tracklog: pip install aiosqlite"
        )
    args.group_events = 1000
    args.groups = 20 if args.quick else 100
    args.small_size = 10
    args.small_per_run = 4 if args.quick else 20
    args.query_runs = 300 if args.quick else 2000
    args.query_steps = 100 if args.quick else 300
    args.query_calls = 100 if args.quick else 400
    print(machine())
    result = asyncio.run(main_async(args))
    print_table(result)
    print(
        f"load average {result['load_average_before'][0]:.1f} before, {result['load_average_after'][0]:.1f}"
        " after (the machine is shared)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
