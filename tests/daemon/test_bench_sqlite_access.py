"""bench/sqlite_access.py replays statements recorded from the real store and query
handlers: the replay must do exactly the work the daemon does, or its figures mean nothing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from tracklog.daemon import queries
from tracklog.daemon.storage.sqlite.connect import connect
from tracklog.daemon.storage.sqlite.readmodel import SqliteReadModel
from tracklog.protocol.messages import Query

BENCH = Path(__file__).parents[2] / "bench" / "sqlite_access.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_sqlite_access", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_replayed_group_commits_write_what_the_store_wrote(tmp_path: Path) -> None:
    bench = load_bench()
    groups = bench.group_appends(3, clients=4, per_client=50)
    store, recorder = bench.recording_store(tmp_path / "record.db")
    recorded = [bench.record(store, recorder, group) for group in groups]
    store.close()
    assert all(t[0][1] == "BEGIN IMMEDIATE" and t[-1][0] == bench.COMMIT for t in recorded)

    bench.new_database(tmp_path / "replay.db")
    conn = connect(tmp_path / "replay.db")
    for transaction in recorded:
        bench.run_in_thread(conn, transaction)
    conn.close()

    replayed = bench.table_digest(tmp_path / "replay.db", bench.WRITE_TABLES)
    assert replayed == bench.table_digest(tmp_path / "record.db", bench.WRITE_TABLES)


def test_a_recorded_query_reads_in_one_read_transaction(tmp_path: Path) -> None:
    bench = load_bench()
    path = tmp_path / "q.db"
    bench.build_query_database(path, runs=20, steps=10)
    recorded = bench.record_query(path, Query(q="runs", limit=5))
    assert recorded[0][1] == "BEGIN" and recorded[-1][1] == "COMMIT"
    conn = connect(path, readonly=True)
    try:
        rows = bench.run_in_thread(conn, recorded)
        answer = queries.answer(SqliteReadModel(conn), Query(q="runs", limit=5))
    finally:
        conn.close()
    assert len(answer.rows) == 5
    assert rows >= 5 + 5  # the page's ids, then their rows (and the count, tags, metrics)
