"""SqliteEventLog against a real SQLite file: seqs, idempotent ids, group commit, metric chunks
and summaries, rebuild/verify/catch-up/replay, and the queries that read the tables."""

from __future__ import annotations

import io
import json
import math
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tracklog.daemon import commands
from tracklog.daemon.queries import answer
from tracklog.daemon.storage.eventlog import AppendResult
from tracklog.daemon.storage.sqlcommon.schema import (
    CHUNK_POINTS,
    NO_EPOCH,
    PROJECTION_TABLES,
    PROJECTION_VERSION,
)
from tracklog.daemon.storage.sqlite.connect import connect
from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog, read_events
from tracklog.daemon.storage.sqlite.readmodel import SqliteReadModel
from tracklog.daemon.storage.sqlite.verify import compare_tables, iter_table
from tracklog.protocol import errors
from tracklog.protocol import events as ev
from tracklog.protocol.messages import Ack, Append, Codec, Duplicate, Query

#: The daemon's clock in these tests: fixed, so `recorded` never depends on timing, and far
#: enough in the past that an entry with a short ttl has expired by the real clock.
NOW = 1_000_000_000.0
CODEC = Codec()

Event = dict[str, Any]


# -- helpers ------------------------------------------------------------------------------


def decode_events(events: Sequence[Event]) -> list[ev.Event]:
    """Client-form events checked by the codec, as the server would hand them over."""
    msg = CODEC.decode(json.dumps({"op": "append", "events": ev.finite_floats_as_strings(list(events))}))
    assert isinstance(msg, Append)
    assert msg.rejected == [], msg.rejected
    return list(msg.events)


def append_msg(events: Sequence[Event], ref: int | None = None) -> Append:
    msg = CODEC.decode(
        json.dumps({"op": "append", "ref": ref, "events": ev.finite_floats_as_strings(list(events))})
    )
    assert isinstance(msg, Append)
    return msg


def open_store(path: Path, clock: Callable[[], float] = lambda: NOW) -> SqliteEventLog:
    store = SqliteEventLog(path, clock=clock)
    try:
        store.catch_up()
    except BaseException:
        store.close()
        raise
    return store


@contextmanager
def opened(path: Path) -> Iterator[SqliteEventLog]:
    store = open_store(path)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def reader(path: Path) -> Iterator[sqlite3.Connection]:
    conn = connect(path, readonly=True)
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection for tampering with a closed store's file by hand."""
    conn = sqlite3.connect(path)
    try:
        yield conn
        conn.commit()
    finally:
        conn.close()


def append(store: SqliteEventLog, events: Sequence[Event], ref: int | None = None) -> Ack:
    result = store.append_group([append_msg(events, ref)])[0]
    assert isinstance(result, AppendResult), result
    return result.ack


def append_structs(store: SqliteEventLog, events: Sequence[ev.Event]) -> Ack:
    return store.append_events(list(events))


def seqs(conn: sqlite3.Connection) -> list[int]:
    return [seq for (seq,) in conn.execute("SELECT seq FROM events ORDER BY seq")]


def metric(
    run: str,
    values: dict[str, float],
    step: int | None = None,
    epoch: int | None = None,
    ts: float | None = None,
    id_: str | None = None,
) -> Event:
    data: dict[str, Any] = {"values": values}
    if step is not None:
        data["step"] = step
    if epoch is not None:
        data["epoch"] = epoch
    event: Event = {"type": "metrics", "run": run, "data": data}
    if ts is not None:
        event["ts"] = ts
    if id_ is not None:
        event["id"] = id_
    return event


def table_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with closing(sqlite3.connect(path)) as conn:
        return {table: list(iter_table(conn, table)) for table in PROJECTION_TABLES}


def log_rows(path: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(
            "SELECT seq, id, type, run, ts, recorded, data FROM events ORDER BY seq"
        ).fetchall()


def differences(a: Path, b: Path) -> tuple[int, str]:
    out = io.StringIO()
    with closing(sqlite3.connect(a)) as live, closing(sqlite3.connect(b)) as other:
        count = compare_tables(live, other, out)
    return count, out.getvalue()


def assert_same_tables(a: Path, b: Path) -> None:
    count, text = differences(a, b)
    assert count == 0, text
    assert table_rows(a) == table_rows(b)


def verify(path: Path) -> tuple[int, str]:
    out = io.StringIO()
    code = commands.verify(path, out)
    return code, out.getvalue()


def read_series(conn: sqlite3.Connection, run: str, name: str) -> dict[str, Any]:
    rows = conn.execute(
        "SELECT chunk, n, step_min, step_max, steps, vals, epochs, ts FROM metric_chunks"
        " WHERE run = ? AND name = ? ORDER BY chunk",
        (run, name),
    ).fetchall()
    out: dict[str, Any] = {"chunks": [r[0] for r in rows], "n": [r[1] for r in rows]}
    for chunk, n, step_min, step_max, steps, _, _, _ in rows:
        decoded = np.frombuffer(steps, dtype=np.int64)
        assert len(decoded) == n, f"chunk {chunk}: n={n} but {len(decoded)} steps"
        assert (step_min, step_max) == (decoded.min(), decoded.max())
    for index, (key, dtype) in enumerate(
        [("steps", np.int64), ("vals", np.float64), ("epochs", np.int64), ("ts", np.float64)], start=4
    ):
        parts = [np.frombuffer(r[index], dtype=dtype) for r in rows]
        out[key] = np.concatenate(parts) if parts else np.array([], dtype=dtype)
    return out


def summary(conn: sqlite3.Connection, run: str, name: str) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT count, last, last_step, last_epoch, last_ts, min, min_step, min_epoch, max, max_step,"
        " max_epoch FROM metric_summaries WHERE run = ? AND name = ?",
        (run, name),
    ).fetchone()
    assert row is not None
    return tuple(row)


def expected_summary(points: list[tuple[int, int | None, float, float]]) -> tuple[Any, ...]:
    """(count, last, last_step, ...) for points of (step, epoch, value, ts): the earliest point
    reaching an extreme keeps it; NaN is never an extreme; SQLite stores a NaN `last` as NULL."""
    step, epoch, value, ts = points[-1]
    mn: tuple[float, int, int | None] | None = None
    mx: tuple[float, int, int | None] | None = None
    for s, e, v, _ in points:
        if math.isnan(v):
            continue
        if mn is None or v < mn[0]:
            mn = (v, s, e)
        if mx is None or v > mx[0]:
            mx = (v, s, e)
    return (
        len(points),
        None if math.isnan(value) else value,
        step,
        epoch,
        ts,
        *(mn if mn is not None else (None, None, None)),
        *(mx if mx is not None else (None, None, None)),
    )


def dedup_recorded(run: str | None, namespace: str, value: Any, kind: str = "hash") -> ev.Event:
    """A dedup.recorded as the daemon writes it (clients may not send one)."""
    return ev.DedupRecorded(
        run=run,
        data=ev.DedupRecordedData(
            namespace=namespace,
            kind=kind,
            value=value,  # type: ignore[arg-type]
            item="i",
        ),
    )


def workload() -> list[ev.Event]:
    """A mixed log: every event type, runs created by their first event, a metric series
    longer than a chunk, more series than the tables keep cached, NaN, step-less points."""
    client: list[Event] = []
    client.append(
        {
            "id": "a-start",
            "type": "run.started",
            "run": "a",
            "ts": 10.0,
            "data": {
                "name": "first",
                "pipeline": "p",
                "config": {"lr": 0.1, "opt": {"name": "adam"}},
                "tags": ["x", "y"],
                "user": "u",
                "host": "h",
                "session": "s",
            },
        }
    )
    client.append(metric("b", {"loss": 3.0}, ts=11.0))  # before b's run.started
    client.append({"type": "run.started", "run": "b", "ts": 12.0, "data": {"name": "second", "parent": "a"}})
    for i in range(1300):
        values = {"loss": math.nan if i % 97 == 5 else 1.0 / (1 + i % 50), "acc": float(i % 7)}
        client.append(metric("a", values, step=i, epoch=i // 400 if i % 2 else None, ts=20.0 + i))
        if i % 100 == 0:
            client.append(
                {
                    "type": "item",
                    "run": "a",
                    "ts": 20.0 + i,
                    "data": {
                        "item": f"i-{i}",
                        "kind": "k",
                        "stage": "s",
                        "iteration": i,
                        "status": "failed" if i % 300 == 0 else "ok",
                        "data": {"i": i, "l": [1, 2]},
                        "duration": 0.5,
                    },
                }
            )
        if i % 400 == 0:
            client.append(
                {
                    "type": "artifact",
                    "run": "a",
                    "ts": 20.0 + i,
                    "data": {
                        "kind": "checkpoint",
                        "path": f"/ckpt/{i}",
                        "size": i,
                        "digest": "d",
                        "metadata": {"i": i},
                    },
                }
            )
            client.append(metric("b", {"steps_less": float(i)}))
    client.append(
        {
            "type": "run.updated",
            "run": "a",
            "data": {"notes": "n", "config": {"lr": 0.2, "bs": 8}, "add_tags": ["z"], "remove_tags": ["x"]},
        }
    )
    client.append(
        {"type": "experiment", "data": {"experiment": "1", "name": "e", "tags": {"t": "1", "u": "2"}}}
    )
    client.append(
        {"type": "experiment", "data": {"experiment": "1", "lifecycle": "deleted", "remove_tags": ["u"]}}
    )
    client.append(
        {"type": "run.updated", "run": "b", "data": {"tag_values": {"mlflow.source": "s", "y": "v"}}}
    )
    client.append({"type": "cache.put", "data": {"key": "k1", "value": {"v": 1}}})
    client.append({"type": "cache.put", "data": {"key": "k2", "value": [1, 2], "ttl": 5}})
    client.append({"type": "cache.put", "data": {"key": "k3", "value": "three", "ttl": 1e12}})
    client.append({"type": "cache.invalidated", "data": {"key": "k1"}})
    client.append({"type": "run.deleted", "run": "c"})
    client.append({"type": "run.deleted", "run": "b"})
    client.append({"type": "run.restored", "run": "b"})
    client.append({"type": "run.finished", "run": "b", "data": {"status": "failed", "error": "boom"}})
    client.append({"type": "run.updated", "run": "b", "data": {"status": "running"}})
    client.append({"type": "run.finished", "run": "a", "ts": 9000.0, "data": {"status": "completed"}})
    client.append(metric("wide", {f"m{j}": float(j) for j in range(2100)}, step=0))
    client.append(metric("wide", {f"m{j}": float(-j) for j in range(0, 2100, 3)}, step=1))
    client.append(metric("wide", {"m0": 5.0, "m2099": 6.0}))
    client.append({"type": "dedup.cleared", "data": {"namespace": "other"}})
    events = decode_events(client)
    events.insert(5, dedup_recorded("a", "ns", "h1"))
    events.insert(50, dedup_recorded(None, "ns", 42, kind="simhash"))
    events.insert(60, dedup_recorded("b", "other", "h2"))
    events.append(dedup_recorded("a", "ns2", [0.5, 0.25], kind="embedding"))
    events.append(ev.DedupCleared(data=ev.DedupClearedData(namespace="ns", kind="simhash")))
    return events


def split(events: list[ev.Event], sizes: Sequence[int]) -> list[list[ev.Event]]:
    """Events cut into appends of the given sizes, cycling through them."""
    out: list[list[ev.Event]] = []
    i = 0
    k = 0
    while i < len(events):
        size = sizes[k % len(sizes)]
        out.append(events[i : i + size])
        i += size
        k += 1
    return out


def append_all(
    store: SqliteEventLog, events: list[ev.Event], sizes: Sequence[int] = (1, 3, 17, 250, 2, 1000)
) -> None:
    for part in split(events, sizes):
        append_structs(store, part)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "tracklog.db"


@pytest.fixture
def store(db: Path) -> Iterator[SqliteEventLog]:
    with opened(db) as s:
        yield s


@pytest.fixture(scope="module")
def workload_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed database holding the mixed workload; copy it before changing it."""
    path = tmp_path_factory.mktemp("workload") / "workload.db"
    with opened(path) as s:
        append_all(s, workload())
    return path


def copy_db(source: Path, target: Path) -> Path:
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)
    return target


# -- seqs --------------------------------------------------------------------------------


def test_new_store_is_empty_with_head_zero_and_projection_tables_ready(store: SqliteEventLog) -> None:
    assert store.head == 0
    assert store.meta("projection_version") == PROJECTION_VERSION
    assert int(store.meta("applied_seq")) == 0
    present = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert set(PROJECTION_TABLES) <= present


def test_seqs_start_at_one_and_stay_consecutive_and_gapless_across_appends(store: SqliteEventLog) -> None:
    acks = [append(store, [metric("r", {"a": float(i)}) for i in range(n)]) for n in (1, 3, 5, 2)]
    assert [(a.accepted, a.first_seq, a.last_seq) for a in acks] == [
        (1, 1, 1),
        (3, 2, 4),
        (5, 5, 9),
        (2, 10, 11),
    ]
    assert seqs(store.conn) == list(range(1, 12))
    assert store.head == 11
    assert int(store.meta("applied_seq")) == 11


def test_seqs_continue_from_the_head_after_the_store_is_reopened(db: Path) -> None:
    with opened(db) as s:
        append(s, [metric("r", {"a": 1.0})] * 3)
    with opened(db) as s:
        assert s.head == 3
        ack = append(s, [metric("r", {"a": 1.0})] * 2)
        assert (ack.first_seq, ack.last_seq) == (4, 5)
        assert seqs(s.conn) == [1, 2, 3, 4, 5]


def test_append_of_only_rejected_events_uses_no_seq_and_acks_the_rejections(store: SqliteEventLog) -> None:
    append(store, [metric("r", {"a": 1.0})])
    ack = append(
        store, [{"type": "nope"}, {"type": "metrics", "run": "r", "data": {"values": {"a": True}}}], ref=3
    )
    assert (ack.accepted, ack.first_seq, ack.last_seq, ack.ref) == (0, None, None, 3)
    assert [r.index for r in ack.rejected] == [0, 1]
    assert ack.rejected[1].message.startswith("metrics.values.a: expected a number")
    ack = append(store, [metric("r", {"a": 2.0})])
    assert (ack.first_seq, ack.last_seq) == (2, 2)
    assert seqs(store.conn) == [1, 2]


def test_good_events_of_a_partly_bad_append_get_consecutive_seqs_and_the_bad_are_not_logged(
    store: SqliteEventLog,
) -> None:
    ack = append(
        store, [metric("r", {"a": 1.0}, id_="e0"), {"type": "nope"}, metric("r", {"a": 2.0}, id_="e2")]
    )
    assert (ack.accepted, ack.first_seq, ack.last_seq) == (2, 1, 2)
    assert [r.index for r in ack.rejected] == [1]
    assert [e.id for e in read_events(store.conn)] == ["e0", "e2"]


# -- idempotent ids ---------------------------------------------------------------------------


def test_id_seen_before_is_a_duplicate_and_the_ack_names_the_original_seq(store: SqliteEventLog) -> None:
    append(store, [metric("r", {"a": 1.0}, id_="x"), metric("r", {"a": 2.0}, id_="y")])
    for i in range(5):
        append(store, [metric("r", {"a": float(i)})])
    ack = append(store, [metric("r", {"a": 3.0}, id_="new"), metric("r", {"a": 9.0}, id_="y")])
    assert ack.accepted == 1
    assert (ack.first_seq, ack.last_seq) == (8, 8)
    assert ack.duplicates == [Duplicate(index=1, seq=2)]
    assert store.head == 8


def test_id_is_a_duplicate_after_the_store_is_closed_and_reopened(db: Path) -> None:
    with opened(db) as s:
        append(s, [metric("r", {"a": 1.0}), metric("r", {"a": 1.0}, id_="x")])
    with opened(db) as s:
        ack = append(s, [metric("r", {"a": 2.0}, id_="x")])
        assert (ack.accepted, ack.first_seq, ack.last_seq) == (0, None, None)
        assert ack.duplicates == [Duplicate(index=0, seq=2)]
        assert s.head == 2
        assert summary(s.conn, "r", "a")[0] == 2  # the duplicate added no point


def test_id_sent_twice_within_one_append_is_logged_once_and_the_second_names_the_first_seq(
    store: SqliteEventLog,
) -> None:
    append(store, [metric("r", {"a": 0.0})])
    ack = append(
        store,
        [
            {"type": "nope"},
            metric("r", {"a": 1.0}, id_="x"),
            metric("r", {"a": 2.0}),
            metric("r", {"a": 3.0}, id_="x"),
        ],
    )
    assert (ack.accepted, ack.first_seq, ack.last_seq) == (2, 2, 3)
    # The index is the event's place in the append as sent, rejected events included.
    assert ack.duplicates == [Duplicate(index=3, seq=2)]
    assert [r.index for r in ack.rejected] == [0]
    assert [(e.seq, e.id) for e in read_events(store.conn)] == [(1, None), (2, "x"), (3, None)]


def test_id_of_a_rejected_event_is_not_remembered(store: SqliteEventLog) -> None:
    append(store, [{"id": "x", "type": "metrics", "run": "r", "data": {"values": {"a": "oops"}}}])
    ack = append(store, [metric("r", {"a": 1.0}, id_="x")])
    assert (ack.accepted, ack.duplicates) == (1, [])


def test_id_seen_in_an_earlier_append_of_the_same_group_is_a_duplicate(store: SqliteEventLog) -> None:
    results = store.append_group(
        [
            append_msg([metric("r", {"a": 1.0}, id_="x")]),
            append_msg([metric("r", {"a": 1.0}), metric("r", {"a": 1.0}, id_="x")]),
        ]
    )
    acks = [r.ack for r in results if isinstance(r, AppendResult)]
    assert len(acks) == 2
    assert acks[1].duplicates == [Duplicate(index=1, seq=1)]
    assert (acks[1].first_seq, acks[1].last_seq) == (2, 2)


# -- group commit ---------------------------------------------------------------------------


def test_group_of_several_appends_gives_each_consecutive_seqs_in_order(store: SqliteEventLog) -> None:
    append(store, [metric("r", {"a": 0.0})])
    group = [append_msg([metric("r", {"a": float(i)}) for i in range(n)], ref=n) for n in (2, 3, 1)]
    # publish: the results carry the stored events, as when the hub listens
    results = store.append_group(group, publish=True)
    acks = [r.ack for r in results if isinstance(r, AppendResult)]
    assert [(a.ref, a.first_seq, a.last_seq) for a in acks] == [(2, 2, 3), (3, 4, 6), (1, 7, 7)]
    events = [[e.seq for e in r.events] for r in results if isinstance(r, AppendResult)]
    assert events == [[2, 3], [4, 5, 6], [7]]
    assert seqs(store.conn) == list(range(1, 8))
    assert int(store.meta("applied_seq")) == 7


def test_append_result_holds_the_events_in_stored_form_when_someone_listens(store: SqliteEventLog) -> None:
    (result,) = store.append_group(
        [
            append_msg(
                [
                    metric("r", {"a": 1.5}, step=3, id_="e", ts=5.0),
                    {"type": "cache.put", "data": {"key": "k", "value": 1}},
                ]
            )
        ],
        publish=True,
    )
    assert isinstance(result, AppendResult)
    first, second = result.events
    assert (first.seq, first.type, first.run, first.id, first.ts, first.recorded) == (
        1,
        "metrics",
        "r",
        "e",
        5.0,
        NOW,
    )
    assert first.data == ev.MetricsData(values={"a": 1.5}, step=3)
    assert (second.seq, second.run, second.ts) == (2, None, NOW)  # no ts: the daemon's time


def test_group_where_one_append_fails_to_project_commits_the_others_with_gapless_seqs(db: Path) -> None:
    with opened(db) as s:
        good = append_msg([{"type": "run.started", "run": "a"}, metric("a", {"loss": 1.0})])
        # Bypassing the codec: an item without a run cannot be projected.
        broken = Append(events=[ev.Item(run=None)])
        later = append_msg([metric("a", {"loss": 2.0}), {"type": "item", "run": "a"}])
        results = s.append_group([good, broken, later])
        assert isinstance(results[0], AppendResult) and isinstance(results[2], AppendResult)
        assert isinstance(results[1], errors.InternalError)
        assert (results[0].ack.first_seq, results[0].ack.last_seq) == (1, 2)
        assert (results[2].ack.first_seq, results[2].ack.last_seq) == (3, 4)
        assert seqs(s.conn) == [1, 2, 3, 4]
        assert summary(s.conn, "a", "loss")[:2] == (2, 2.0)
    assert verify(db)[0] == 0


@pytest.mark.parametrize(
    "bad",
    [
        metric("r", {"a": 1.0}, step=2**63),
        metric("r", {"a": 1.0}, epoch=2**64 - 1),
        {"type": "item", "run": "r", "data": {"iteration": 2**63}},
        {"type": "artifact", "run": "r", "data": {"kind": "k", "path": "p", "size": 2**63}},
    ],
    ids=["step", "epoch", "iteration", "size"],
)
def test_integer_beyond_int64_is_rejected_alone_and_the_rest_of_the_append_is_kept(
    store: SqliteEventLog, bad: Event
) -> None:
    results = store.append_group([append_msg([metric("r", {"a": 1.0}, id_="good"), bad])])
    assert isinstance(results[0], AppendResult), results[0]
    assert results[0].ack.accepted == 1
    assert [r.index for r in results[0].ack.rejected] == [1]


# -- metric chunks and summaries ------------------------------------------------------------


def test_metric_series_longer_than_a_chunk_reads_back_exactly_across_many_appends_of_varied_sizes(
    store: SqliteEventLog,
) -> None:
    total = 3000
    loss_points: list[tuple[int, int | None, float, float]] = []
    acc_points: list[tuple[int, int | None, float, float]] = []
    events = []
    for i in range(total):
        step = 10 * i + 3
        epoch = i // 500 if i % 3 else None
        ts = 5000.0 + i / 4
        loss = math.nan if i % 101 == 50 else ((i * 7919) % 1009) / 7.0
        acc = float(i % 13) if i % 211 else -float(i % 5)
        loss_points.append((step, epoch, loss, ts))
        acc_points.append((step, epoch, acc, ts))
        events.append(metric("long", {"loss": loss, "acc": acc}, step=step, epoch=epoch, ts=ts))
    sizes = [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1023, 1]
    for part in split(events, sizes):
        append(store, part)
    assert store.head == total
    with reader(store.path) as conn:
        for name, points in (("loss", loss_points), ("acc", acc_points)):
            series = read_series(conn, "long", name)
            full, rest = divmod(total, CHUNK_POINTS)
            assert series["chunks"] == list(range(full + 1))
            assert series["n"] == [CHUNK_POINTS] * full + [rest]
            np.testing.assert_array_equal(series["steps"], np.array([p[0] for p in points], dtype=np.int64))
            np.testing.assert_array_equal(series["vals"], np.array([p[2] for p in points], dtype=np.float64))
            np.testing.assert_array_equal(
                series["epochs"],
                np.array([NO_EPOCH if p[1] is None else p[1] for p in points], dtype=np.int64),
            )
            np.testing.assert_array_equal(series["ts"], np.array([p[3] for p in points], dtype=np.float64))
            assert summary(conn, "long", name) == expected_summary(points)
        # The data really has ties at the extremes and NaN, so the summary checks mean something.
        finite = [p[2] for p in loss_points if not math.isnan(p[2])]
        assert finite.count(min(finite)) > 1 and finite.count(max(finite)) > 1
        run = conn.execute("SELECT n_events, n_points FROM runs WHERE run = 'long'").fetchone()
        assert run == (total, 2 * total)


def test_summary_keeps_the_earliest_point_on_ties_and_never_takes_nan_as_min_or_max(
    store: SqliteEventLog,
) -> None:
    values = [math.nan, 3.0, 1.0, math.nan, 1.0, 5.0, 5.0, 2.0, math.nan]
    for i, value in enumerate(values):
        append(store, [metric("r", {"v": value}, step=i * 10, epoch=i, ts=100.0 + i)])
    assert summary(store.conn, "r", "v") == (
        9,
        None,  # the last value is NaN, which SQLite keeps as NULL
        80,
        8,
        108.0,
        1.0,
        20,
        2,
        5.0,
        50,
        5,
    )


def test_summary_of_a_series_of_only_nan_has_no_min_or_max(store: SqliteEventLog) -> None:
    append(store, [metric("r", {"v": math.nan}, step=1), metric("r", {"v": math.nan}, step=2)])
    assert summary(store.conn, "r", "v") == (2, None, 2, None, NOW, None, None, None, None, None, None)


def test_infinities_can_be_the_min_and_max(store: SqliteEventLog) -> None:
    append(store, [metric("r", {"v": v}, step=i) for i, v in enumerate([1.0, math.inf, -math.inf, 0.0])])
    (count, last, *_, mn, mn_step, _, mx, mx_step, _) = summary(store.conn, "r", "v")
    assert (count, last, mn, mn_step, mx, mx_step) == (4, 0.0, -math.inf, 2, math.inf, 1)


def test_step_less_metric_gets_its_index_in_its_own_series(store: SqliteEventLog) -> None:
    append(store, [metric("r", {"a": 1.0}), metric("r", {"a": 2.0, "b": 5.0})])
    append(store, [metric("r", {"a": 3.0}, step=100), metric("r", {"a": 4.0, "b": 6.0})])
    np.testing.assert_array_equal(read_series(store.conn, "r", "a")["steps"], [0, 1, 100, 3])
    np.testing.assert_array_equal(read_series(store.conn, "r", "b")["steps"], [0, 1])
    assert summary(store.conn, "r", "a")[2] == 3


@pytest.mark.parametrize("before", [1, CHUNK_POINTS - 1, CHUNK_POINTS, CHUNK_POINTS + 5])
def test_series_continues_its_chunks_and_indexes_after_the_store_is_reopened(db: Path, before: int) -> None:
    after = 100
    with opened(db) as s:
        append(s, [metric("r", {"a": float(i)}, epoch=1) for i in range(before)])
    with opened(db) as s:
        append(s, [metric("r", {"a": float(i)}) for i in range(before, before + after)])
        series = read_series(s.conn, "r", "a")
        total = before + after
        np.testing.assert_array_equal(series["steps"], np.arange(total))
        np.testing.assert_array_equal(series["vals"], np.arange(total, dtype=np.float64))
        np.testing.assert_array_equal(series["epochs"], [1] * before + [NO_EPOCH] * after)
        assert series["n"] == [CHUNK_POINTS] * (total // CHUNK_POINTS) + (
            [total % CHUNK_POINTS] if total % CHUNK_POINTS else []
        )
        assert summary(s.conn, "r", "a")[:3] == (total, float(total - 1), total - 1)
        assert summary(s.conn, "r", "a")[5:7] == (0.0, 0)


# -- rebuild and verify ---------------------------------------------------------------------


def test_tables_after_a_mixed_workload_equal_a_rebuild_of_the_log(workload_db: Path) -> None:
    code, text = verify(workload_db)
    assert code == 0, text
    assert "equal a rebuild" in text


def test_rebuilt_copy_of_a_mixed_workload_equals_the_live_copy_row_for_row(
    workload_db: Path, tmp_path: Path
) -> None:
    live = copy_db(workload_db, tmp_path / "live.db")
    rebuilt = copy_db(workload_db, tmp_path / "rebuilt.db")
    with opened(rebuilt) as s:
        assert s.rebuild() == s.head == len(workload())
    assert_same_tables(live, rebuilt)


def test_mixed_workload_touches_every_projection_table(workload_db: Path) -> None:
    rows = table_rows(workload_db)
    assert all(rows[table] for table in PROJECTION_TABLES), {t: len(r) for t, r in rows.items()}


@pytest.mark.parametrize(
    "sizes",
    [(1,), (len(workload()),), (7, 1, 5000, 2)],
    ids=["one-by-one", "one-big-append", "mixed"],
)
def test_tables_do_not_depend_on_how_events_were_grouped_into_appends(
    workload_db: Path, tmp_path: Path, sizes: tuple[int, ...]
) -> None:
    path = tmp_path / "regrouped.db"
    with opened(path) as s:
        append_all(s, workload(), sizes)
    assert log_rows(path) == log_rows(workload_db)
    assert_same_tables(workload_db, path)


def test_tables_do_not_depend_on_how_appends_were_grouped_into_transactions(
    workload_db: Path, tmp_path: Path
) -> None:
    path = tmp_path / "grouped.db"
    parts = split(workload(), (1, 3, 17, 250, 2, 1000))
    with opened(path) as s:
        for start in range(0, len(parts), 4):
            results = s.append_group([Append(events=p) for p in parts[start : start + 4]])
            assert all(isinstance(r, AppendResult) for r in results)
    assert log_rows(path) == log_rows(workload_db)
    assert_same_tables(workload_db, path)


def test_rebuild_in_many_small_replay_transactions_equals_the_live_tables(
    workload_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tracklog.daemon.storage.sqlcommon.eventlog._REPLAY_BATCH", 97)
    path = copy_db(workload_db, tmp_path / "small-batches.db")
    with opened(path) as s:
        assert s.rebuild() == s.head
    assert_same_tables(workload_db, path)


def test_tables_are_the_same_when_metric_series_are_evicted_from_the_cache_between_transactions(
    workload_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every series is then reloaded from its summary and open chunk at each transaction.
    monkeypatch.setattr("tracklog.daemon.storage.sqlcommon.tables.MAX_CACHED_SERIES", 1)
    path = tmp_path / "evicting.db"
    with opened(path) as s:
        append_all(s, workload(), (1, 2, 900, 5))
    assert_same_tables(workload_db, path)


def test_tables_are_the_same_when_every_event_goes_through_project_and_apply(
    workload_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tables may take shortcuts for hot event types; the result must be what applying
    # project()'s changes one by one gives.
    from tracklog.daemon.projections import LoggedEvent, project
    from tracklog.daemon.storage.sqlcommon.tables import Tables

    def apply_event(self: Tables, event: LoggedEvent) -> None:
        for change in project(event):
            self.apply(change)

    def add_metrics(self: Tables, run: str, seq: int, ts: float, data: ev.MetricsData) -> None:
        apply_event(self, LoggedEvent(seq, "metrics", run, ts, NOW, data))

    monkeypatch.setattr(Tables, "apply_event", apply_event)
    monkeypatch.setattr(Tables, "add_metrics", add_metrics, raising=False)
    path = tmp_path / "by-project.db"
    with opened(path) as s:
        append_all(s, workload())
    assert_same_tables(workload_db, path)


@pytest.mark.parametrize(
    ("tamper", "table"),
    [
        ("UPDATE runs SET n_events = n_events + 1 WHERE run = 'a'", "runs"),
        ("UPDATE runs SET config = '{}' WHERE run = 'a'", "runs"),
        ("INSERT INTO run_tags(run, tag) VALUES ('a', 'forged')", "run_tags"),
        ("DELETE FROM items WHERE seq = (SELECT min(seq) FROM items)", "items"),
        ("UPDATE artifacts SET path = '/elsewhere'", "artifacts"),
        ("UPDATE metric_chunks SET vals = zeroblob(length(vals)) WHERE name = 'acc'", "metric_chunks"),
        ("UPDATE metric_summaries SET last = 0 WHERE run = 'a' AND name = 'loss'", "metric_summaries"),
        ("UPDATE cache SET expires_at = 1", "cache"),
        ("DELETE FROM dedup_entries", "dedup_entries"),
    ],
)
def test_verify_reports_a_difference_naming_the_table_after_a_projection_row_is_tampered_with(
    workload_db: Path, tmp_path: Path, tamper: str, table: str
) -> None:
    path = copy_db(workload_db, tmp_path / "tampered.db")
    with raw(path) as conn:
        assert conn.execute(tamper).rowcount > 0
    code, text = verify(path)
    assert code == 1
    assert f"\n{table} " in f"\n{text}"
    assert "differences between the live tables and a rebuild" in text


def test_verify_reports_tables_behind_the_log(workload_db: Path, tmp_path: Path) -> None:
    path = copy_db(workload_db, tmp_path / "behind.db")
    with raw(path) as conn:
        conn.execute("UPDATE meta SET value = 3 WHERE key = 'applied_seq'")
    code, text = verify(path)
    assert code == 1
    assert "seq 3" in text


def test_verify_of_a_missing_database_returns_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert commands.verify(tmp_path / "absent.db", io.StringIO()) == 2
    assert "no database" in capsys.readouterr().err


# -- catch-up -------------------------------------------------------------------------------


def test_catch_up_does_nothing_when_the_tables_are_level_with_the_log(
    workload_db: Path, tmp_path: Path
) -> None:
    path = copy_db(workload_db, tmp_path / "level.db")
    before = table_rows(path)
    with opened(path):  # opened() runs catch_up
        pass
    store = SqliteEventLog(path, clock=lambda: NOW)
    try:
        assert store.catch_up() == 0
    finally:
        store.close()
    assert table_rows(path) == before


@pytest.mark.parametrize("table", list(PROJECTION_TABLES))
def test_catch_up_rebuilds_everything_when_a_projection_table_was_dropped(
    workload_db: Path, tmp_path: Path, table: str
) -> None:
    path = copy_db(workload_db, tmp_path / "dropped.db")
    with raw(path) as conn:
        conn.execute(f"DROP TABLE {table}")
    store = SqliteEventLog(path, clock=lambda: NOW)
    try:
        assert store.catch_up() == store.head == len(workload())
    finally:
        store.close()
    assert_same_tables(workload_db, path)


@pytest.mark.parametrize("version", [PROJECTION_VERSION + 1, 0, None])
def test_catch_up_rebuilds_everything_when_the_projection_version_differs(
    workload_db: Path, tmp_path: Path, version: int | None
) -> None:
    path = copy_db(workload_db, tmp_path / "old.db")
    with raw(path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'projection_version'", (version,))
        # A change that only a rebuild undoes: the old version's rows are not trusted.
        conn.execute("UPDATE runs SET n_events = 999")
    store = SqliteEventLog(path, clock=lambda: NOW)
    try:
        assert store.catch_up() == store.head
        assert store.meta("projection_version") == PROJECTION_VERSION
    finally:
        store.close()
    assert_same_tables(workload_db, path)


def test_catch_up_applies_the_events_a_rebuild_to_an_earlier_seq_left_out(
    workload_db: Path, tmp_path: Path
) -> None:
    path = copy_db(workload_db, tmp_path / "partial.db")
    k = 700
    with opened(path) as s:
        assert s.rebuild(to_seq=k) == k
        assert int(s.meta("applied_seq")) == k
    store = SqliteEventLog(path, clock=lambda: NOW)
    try:
        assert store.catch_up() == store.head - k
        assert int(store.meta("applied_seq")) == store.head
    finally:
        store.close()
    assert_same_tables(workload_db, path)
    assert verify(path)[0] == 0


@pytest.mark.parametrize("k", [1, 640, 1330])
def test_catch_up_applies_events_written_to_the_log_behind_the_tables_back(
    workload_db: Path, tmp_path: Path, k: int
) -> None:
    path = tmp_path / "behind.db"
    with opened(path) as s:
        append_all(s, workload()[:k])
        assert int(s.meta("applied_seq")) == k
    # By hand: the rest of the log arrives without its projections, applied_seq stays at k.
    with raw(path) as conn:
        conn.execute("ATTACH DATABASE ? AS full", (str(workload_db),))
        conn.execute("INSERT INTO main.events SELECT * FROM full.events WHERE seq > ?", (k,))
        conn.commit()
        conn.execute("DETACH DATABASE full")
    store = SqliteEventLog(path, clock=lambda: NOW)
    try:
        assert int(store.meta("applied_seq")) == k
        assert store.catch_up() == len(workload()) - k
    finally:
        store.close()
    assert log_rows(path) == log_rows(workload_db)
    assert_same_tables(workload_db, path)


def test_catch_up_replays_from_an_applied_seq_set_back_by_hand_over_tables_of_that_seq(
    workload_db: Path, tmp_path: Path
) -> None:
    k = 1000
    at_k = tmp_path / "at_k.db"
    with opened(at_k) as s:
        append_all(s, workload()[:k])
    path = copy_db(workload_db, tmp_path / "set_back.db")
    # By hand: put back the projection rows as they were at seq k, and applied_seq with them.
    with raw(path) as conn:
        conn.execute("ATTACH DATABASE ? AS old", (str(at_k),))
        for table in PROJECTION_TABLES:
            conn.execute(f"DELETE FROM main.{table}")
            conn.execute(f"INSERT INTO main.{table} SELECT * FROM old.{table}")
        conn.execute("UPDATE main.meta SET value = ? WHERE key = 'applied_seq'", (k,))
        conn.commit()
        conn.execute("DETACH DATABASE old")
    store = SqliteEventLog(path, clock=lambda: NOW)
    try:
        assert store.catch_up() == store.head - k
    finally:
        store.close()
    assert_same_tables(workload_db, path)


# -- replay -----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 900, 1335])
def test_replay_to_a_seq_gives_the_state_as_of_that_seq(
    workload_db: Path, tmp_path: Path, k: int, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "replayed.db"
    assert commands.replay(workload_db, k, out) == 0
    assert f"state as of seq {k}" in capsys.readouterr().out
    expected = tmp_path / "expected.db"
    with opened(expected) as s:
        append_all(s, workload()[:k], (k,))
    assert log_rows(out) == log_rows(expected) == log_rows(workload_db)[:k]
    assert_same_tables(out, expected)
    with closing(sqlite3.connect(out)) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'applied_seq'").fetchone() == (k,)


def test_replay_refuses_to_overwrite_an_existing_file(
    workload_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "there.db"
    out.write_bytes(b"keep me")
    assert commands.replay(workload_db, 3, out) == 2
    assert out.read_bytes() == b"keep me"
    assert "exists" in capsys.readouterr().err


# -- queries ----------------------------------------------------------------------------------


def cache_rows(path: Path, key: str) -> list[Any]:
    with reader(path) as conn:
        return answer(SqliteReadModel(conn), Query(q="cache", key=key)).rows


def test_cache_query_of_an_expired_entry_returns_nothing(store: SqliteEventLog) -> None:
    append(store, [{"type": "cache.put", "data": {"key": "short", "value": 1, "ttl": 1}}])
    # recorded = NOW, long in the past: NOW + 1 is behind the real clock.
    with reader(store.path) as conn:
        result = answer(SqliteReadModel(conn), Query(q="cache", key="short"))
    assert (result.rows, result.total, result.seq) == ([], 0, 1)


def test_cache_query_returns_a_live_entry_with_its_value_and_expiry(store: SqliteEventLog) -> None:
    append(
        store,
        [
            {"type": "cache.put", "data": {"key": "forever", "value": {"a": [1, 2.5, None, "s"]}}},
            {"type": "cache.put", "data": {"key": "later", "value": "v", "ttl": 1e12}},
        ],
    )
    assert cache_rows(store.path, "forever") == [
        {"key": "forever", "value": {"a": [1, 2.5, None, "s"]}, "expires_at": None}
    ]
    assert cache_rows(store.path, "later") == [{"key": "later", "value": "v", "expires_at": NOW + 1e12}]
    assert cache_rows(store.path, "absent") == []


def test_cache_put_again_replaces_the_value_and_its_expiry(store: SqliteEventLog) -> None:
    append(store, [{"type": "cache.put", "data": {"key": "k", "value": 1}}])
    append(store, [{"type": "cache.put", "data": {"key": "k", "value": 2, "ttl": 1}}])
    assert cache_rows(store.path, "k") == []
    append(store, [{"type": "cache.put", "data": {"key": "k", "value": 3}}])
    assert cache_rows(store.path, "k") == [{"key": "k", "value": 3, "expires_at": None}]


def test_cache_invalidated_drops_one_key_or_with_no_key_all_of_them(store: SqliteEventLog) -> None:
    append(store, [{"type": "cache.put", "data": {"key": k, "value": k}} for k in ("a", "b", "c")])
    append(store, [{"type": "cache.invalidated", "data": {"key": "a"}}])
    assert [bool(cache_rows(store.path, k)) for k in ("a", "b", "c")] == [False, True, True]
    append(store, [{"type": "cache.invalidated"}])
    assert [bool(cache_rows(store.path, k)) for k in ("a", "b", "c")] == [False, False, False]


def test_run_query_answers_fields_config_tags_metric_summaries_and_artifacts(store: SqliteEventLog) -> None:
    append(
        store,
        [
            {
                "type": "run.started",
                "run": "a",
                "ts": 10.0,
                "data": {
                    "name": "first",
                    "pipeline": "p",
                    "config": {"lr": 0.1, "opt": {"name": "adam"}},
                    "tags": ["b", "a"],
                    "user": "u",
                    "notes": "n0",
                },
            },
            metric("a", {"loss": 2.0, "acc": 0.5}, step=0, epoch=0, ts=11.0),
            metric("a", {"loss": 1.0, "acc": 0.7}, step=10, epoch=1, ts=12.0),
            metric("a", {"loss": 1.5, "nan": math.nan}, step=20, ts=13.0),
            {
                "type": "artifact",
                "run": "a",
                "ts": 14.0,
                "data": {
                    "kind": "checkpoint",
                    "path": "/ckpt/1",
                    "size": 10,
                    "digest": "sha",
                    "metadata": {"e": 1},
                },
            },
            {"type": "item", "run": "a", "data": {"status": "failed"}},
            {"type": "item", "run": "a"},
            {"type": "artifact", "run": "a", "ts": 15.0, "data": {"kind": "plot", "path": "p.png"}},
            {
                "type": "run.updated",
                "run": "a",
                "data": {
                    "config": {"lr": 0.2, "bs": 8},
                    "add_tags": ["c"],
                    "remove_tags": ["b"],
                    "notes": "n1",
                },
            },
            {"type": "run.finished", "run": "a", "ts": 20.0, "data": {"status": "completed"}},
        ],
    )
    with reader(store.path) as conn:
        result = answer(SqliteReadModel(conn), Query(q="run", run="a", ref=4))
    assert (result.seq, result.total, result.ref) == (10, 1, 4)
    (row,) = result.rows
    metrics = row.pop("metrics")
    artifacts = row.pop("artifacts")
    assert row == {
        "id": "a",
        "name": "first",
        "pipeline": "p",
        "user": "u",
        "host": None,
        "session": None,
        "notes": "n1",
        "parent": None,
        "status": "completed",
        "error": None,
        "config": {"lr": 0.2, "opt": {"name": "adam"}, "bs": 8},
        "started": 10.0,
        "finished": 20.0,
        "created_seq": 1,
        "updated_seq": 10,
        "last_ts": 20.0,
        "deleted": False,
        "n_events": 10,
        "n_points": 6,
        "n_items": 2,
        "n_failed": 1,
        "n_artifacts": 2,
        "experiment": None,
        "tags": ["a", "c"],
        "tag_values": {},
    }
    assert metrics["loss"] == {
        "count": 3,
        "last": 1.5,
        "last_step": 20,
        "last_epoch": None,
        "last_ts": 13.0,
        "min": 1.0,
        "min_step": 10,
        "min_epoch": 1,
        "max": 2.0,
        "max_step": 0,
        "max_epoch": 0,
        "mean": 1.5,
    }
    assert metrics["acc"] == {
        "count": 2,
        "last": 0.7,
        "last_step": 10,
        "last_epoch": 1,
        "last_ts": 12.0,
        "min": 0.5,
        "min_step": 0,
        "min_epoch": 0,
        "max": 0.7,
        "max_step": 10,
        "max_epoch": 1,
        "mean": 0.6,
    }
    assert math.isnan(metrics["nan"]["last"])
    assert (metrics["nan"]["count"], metrics["nan"]["min"], metrics["nan"]["max"]) == (1, None, None)
    assert metrics["nan"]["mean"] is None  # NaN is left out of the mean: no value to average
    assert list(metrics) == ["acc", "loss", "nan"]
    assert artifacts == [
        {
            "seq": 5,
            "kind": "checkpoint",
            "path": "/ckpt/1",
            "size": 10,
            "digest": "sha",
            "metadata": {"e": 1},
            "ts": 14.0,
        },
        {
            "seq": 8,
            "kind": "plot",
            "path": "p.png",
            "size": None,
            "digest": None,
            "metadata": None,
            "ts": 15.0,
        },
    ]


def test_run_query_of_a_run_created_by_its_first_metric_has_it_running_and_started_then(
    store: SqliteEventLog,
) -> None:
    append(store, [metric("late", {"a": 1.0}, ts=5.0), metric("late", {"a": 2.0}, ts=6.0)])
    with reader(store.path) as conn:
        (row,) = answer(SqliteReadModel(conn), Query(q="run", run="late")).rows
    assert (row["status"], row["started"], row["config"], row["tags"], row["artifacts"]) == (
        "running",
        5.0,
        {},
        [],
        [],
    )


def test_run_query_shows_deleted_restored_and_resumed_runs(store: SqliteEventLog) -> None:
    append(
        store,
        [
            {"type": "run.finished", "run": "r", "data": {"status": "lost", "error": "gone"}},
            {"type": "run.deleted", "run": "r"},
        ],
    )
    with reader(store.path) as conn:
        (row,) = answer(SqliteReadModel(conn), Query(q="run", run="r")).rows
        assert (row["status"], row["error"], row["deleted"]) == ("lost", "gone", True)
    append(
        store,
        [
            {"type": "run.restored", "run": "r"},
            {"type": "run.updated", "run": "r", "data": {"status": "running"}},
        ],
    )
    with reader(store.path) as conn:
        (row,) = answer(SqliteReadModel(conn), Query(q="run", run="r")).rows
    assert (row["status"], row["error"], row["finished"], row["deleted"]) == ("running", None, None, False)


def test_run_query_of_an_unknown_run_is_not_found(store: SqliteEventLog) -> None:
    with reader(store.path) as conn, pytest.raises(errors.NotFound, match="nope"):
        answer(SqliteReadModel(conn), Query(q="run", run="nope", ref=2))


def test_read_events_filters_by_run_and_types_in_seq_order(store: SqliteEventLog) -> None:
    append(
        store,
        [
            {"type": "run.started", "run": "a", "id": "s-a", "ts": 1.0},
            {"type": "run.started", "run": "b"},
            metric("a", {"x": 1.0}, step=1),
            {"type": "cache.put", "data": {"key": "k", "value": [1]}},
            metric("b", {"x": 2.0}),
            {"type": "item", "run": "a"},
            metric("a", {"x": math.nan}, step=2),
        ],
    )
    conn = store.conn
    assert [e.seq for e in read_events(conn, run="a")] == [1, 3, 6, 7]
    assert [e.seq for e in read_events(conn, types=["metrics"])] == [3, 5, 7]
    assert [e.seq for e in read_events(conn, run="a", types=["metrics", "item"])] == [3, 6, 7]
    assert [e.seq for e in read_events(conn, types=["cache.put"])] == [4]
    assert [e.seq for e in read_events(conn, from_seq=3, limit=2)] == [4, 5]
    assert [e.seq for e in read_events(conn, from_seq=2, to_seq=4)] == [3, 4]
    assert read_events(conn, run="zzz") == []
    first, *_, last = read_events(conn)
    assert (first.id, first.type, first.run, first.ts, first.recorded) == (
        "s-a",
        "run.started",
        "a",
        1.0,
        NOW,
    )
    assert last.data["step"] == 2 and math.isnan(last.data["values"]["x"])
    (put,) = read_events(conn, types=["cache.put"])
    assert (put.run, put.data, put.ts) == (None, {"key": "k", "value": [1]}, NOW)


def test_events_query_on_a_read_only_connection_filters_like_read_events(store: SqliteEventLog) -> None:
    append(store, [metric("a", {"x": 1.0}), metric("b", {"x": 1.0}), {"type": "item", "run": "a"}])
    with reader(store.path) as conn:
        result = answer(SqliteReadModel(conn), Query(q="events", run="a", types=["item"]))
    assert result.seq == 3
    assert [(e.seq, e.type, e.run) for e in result.rows] == [(3, "item", "a")]
