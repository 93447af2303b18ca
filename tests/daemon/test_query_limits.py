"""Queries too large or malformed for SQLite are `bad_query` naming the limit, never `internal`."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracklog.daemon.filter_grammar import MAX_METRIC_NAMES, MAX_TERMS, MAX_VALUES
from tracklog.daemon.queries import answer
from tracklog.daemon.storage.sqlite.connect import connect
from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog
from tracklog.daemon.storage.sqlite.readmodel import SqliteReadModel
from tracklog.protocol import errors
from tracklog.protocol.events import Item, ItemData, Metrics, MetricsData, RunStarted, RunStartedData
from tracklog.protocol.messages import Append, Query


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sqlite3.Connection]:
    """A read-only connection to a small database: runs with config, tags, metrics and items."""
    path: Path = tmp_path_factory.mktemp("limits") / "limits.db"
    store = SqliteEventLog(path)
    store.catch_up()
    events: list[Any] = []
    for i in range(5):
        run = f"r{i}"
        config = {"lr": 10.0**-i, "a": {"b": i}, "name": f"n{i}", "big": 2**62}
        events.append(RunStarted(run=run, data=RunStartedData(name=f"run {i}", config=config, tags=["x"])))
        events.append(
            Metrics(run=run, data=MetricsData(values={"loss": 1.0 / (i + 1), "m0": float(i)}, step=0))
        )
        events.append(Item(run=run, data=ItemData(item="i", stage="s", kind="k", duration=0.5)))
    store.append_group([Append(events=events)])
    store.close()
    reader = connect(path, readonly=True)
    yield reader
    reader.close()


def ask(conn: sqlite3.Connection, **fields: Any) -> list[Any]:
    return answer(SqliteReadModel(conn), Query(**fields)).rows


def refused(conn: sqlite3.Connection, **fields: Any) -> str:
    with pytest.raises(errors.BadQuery) as info:
        ask(conn, **fields)
    return info.value.message


def ors(n: int, term: str = "name = 'x'") -> str:
    return " or ".join([term] * n)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param(
            {"q": "runs", "filter": ors(3000)}, f"more than {MAX_TERMS} comparisons at ", id="3000-ors"
        ),
        pytest.param(
            {"q": "runs", "filter": " and ".join(f"metrics.m{i} > 0" for i in range(100))},
            f"more than {MAX_METRIC_NAMES} distinct metrics",
            id="filter-names-100-metrics",
        ),
        pytest.param(
            {"q": "runs", "order_by": [f"metrics.m{i}" for i in range(100)]},
            "order_by: more than 32 entries",
            id="order-by-100-metrics",
        ),
        pytest.param(
            {
                "q": "runs",
                "filter": " and ".join(f"metrics.m{i} > 0" for i in range(20)),
                "order_by": [f"metrics.n{i}" for i in range(20)],
            },
            f"more than {MAX_METRIC_NAMES} distinct metrics in the filter and order_by",
            id="filter-and-order-name-40-metrics",
        ),
        pytest.param(
            {"q": "runs", "filter": "config.big = 99999999999999999999"},
            "integer '99999999999999999999' out of range",
            id="integer-beyond-int64",
        ),
        pytest.param(
            {"q": "best", "metric": "loss", "filter": "config.big < -9223372036854775809"},
            "out of range",
            id="integer-below-int64-in-best",
        ),
        pytest.param(
            {"q": "runs", "filter": "name like '" + "a%" * 30_000 + "'"},
            "'like' pattern longer than",
            id="like-pattern-too-long",
        ),
        pytest.param(
            {"q": "runs", "filter": ors(20, "name in (" + ",".join(str(v) for v in range(1000)) + ")")},
            f"more than {MAX_VALUES} values",
            id="too-many-values",
        ),
        pytest.param(
            {"q": "runs", "offset": 10**20}, "offset: 100000000000000000000 is out of range", id="offset"
        ),
        pytest.param({"q": "events", "from_seq": 12 * 10**28}, "from_seq: ", id="from-seq-1.2e29"),
        pytest.param({"q": "metrics", "run": "r0", "step_from": 2**63}, "step_from: ", id="step-from"),
        pytest.param({"q": "items", "limit": 10, "offset": -(2**64)}, "offset: ", id="items-offset"),
        pytest.param(
            {"q": "compare", "runs": ["r0"], "metrics": ["x"] * 40_000}, "metrics: more than", id="list"
        ),
    ],
)
def test_an_oversized_or_out_of_range_query_is_a_bad_query_naming_what_is_wrong(
    conn: sqlite3.Connection, fields: dict[str, Any], expected: str
) -> None:
    assert expected in refused(conn, **fields)


def test_queries_at_every_limit_are_answered(conn: sqlite3.Connection) -> None:
    assert len(ask(conn, q="runs", filter=ors(MAX_TERMS, "name = 'run 1'"))) == 1
    # The deepest SQL the grammar allows: the heaviest field, nested 64 times, MAX_TERMS in all.
    heavy = "(" * 64 + ors(MAX_TERMS - 1, "config.a.b = 3") + ")" * 64 + " and config.a.b = 3"
    assert [r["id"] for r in ask(conn, q="runs", filter=heavy)] == ["r3"]
    assert ask(conn, q="best", metric="loss", filter=heavy)[0]["run"] == "r3"
    names = " and ".join(f"(metrics.m{i} >= 0 or metrics.m{i} = null)" for i in range(MAX_METRIC_NAMES - 1))
    assert len(ask(conn, q="runs", filter=names, order_by=["metrics.loss desc"])) == 5
    assert ask(conn, q="best", metric="loss", mode="max", filter=names)[0]["run"] == "r0"
    values = ors(MAX_VALUES // 1000, "name in (" + ",".join(f"'v{v}'" for v in range(999)) + ", 'run 2')")
    assert [r["id"] for r in ask(conn, q="runs", filter=values)] == ["r2"]
    assert (
        len(
            ask(
                conn, q="runs", filter="config.big = 4611686018427387904 and config.big < 9223372036854775807"
            )
        )
        == 5
    )
    assert len(ask(conn, q="runs", filter="config.big < 1e20")) == 5


# -- any filter text: an answer or bad_query --------------------------------------------

_FIELDS = [
    "status",
    "name",
    "id",
    "started",
    "finished",
    "created",
    "metrics.loss",
    "metrics.`a b`",
    "config.lr",
    "config.a.b",
    "config.`x\\y`",
    "config.`a[0]`",
    "tags.x",
    "tags.`q`",
    "metrics.",
    "nope",
]
_VALUES = [
    "'x'",
    "''",
    "'it''s'",
    "'2026-01-31'",
    "0",
    "-1",
    "1.5e3",
    "1e400",
    "-1e400",
    "99999999999999999999",
    "-9223372036854775808",
    "9223372036854775807",
    "true",
    "false",
    "null",
    "'%'",
    "'\\'",
    "'a\\'",
    "1e",
    ".5",
    "+.",
    "'\x00'",
]
_OPS = ["=", "!=", "<>", "<", "<=", ">", ">=", "like", "not like", "in", "not in", "", "=="]
_GLUE = [" and ", " or ", " AND ", " Or ", " ", "", ",", "(", ")", " not "]

comparison = st.builds(
    lambda f, op, v, vs: f"{f} {op} ({', '.join([v, *vs])})" if op.endswith("in") else f"{f} {op} {v}",
    st.sampled_from(_FIELDS),
    st.sampled_from(_OPS),
    st.sampled_from(_VALUES),
    st.lists(st.sampled_from(_VALUES), max_size=3),
)
token_soup = st.lists(
    st.one_of(comparison, st.sampled_from(_GLUE), st.sampled_from(_FIELDS), st.sampled_from(_VALUES)),
    max_size=25,
).map("".join)
filters = st.one_of(token_soup, st.text(max_size=60), st.text(alphabet="()'`.,=<>!andortgs %\\", max_size=60))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=filters, order=st.lists(st.one_of(st.sampled_from(_FIELDS), st.text(max_size=12)), max_size=3))
def test_any_filter_text_gives_rows_or_a_bad_query_never_an_internal_error(
    conn: sqlite3.Connection, text: str, order: list[str]
) -> None:
    for fields in (
        {"q": "runs", "filter": text, "order_by": order or None},
        {"q": "best", "metric": "loss", "filter": text},
    ):
        try:
            ask(conn, **fields)
        except errors.BadQuery as exc:
            assert exc.message and exc.code == "bad_query"
