"""SQLite and PostgreSQL answer every question the same: one set of events goes into both
stores through each backend's event log, then every question (with filters, orderings,
pages, references, downsampling, errors...) is asked of both and the answers compared.

What cannot be the same is left out and said so: a search hit's score and snippet (bm25
with FTS5's snippet, against ts_rank with ts_headline), the sizes in `stats`, and the
`sql` and `schema` questions (each database's own SQL and catalog).

The in-memory read model (`MemoryReadModel`, over a `MemoryEventLog` fed the same events)
is compared with SQLite the same way, without PostgreSQL (the `memory_` tests): every
question exactly, `stats` but for the sizes (0 in memory), the daemon's own reads
exactly; `search` as a set of hits (its ranking and snippets are its own), and only for
texts where no stemming is involved (SQLite's index stems with porter, the memory model
matches whole tokens: `SEARCH_STEMMED` lists texts whose hits differ for that reason).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from tracklog.daemon.queries import answer
from tracklog.daemon.storage.eventlog import AppendResult, EventLog
from tracklog.daemon.storage.memory import MemoryEventLog
from tracklog.daemon.storage.memory_readmodel import MemoryReadModel
from tracklog.daemon.storage.postgres.eventlog import PgEventLog
from tracklog.daemon.storage.readmodel import ReadModel, open_read_model
from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog
from tracklog.protocol import errors
from tracklog.protocol.messages import Append, Codec, Query

from .readmodel_suite import RECORDED, item, metrics, run_started

CODEC = Codec()
#: Points of the long series: three chunks, so small max_points downsample from the tiers.
LONG = 3000


def _events() -> list[list[dict[str, Any]]]:
    """The events, in append messages (a long series goes in a few large ones)."""
    runs = [
        run_started(
            "aaa111",
            "alpha",
            pipeline="train",
            user="ann",
            tags=["base", "gpu"],
            notes="a quick brown fox jumps over the river",
            config={"lr": 0.1, "opt": {"name": "adam"}, "layers": 3, "flag": True, "mixed": "10"},
        ),
        run_started(
            "aab222",
            "beta",
            pipeline="train",
            user="bob",
            tags=["gpu"],
            config={"lr": 0.01, "flag": False, "mixed": 5, "a.b": 1, "a": {"b": 2}},
        ),
        run_started(
            "abc333",
            "gamma",
            pipeline="eval",
            parent="aaa111",
            config={"lr": "high", "mixed": None, "list": [1, 2]},
            notes="evaluation of the fox",
        ),
        run_started("bbb444", "alpha", config={}),
        run_started("bcd555", "Delta", pipeline="Train", config={"lr": 1, "mixed": "abc"}, tags=["zeta"]),
        run_started("ccc666", "épsilon", pipeline="eval", tags=["gpu"], config={"lr": 0.5}),
    ]
    long = [
        {**metrics("aaa111", step, loss=1.0 / (step + 1)), "ts": 10.0 + step / 1000} for step in range(LONG)
    ]
    short = [
        *({**metrics("aaa111", s), "data": {"step": s, "epoch": s // 3, "values": {"acc": s / 10}}}
          for s in range(10)),
        *(metrics("aab222", s, loss=0.5 + s / 100, acc=0.2) for s in range(5)),
        metrics("bcd555", 0, loss=0.25),
        metrics("ccc666", 0, loss=0.01),
    ]  # fmt: skip
    items = [
        item("aaa111", "doc-1", stage="fetch", kind="doc", duration=0.5, model="m1", backend="cpu"),
        item("aaa111", "doc-2", stage="fetch", kind="doc", status="failed", error="timeout", duration=1.5),
        item("aaa111", "doc-3", stage="translate", kind="doc", data={"words": 3}, model="m2", duration=2.0),
        item("aaa111", "img-1", stage="fetch", kind="image", duration=0.25, backend="gpu"),
        item("aaa111", "loose", duration=0.75),
        item("aab222", "doc-4", stage="fetch", kind="doc", status="skipped", duration=0.5),
        item("aab222", "doc-5", stage="translate", kind="doc", status="failed", iteration=2),
        item("bcd555", "doc-6", stage="fetch", kind="doc", duration=3.0, path="/data/6.txt"),
        item("ccc666", "doc-7", stage="fetch", kind="doc", duration=9.0),
    ]
    rest = [
        {
            "type": "artifact",
            "run": "aaa111",
            "ts": 3.0,
            "data": {"kind": "model", "path": "m.pt", "size": 10},
        },
        {
            "type": "artifact",
            "run": "aaa111",
            "ts": 4.0,
            "data": {"kind": "log", "path": "out.txt", "metadata": {"lines": 3, "fox": "brown"}},
        },
        {
            "type": "artifact",
            "run": "aab222",
            "ts": 4.0,
            "data": {"kind": "model", "path": "b.pt", "digest": "x"},
        },
        {
            "type": "run.updated",
            "run": "aab222",
            "ts": 4.5,
            "data": {"notes": "beta notes", "add_tags": ["late"]},
        },
        {"type": "run.finished", "run": "aaa111", "ts": 5.0, "data": {"status": "completed"}},
        {"type": "run.finished", "run": "aab222", "ts": 5.0, "data": {"status": "failed", "error": "oom"}},
        {"type": "run.finished", "run": "bcd555", "ts": 6.0, "data": {"status": "completed"}},
        {"type": "cache.put", "ts": 6.0, "data": {"key": "short", "value": [1, 2], "ttl": 10}},
        {"type": "cache.put", "ts": 6.0, "data": {"key": "forever", "value": {"a": 1}}},
        {"type": "cache.put", "ts": 6.0, "data": {"key": "gone", "value": 1}},
        {"type": "cache.invalidated", "ts": 6.5, "data": {"key": "gone"}},
        {"type": "run.deleted", "run": "ccc666", "ts": 7.0},
    ]
    return (
        [[event] for event in runs]
        + [long[i : i + 1000] for i in range(0, LONG, 1000)]
        + [[e] for e in short + items + rest]
    )


def fill(store: EventLog) -> None:
    try:
        store.catch_up()
        for events in _events():
            msg = CODEC.decode(json.dumps({"op": "append", "events": events}))
            assert isinstance(msg, Append) and not msg.rejected, msg
            for result in store.append_group([msg]):
                assert isinstance(result, AppendResult), result
    finally:
        store.close()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, pg_server: Any) -> Iterator[tuple[ReadModel, ReadModel]]:
    path = tmp_path_factory.mktemp("same") / "t.db"
    fill(SqliteEventLog(path, clock=lambda: RECORDED))
    url = pg_server.create_database()
    fill(PgEventLog(url, clock=lambda: RECORDED))
    lite, pg = open_read_model(str(path)), open_read_model(url)
    try:
        yield lite, pg
    finally:
        lite.close()
        pg.close()
        pg_server.drop_database(url)


@pytest.fixture(scope="module")
def lite_and_memory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ReadModel, ReadModel]]:
    """SQLite's read model and the in-memory one, over the same events."""
    path = tmp_path_factory.mktemp("same-memory") / "t.db"
    fill(SqliteEventLog(path, clock=lambda: RECORDED))
    log = MemoryEventLog(clock=lambda: RECORDED)
    fill(log)
    lite, memory = open_read_model(str(path)), MemoryReadModel(log)
    try:
        yield lite, memory
    finally:
        lite.close()
        memory.close()


def outcome(model: ReadModel, q: Query, now: float = RECORDED) -> Any:
    """The answer as plain values, or the error's kind and message."""
    try:
        result = answer(model, q, clock=lambda: now)
    except errors.ProtocolError as exc:
        return (type(exc).__name__, exc.message)
    return msgspec.to_builtins((result.seq, result.rows, result.total))


FILTERS = [
    None,
    "status = 'completed'",
    "pipeline = 'train'",
    "pipeline = null",
    "pipeline != null",
    "name like 'a%'",
    "name like 'd%'",
    "name not like '%a'",
    "name > 'b'",
    "name = 5",
    "name in ('alpha', 'gamma', 3)",
    "user = 'ann' or parent = 'aaa111'",
    "id like 'a_c%'",
    "status in ('completed', 'failed')",
    "status not in ('running', null)",
    "created > 3",
    "created < 'x'",
    "created in (1, '2', 'x')",
    "started >= '2001-01-01'",
    "finished < 5.5",
    "finished like '5%'",
    "config.lr > 0.05",
    "config.lr < 'z'",
    "config.lr = 'high'",
    "config.lr >= 1",
    "config.lr like '0.%'",
    "config.lr in (0.1, 1, 'high')",
    "config.lr not in (0.1, null)",
    "config.lr not in (0.1)",
    "config.flag = true",
    "config.flag = 0",
    "config.flag like '1'",
    "config.mixed > 3",
    "config.mixed = '10'",
    "config.mixed = 10",
    "config.mixed = null",
    "config.mixed != null",
    "config.mixed <= 'b'",
    "config.opt.name = 'adam'",
    "config.a.b = 1",
    "config.a.b >= 2",
    "config.list like '%1%'",
    "config.missing = null",
    "metrics.loss < 0.5",
    "metrics.loss > 'abc'",
    "metrics.loss = '0.25'",
    "metrics.loss in (0.25, 0.01)",
    "metrics.acc >= 0.2 and metrics.loss > 0.5",
    "tags.gpu",
    "tags.gpu = false",
    "tags.base and config.lr > 0.05",
    "(tags.late or tags.zeta)",
]
ORDERS = [
    None,
    ["metrics.loss asc"],
    ["metrics.loss desc"],
    ["config.lr desc"],
    ["config.lr"],
    ["config.mixed desc"],
    ["config.flag", "name desc"],
    ["name", "created desc"],
    ["pipeline desc"],
    ["tags.gpu desc", "user"],
    ["status", "metrics.acc desc"],
    ["finished desc"],
]


def queries() -> Iterator[Query]:
    for text in FILTERS:
        yield Query(q="runs", filter=text)
        yield Query(q="runs", filter=text, deleted=True)
    for order in ORDERS:
        yield Query(q="runs", order_by=order, deleted=True)
        yield Query(q="runs", order_by=order, limit=2, offset=1)
    yield Query(q="runs", filter="status = ", order_by=["name"])
    yield Query(q="runs", limit=0)
    yield Query(q="runs", limit=5000)
    refs = [
        "aaa111",
        "alpha",
        "aa",
        "a",
        "ab",
        "abc",
        "bcd",
        "zzz",
        "Delta",
        "delta",
        "épsilon",
        "ccc666",
        "",
    ]
    for ref in refs:
        yield Query(q="run", run=ref)
        yield Query(q="resolve", run=ref)
    for run in ("aaa111", "aab222", "bbb444", "ccc666"):
        yield Query(q="metrics", run=run)
    for max_points in (2, 3, 4, 6, 10, 100, 2999, 5000):
        yield Query(q="metrics", run="aaa111", names=["loss"], max_points=max_points)
    yield Query(q="metrics", run="aaa111", names=["loss"], step_from=100, step_to=200, max_points=10)
    yield Query(q="metrics", run="aaa111", names=["loss"], step_from=1024, step_to=2047, max_points=6)
    yield Query(q="metrics", run="aaa111", names=["loss"], step_from=1000, step_to=2500, max_points=4)
    yield Query(q="metrics", run="aaa111", names=["acc", "loss"], step_from=5, max_points=4)
    yield Query(q="metrics", run="aaa111", names=["nothing"])
    yield Query(q="metrics", run="aaa111", max_points=1)
    yield Query(q="metrics", run="aaa111", step_from=9, step_to=3)
    yield Query(q="compare", runs=["aaa111", "aab222"])
    yield Query(q="compare", runs=["alpha", "beta", "Delta"], metrics=["loss"])
    yield Query(q="compare", runs=["aaa111", "ccc666"])
    yield Query(q="compare", runs=["aaa111", "ccc666"], deleted=True, names=["loss", "acc"])
    yield Query(q="compare", run="aab222", metrics=[])
    for metric, mode, text, deleted in [
        ("loss", "min", None, None),
        ("loss", "max", None, None),
        ("loss", "min", None, True),
        ("loss", "min", "pipeline = 'train'", None),
        ("acc", "max", "config.lr < 0.05", None),
        ("nothing", "min", None, None),
        ("loss", "sideways", None, None),
    ]:
        yield Query(q="best", metric=metric, mode=mode, filter=text, deleted=deleted)
    for fields in [
        {},
        {"limit": 3, "offset": 2},
        {"run": "alpha"},
        {"run": "aab"},
        {"stage": "fetch"},
        {"status": "failed"},
        {"model": "m1"},
        {"backend": "gpu"},
        {"stage": "fetch", "status": "ok", "limit": 2},
        {"run": "nothing"},
        {"limit": -1},
    ]:
        yield Query(q="items", **fields)
    for run in ("aaa111", "beta", "bcd555", "bbb444", "ccc666"):
        yield Query(q="item_facets", run=run)
        yield Query(q="artifacts", run=run)
    for key in ("short", "forever", "gone", "absent"):
        yield Query(q="cache", key=key)
    for fields in [{}, {"limit": 1}, {"experiments": ["none"]}, {"experiments": []}]:
        yield Query(q="experiments", **fields)
    for fields in [
        {},
        {"from_seq": 3000, "limit": 50},
        {"run": "aaa111", "types": ["item"]},
        {"types": ["artifact", "run.finished"], "from_seq": 10},
        {"run": "ccc666"},
        {"limit": 0},
    ]:
        yield Query(q="events", **fields)
    yield Query(q="search", text="")


@pytest.mark.parametrize("q", list(queries()), ids=lambda q: msgspec.json.encode(q).decode()[:120])
def test_every_question_answers_the_same(models: tuple[ReadModel, ReadModel], q: Query) -> None:
    lite, pg = models
    assert outcome(pg, q) == outcome(lite, q)


@pytest.mark.parametrize(
    "fields",
    [{}, {"deleted": True}, *({"run": run} for run in ("aaa111", "beta", "bcd555", "bbb444", "ccc666"))],
)
def test_stats_answer_the_same_but_for_the_sizes(
    models: tuple[ReadModel, ReadModel], fields: dict[str, Any]
) -> None:
    """Counts, stages and their quantiles, tags, recent runs and the ingest rate agree; the
    sizes are each database's own, and `time` is the clock's."""
    sizes = {"database_bytes", "wal_bytes", "log_bytes", "log_bytes_exact", "time"}

    def without_sizes(model: ReadModel) -> Any:
        (row,) = answer(model, Query(q="stats", **fields), clock=lambda: RECORDED).rows
        return {k: v for k, v in row.items() if k not in sizes}

    lite, pg = models
    assert without_sizes(pg) == without_sizes(lite)
    if fields.get("run") in (None, "aaa111"):
        assert without_sizes(pg)["stages"]  # the per-stage quantiles were compared
    if not fields.get("run"):
        assert {k for k in answer(pg, Query(q="stats")).rows[0]} >= sizes


def test_cache_expiry_is_the_same_at_every_moment(models: tuple[ReadModel, ReadModel]) -> None:
    lite, pg = models
    for now in (RECORDED, RECORDED + 9.99, RECORDED + 10, RECORDED + 1e9):
        q = Query(q="cache", key="short")
        assert outcome(pg, q, now) == outcome(lite, q, now)


@pytest.mark.parametrize(
    "text",
    [
        "fox",
        "brown fox",
        "fo*",
        "a*",
        "jump*",
        "doc",
        "doc-1",
        "translate",
        "m.pt",
        "nothing-like-this",
        "RIVER",
    ],
)
def test_search_finds_the_same_hits(models: tuple[ReadModel, ReadModel], text: str) -> None:
    """The same documents match; scores and snippets are each database's own (bm25 and
    ts_rank), so hits are compared as a set, and a snippet marks a match where the body has one."""

    def hits(model: ReadModel, deleted: bool | None) -> list[tuple[Any, ...]]:
        rows = answer(model, Query(q="search", text=text, deleted=deleted)).rows
        return sorted((r["kind"], r["run"], r["run_name"], r["title"], r.get("seq")) for r in rows)

    lite, pg = models
    for deleted in (None, True):
        assert hits(pg, deleted) == hits(lite, deleted)
    for row in answer(pg, Query(q="search", text="fox")).rows:
        assert row["score"] > 0 and ("[" in row["snippet"] or row["kind"] != "run")


def daemon_reads(model: ReadModel) -> list[Any]:
    """What the daemon reads outside the questions: catch-up scans, run pipelines, export rows."""
    out: list[Any] = []
    scans: list[tuple[int, int, Any, Any, Any]] = [
        (0, 10, None, None, None),
        (0, 100, frozenset({"aaa111"}), frozenset({"item"}), None),
        (0, 5, None, None, frozenset({"eval"})),
        (2990, 100, None, frozenset({"metrics"}), None),
        (0, 100, frozenset(), None, None),
        (0, 100, None, None, frozenset({"nothing"})),
    ]
    for scan in scans:
        found, read_to, head = model.scan_events(*scan)
        out.append((msgspec.to_builtins(found), read_to, head))
    out.append(model.run_pipelines())
    with model.snapshot("export"):
        for run in ("aaa111", "aab222", "bbb444"):
            out.append(msgspec.to_builtins(model.run_summary(run)))
            names = model.metric_names(run)
            out.append(names)
            for name, _ in names:
                out.append(list(model.metric_chunks(run, name)))
            out.append(list(model.item_rows(run)))
            out.append(model.artifact_rows(run))
    return out


def test_the_daemons_own_reads_are_the_same(models: tuple[ReadModel, ReadModel]) -> None:
    lite, pg = models
    assert daemon_reads(pg) == daemon_reads(lite)


# -- the in-memory read model against SQLite -------------------------------------------------

#: Search texts whose hits differ between SQLite (porter stemming) and the memory model
#: (whole tokens): "jump*" is the same (a prefix), "jump" alone finds "jumps" only in SQLite.
SEARCH_STEMMED = ["jump", "evaluating"]


@pytest.mark.parametrize("q", list(queries()), ids=lambda q: msgspec.json.encode(q).decode()[:120])
def test_memory_answers_every_question_as_sqlite(
    lite_and_memory: tuple[ReadModel, ReadModel], q: Query
) -> None:
    lite, memory = lite_and_memory
    assert outcome(memory, q) == outcome(lite, q)


@pytest.mark.parametrize(
    "fields",
    [{}, {"deleted": True}, *({"run": run} for run in ("aaa111", "beta", "bcd555", "bbb444", "ccc666"))],
)
def test_memory_stats_answer_as_sqlite_but_for_the_sizes(
    lite_and_memory: tuple[ReadModel, ReadModel], fields: dict[str, Any]
) -> None:
    sizes = {"database_bytes", "wal_bytes", "log_bytes", "log_bytes_exact", "time"}

    def without_sizes(model: ReadModel) -> Any:
        (row,) = answer(model, Query(q="stats", **fields), clock=lambda: RECORDED).rows
        return {k: v for k, v in row.items() if k not in sizes}

    lite, memory = lite_and_memory
    assert without_sizes(memory) == without_sizes(lite)
    if not fields.get("run"):
        row = answer(memory, Query(q="stats")).rows[0]
        assert {k for k in row} >= sizes and row["database_bytes"] == 0


def test_memory_cache_expiry_is_as_sqlites_at_every_moment(
    lite_and_memory: tuple[ReadModel, ReadModel],
) -> None:
    lite, memory = lite_and_memory
    for now in (RECORDED, RECORDED + 9.99, RECORDED + 10, RECORDED + 1e9):
        q = Query(q="cache", key="short")
        assert outcome(memory, q, now) == outcome(lite, q, now)


def _search_hits(model: ReadModel, text: str, deleted: bool | None) -> list[tuple[Any, ...]]:
    """A search's hits as a sorted set (ranking and snippets left out)."""
    rows = answer(model, Query(q="search", text=text, deleted=deleted)).rows
    return sorted((r["kind"], r["run"], r["run_name"], r["title"], r.get("seq")) for r in rows)


@pytest.mark.parametrize(
    "text",
    [
        "fox",
        "brown fox",
        "fo*",
        "a*",
        "jump*",
        "doc",
        "doc-1",
        "translate",
        "m.pt",
        "nothing-like-this",
        "RIVER",
        "epsilon",
        "gpu",
    ],
)
def test_memory_search_finds_the_same_hits_compared_as_a_set(
    lite_and_memory: tuple[ReadModel, ReadModel], text: str
) -> None:
    lite, memory = lite_and_memory
    for deleted in (None, True):
        assert _search_hits(memory, text, deleted) == _search_hits(lite, text, deleted)
    for row in answer(memory, Query(q="search", text=text)).rows:
        assert row["score"] > 0 and set(row) >= {"kind", "run", "run_name", "title", "snippet", "score"}


@pytest.mark.parametrize("text", SEARCH_STEMMED)
def test_memory_search_does_not_stem(lite_and_memory: tuple[ReadModel, ReadModel], text: str) -> None:
    """A known difference, kept visible: SQLite's porter stemmer finds more for these."""
    lite, memory = lite_and_memory
    assert set(_search_hits(memory, text, True)) < set(_search_hits(lite, text, True))


def test_memory_daemons_own_reads_are_as_sqlites(lite_and_memory: tuple[ReadModel, ReadModel]) -> None:
    lite, memory = lite_and_memory
    assert daemon_reads(memory) == daemon_reads(lite)


def test_memory_sql_and_schema_are_bad_query(lite_and_memory: tuple[ReadModel, ReadModel]) -> None:
    _, memory = lite_and_memory
    for q in (Query(q="sql", text="SELECT 1"), Query(q="schema")):
        assert outcome(memory, q) == ("BadQuery", f"{q.q}: not available on the memory backend")


def test_the_comparison_covers_every_question(models: tuple[ReadModel, ReadModel]) -> None:
    from tracklog.daemon.queries import QUERIES

    asked = {q.q for q in queries()} | {"search", "stats", "sql", "schema"}
    assert asked >= set(QUERIES)
