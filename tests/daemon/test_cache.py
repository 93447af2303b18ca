"""The metadata cache: expiry decided by the daemon's clock, at write and at read."""

from __future__ import annotations

from pathlib import Path

from tracklog.daemon.queries import answer
from tracklog.daemon.storage.sqlite.connect import connect
from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog
from tracklog.daemon.storage.sqlite.readmodel import SqliteReadModel
from tracklog.protocol.events import CacheInvalidated, CacheInvalidatedData, CachePut, CachePutData
from tracklog.protocol.messages import Query


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def put(key: str, value: object, ttl: float | None = None, ts: float | None = None) -> CachePut:
    return CachePut(ts=ts, data=CachePutData(key=key, value=value, ttl=ttl))


def cached(path: Path, key: str, clock: Clock) -> list[dict[str, object]]:
    conn = connect(path, readonly=True)
    try:
        return answer(SqliteReadModel(conn), Query(q="cache", key=key), clock).rows
    finally:
        conn.close()


def test_an_entry_is_returned_until_its_ttl_has_passed_on_the_daemons_clock(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    clock = Clock(1_000.0)
    store = SqliteEventLog(path, clock=clock)
    try:
        store.catch_up()
        # The client's ts is far in the past: expiry counts from when the daemon recorded it.
        store.append_events([put("schema:db1", {"tables": ["a", "b"]}, ttl=60, ts=1.0), put("forever", 1)])
        assert cached(path, "schema:db1", clock) == [
            {"key": "schema:db1", "value": {"tables": ["a", "b"]}, "expires_at": 1_060.0}
        ]
        clock.now = 1_059.999
        assert len(cached(path, "schema:db1", clock)) == 1
        clock.now = 1_060.0
        assert cached(path, "schema:db1", clock) == []
        clock.now = 1e12
        assert cached(path, "forever", clock)[0]["value"] == 1
    finally:
        store.close()


def test_a_new_put_restarts_the_ttl_and_invalidation_removes_one_key_or_all(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    clock = Clock(100.0)
    store = SqliteEventLog(path, clock=clock)
    try:
        store.catch_up()
        store.append_events([put("a", 1, ttl=10), put("b", 2)])
        clock.now = 105.0
        store.append_events([put("a", 3, ttl=10)])
        clock.now = 112.0
        assert cached(path, "a", clock)[0]["value"] == 3
        store.append_events([CacheInvalidated(data=CacheInvalidatedData(key="a"))])
        assert cached(path, "a", clock) == []
        assert cached(path, "b", clock)[0]["value"] == 2
        store.append_events([CacheInvalidated()])
        assert cached(path, "b", clock) == []
    finally:
        store.close()


def test_a_rebuild_gives_the_same_expiry_times_as_live(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    clock = Clock(500.0)
    store = SqliteEventLog(path, clock=clock)
    try:
        store.catch_up()
        store.append_events([put("k", "v", ttl=30)])
        clock.now = 9_999.0  # the rebuild happens much later
        store.rebuild()
        row = store.conn.execute("SELECT expires_at FROM cache WHERE key = 'k'").fetchone()
        assert row == (530.0,)
    finally:
        store.close()
