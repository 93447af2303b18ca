"""PostgreSQL drivers for the event log, measured: asyncpg against psycopg 3 doing the same
group commit and the same reads, on a server this script starts itself.

    python bench/pg_drivers.py              # 40 groups of 1,000 events per way, 5 repetitions
    python bench/pg_drivers.py --quick      # a small run

The server is started like the tests' (tests/pg.py: initdb in a temporary directory,
pg_ctl on a free 127.0.0.1 port, as `nobody` when run as root) but with PostgreSQL's
default durability (fsync and synchronous_commit on), since a commit's cost is the point.

A group commit here is what `PgEventLog.append_group` does for 1,000 metric events: BEGIN,
the log's advisory lock, the head read under it, the 1,000 `events` rows (with the log's
indexes: the primary key, the unique partial index on id, the run index), the projection
writes (10 metric chunks of 8 KiB and 10 summaries upserted with ON CONFLICT, 4 run
counters updated, the projections' position in meta), COMMIT. The ways:

- psycopg executemany: psycopg 3's executemany (pipelined: one round trip per batch);
- psycopg COPY: the events rows through COPY ... FROM STDIN (binary), the rest as above;
- asyncpg executemany and asyncpg COPY (copy_records_to_table): the same, awaited;
- psycopg COPY, no lock: without the advisory lock (what the lock costs one daemon);
- 2 writers: two connections (threads) committing groups at once under the lock, total rate;
- lock round trips: an empty transaction taking the lock, against one running `SELECT 1`.

Reads: a range of 1,000 events by seq, and 500 ids looked up at once (`= ANY`); psycopg
both in its default text format and in binary (as asyncpg reads).
Last, the daemon's own path: `PgEventLog.append_group` with 4 appends of 250 events, beside
`SqliteEventLog.append_group` with the same. Each repetition starts the writes with another
way, and each figure is the median over the repetitions. Results go to
bench/results/pg_drivers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg  # only the bench uses it (the `dev` extra)
import msgspec
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _daemon import machine  # noqa: E402

from tests.pg import PgServer  # noqa: E402
from tracklog.daemon.storage.postgres.eventlog import LOG_LOCK, PgEventLog  # noqa: E402
from tracklog.daemon.storage.sqlcommon.dialect import POSTGRES  # noqa: E402
from tracklog.daemon.storage.sqlcommon.schema import LOG_DDL  # noqa: E402
from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog  # noqa: E402
from tracklog.protocol import events as ev  # noqa: E402
from tracklog.protocol.messages import Append  # noqa: E402

GROUP = 1_000
RUNS = 4
SERIES = 10
EVENT_COLUMNS = ["seq", "id", "type", "run", "ts", "recorded", "data"]
_encode = msgspec.msgpack.Encoder().encode


def schema(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in POSTGRES.ddl(LOG_DDL) + POSTGRES.projection_ddl():
            conn.execute(statement)  # type: ignore[call-overload]


def event_rows(first: int) -> list[tuple[Any, ...]]:
    now = time.time()
    return [
        (
            first + i,
            uuid.uuid4().hex,
            "metrics",
            f"run{i % RUNS}",
            now,
            now,
            _encode({"values": {"loss": 1.0 / (i + 1)}, "step": first + i}),
        )
        for i in range(GROUP)
    ]


def projection_rows(seq: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    blob = b"\x00" * 8192
    chunks = [
        (f"run{s % RUNS}", f"m{s}", seq // 1024, 1024, 0, 1023, blob, blob, blob, blob) for s in range(SERIES)
    ]
    summaries = [(f"run{s % RUNS}", f"m{s}", seq, 0.5, seq, None, 1.0) for s in range(SERIES)]
    counters = [(GROUP // RUNS, seq, f"run{r}") for r in range(RUNS)]
    return chunks, summaries, counters


INSERT_EVENTS = (
    "INSERT INTO events(seq, id, type, run, ts, recorded, data) VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
UPSERT_CHUNK = (
    "INSERT INTO metric_chunks(run, name, chunk, n, step_min, step_max, steps, vals, epochs, ts)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run, name, chunk) DO UPDATE SET"
    " n = EXCLUDED.n, step_max = EXCLUDED.step_max, steps = EXCLUDED.steps, vals = EXCLUDED.vals,"
    " epochs = EXCLUDED.epochs, ts = EXCLUDED.ts"
)
UPSERT_SUMMARY = (
    "INSERT INTO metric_summaries(run, name, count, last, last_step, last_epoch, last_ts)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run, name) DO UPDATE SET count = EXCLUDED.count,"
    " last = EXCLUDED.last, last_step = EXCLUDED.last_step, last_ts = EXCLUDED.last_ts"
)
UPDATE_RUN = "UPDATE runs SET n_events = n_events + %s, updated_seq = %s WHERE run = %s"
SET_APPLIED = (
    "INSERT INTO meta(key, value) VALUES ('applied_seq', %s)"
    " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
)


def dollar(sql: str) -> str:
    """psycopg's %s placeholders as asyncpg's $1, $2, ..."""
    parts = sql.split("%s")
    return "".join(p + (f"${i + 1}" if i < len(parts) - 1 else "") for i, p in enumerate(parts))


def prepare_runs(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for r in range(RUNS):
            conn.execute(
                "INSERT INTO runs(run, status, started, created_seq, updated_seq, last_ts)"
                " VALUES (%s, 'running', 0, 0, 0, 0) ON CONFLICT DO NOTHING",
                (f"run{r}",),
            )


# -- psycopg ------------------------------------------------------------------------------


def psycopg_group(conn: psycopg.Connection[Any], copy: bool, lock: bool = True) -> None:
    with conn.transaction():
        if lock:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOG_LOCK,))
        row = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        head = int(row[0]) if row else 0
        rows = event_rows(head + 1)
        with conn.cursor() as cur:
            if copy:
                with cur.copy(f"COPY events({', '.join(EVENT_COLUMNS)}) FROM STDIN (FORMAT BINARY)") as out:
                    out.set_types(["int8", "text", "text", "text", "float8", "float8", "bytea"])
                    for r in rows:
                        out.write_row(r)
            else:
                cur.executemany(INSERT_EVENTS, rows)
            chunks, summaries, counters = projection_rows(head + GROUP)
            cur.executemany(UPSERT_CHUNK, chunks)
            cur.executemany(UPSERT_SUMMARY, summaries)
            cur.executemany(UPDATE_RUN, counters)
            cur.execute(SET_APPLIED, (head + GROUP,))


def psycopg_reads(conn: psycopg.Connection[Any], head: int, ids: list[str], binary: bool = False) -> None:
    conn.execute(
        "SELECT seq, id, type, run, ts, recorded, data FROM events WHERE seq > %s ORDER BY seq LIMIT 1000",
        (max(head - 5000, 0),),
        binary=binary,
    ).fetchall()
    conn.execute("SELECT id, seq FROM events WHERE id = ANY(%s)", (ids,), binary=binary).fetchall()


def lock_trip(conn: psycopg.Connection[Any], lock: bool) -> None:
    """An empty write transaction, with the log's lock or a plain statement in its place."""
    with conn.transaction():
        if lock:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOG_LOCK,))
        else:
            conn.execute("SELECT 1")


# -- asyncpg ------------------------------------------------------------------------------


async def asyncpg_group(conn: asyncpg.Connection, copy: bool) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOG_LOCK)
        head = int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM events"))
        rows = event_rows(head + 1)
        if copy:
            await conn.copy_records_to_table("events", records=rows, columns=EVENT_COLUMNS)
        else:
            await conn.executemany(dollar(INSERT_EVENTS), rows)
        chunks, summaries, counters = projection_rows(head + GROUP)
        await conn.executemany(dollar(UPSERT_CHUNK), chunks)
        await conn.executemany(dollar(UPSERT_SUMMARY), summaries)
        await conn.executemany(dollar(UPDATE_RUN), counters)
        await conn.execute(dollar(SET_APPLIED), head + GROUP)


async def asyncpg_reads(conn: asyncpg.Connection, head: int, ids: list[str]) -> None:
    await conn.fetch(
        "SELECT seq, id, type, run, ts, recorded, data FROM events WHERE seq > $1 ORDER BY seq LIMIT 1000",
        max(head - 5000, 0),
    )
    await conn.fetch("SELECT id, seq FROM events WHERE id = ANY($1::text[])", ids)


# -- measuring ----------------------------------------------------------------------------


def timed(call: Callable[[], None], times: int) -> float:
    start = time.perf_counter()
    for _ in range(times):
        call()
    return time.perf_counter() - start


def two_writers(url: str, groups: int) -> float:
    """Seconds for two connections to commit `groups` groups each (COPY), at once, under the lock."""
    conns = [psycopg.connect(url, autocommit=True) for _ in range(2)]
    barrier = threading.Barrier(3)

    def work(conn: psycopg.Connection[Any]) -> None:
        barrier.wait()
        for _ in range(groups):
            psycopg_group(conn, copy=True)

    threads = [threading.Thread(target=work, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    for c in conns:
        c.close()
    return elapsed


def real_appends(log: Any, groups: int, base: int) -> float:
    appends = [
        [
            Append(
                events=[
                    ev.Metrics(
                        run=f"run{a}",
                        data=ev.MetricsData(values={"loss": 0.5, "acc": 0.1}, step=base + g * 250 + i),
                    )
                    for i in range(250)
                ]
            )
            for a in range(4)
        ]
        for g in range(groups)
    ]
    start = time.perf_counter()
    for group in appends:
        log.append_group(group)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, default=40)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    groups, reps = (5, 2) if args.quick else (args.groups, args.reps)
    results: dict[str, list[float]] = {}

    def note(name: str, seconds: float, count: int) -> None:
        results.setdefault(name, []).append(count / seconds)

    with PgServer(settings={}) as server:
        url = server.create_database()
        schema(url)
        prepare_runs(url)
        pconn = psycopg.connect(url, autocommit=True)
        loop = asyncio.new_event_loop()
        aconn = loop.run_until_complete(asyncpg.connect(url))
        writes: list[tuple[str, Callable[[], None], int]] = [
            ("psycopg executemany", lambda: psycopg_group(pconn, False), 1),
            ("asyncpg executemany", lambda: loop.run_until_complete(asyncpg_group(aconn, False)), 1),
            ("psycopg COPY", lambda: psycopg_group(pconn, True), 1),
            ("asyncpg COPY", lambda: loop.run_until_complete(asyncpg_group(aconn, True)), 1),
            ("psycopg COPY, no lock", lambda: psycopg_group(pconn, True, lock=False), 1),
        ]
        for rep in range(reps):
            # Each repetition starts with another way, so a burst of load elsewhere (or the
            # table growing) does not always fall on the same one.
            for name, call, _ in writes[rep % len(writes) :] + writes[: rep % len(writes)]:
                note(name, timed(call, groups), groups * GROUP)
            note("psycopg COPY, 2 writers", two_writers(url, groups // 2), (groups // 2) * 2 * GROUP)
            trips = groups * 10
            note("lock round trips: BEGIN; lock; COMMIT", timed(lambda: lock_trip(pconn, True), trips), trips)
            note(
                "lock round trips: BEGIN; SELECT 1; COMMIT",
                timed(lambda: lock_trip(pconn, False), trips),
                trips,
            )
            row = pconn.execute("SELECT max(seq) FROM events").fetchone()
            head = int(row[0]) if row else 0
            ids = [
                r[0] for r in pconn.execute("SELECT id FROM events ORDER BY random() LIMIT 500").fetchall()
            ]
            reads = groups * 5
            note("psycopg reads", timed(lambda h=head, i=ids: psycopg_reads(pconn, h, i), reads), reads)
            note(
                "psycopg reads, binary",
                timed(lambda h=head, i=ids: psycopg_reads(pconn, h, i, binary=True), reads),
                reads,
            )
            note(
                "asyncpg reads",
                timed(lambda h=head, i=ids: loop.run_until_complete(asyncpg_reads(aconn, h, i)), reads),
                reads,
            )
        loop.run_until_complete(aconn.close())
        loop.close()
        pconn.close()

        log_url = server.create_database()
        pg_log = PgEventLog(log_url)
        pg_log.catch_up()
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            sqlite_log = SqliteEventLog(Path(tmp) / "bench.db")
            sqlite_log.catch_up()
            for rep in range(reps):
                base = rep * groups * 1000
                note("PgEventLog.append_group", real_appends(pg_log, groups, base), groups * GROUP)
                note("SqliteEventLog.append_group", real_appends(sqlite_log, groups, base), groups * GROUP)
            sqlite_log.close()
        pg_log.close()

    summary = {name: round(statistics.median(rates)) for name, rates in results.items()}
    width = max(len(n) for n in summary)
    print(f"events (or reads) per second, median of {reps}; groups of {GROUP} events")
    for name, rate in summary.items():
        unit = "reads/s" if "reads" in name else "trips/s" if "trips" in name else "events/s"
        print(f"  {name:<{width}}  {rate:>9,} {unit}")
    out = ROOT / "bench" / "results" / ("pg_drivers-quick.json" if args.quick else "pg_drivers.json")
    out.write_text(
        json.dumps({"machine": machine(), "groups": groups, "reps": reps, "rates": summary}, indent=2) + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
