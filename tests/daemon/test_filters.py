"""The filter grammar: parsing into parameterised SQL, run against a small real table, in
SQLite and in PostgreSQL (the same answers from each dialect's SQL)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from tracklog.daemon.storage.postgres.connect import PgConnection, PgSettings, connect
from tracklog.daemon.storage.sqlcommon.dialect import POSTGRES, SQLITE, Connection
from tracklog.daemon.storage.sqlcommon.filters import compile_filter
from tracklog.daemon.storage.sqlcommon.schema import PROJECTION_DDL
from tracklog.protocol.errors import BadQuery

RUNS = [
    # run, name, status, pipeline, started, config, metrics(loss), tags
    ("a", "alpha", "completed", "train", 100.0, '{"lr": 0.1, "opt": {"name": "adam"}}', 0.5, ["x"]),
    ("b", "beta", "failed", "train", 200.0, '{"lr": 0.01}', 0.2, ["x", "y"]),
    ("c", "gamma's", "running", "eval", 300.0, "{}", None, []),
    ("d", "délta", "completed", None, 1769817600.0, '{"lr": 1}', 0.9, ["y"]),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def conn(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "sqlite":
        db: Any = sqlite3.connect(":memory:")
        for statement in PROJECTION_DDL.split(";"):
            if statement.strip():
                db.execute(statement)
    else:
        server = request.getfixturevalue("pg_server")
        url = server.create_database()
        request.addfinalizer(lambda: server.drop_database(url))
        db = PgConnection(connect(PgSettings.from_url(url)))
        for statement in POSTGRES.projection_ddl():
            db.execute(statement)
    for seq, (run, name, status, pipeline, started, config, loss, tags) in enumerate(RUNS, 1):
        db.execute(
            "INSERT INTO runs(run, name, status, pipeline, started, config, created_seq, updated_seq,"
            " last_ts)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run, name, status, pipeline, started, config, seq, seq, started),
        )
        if loss is not None:
            db.execute(
                "INSERT INTO metric_summaries(run, name, count, last) VALUES (?, 'loss', 1, ?)", (run, loss)
            )
        db.executemany("INSERT INTO run_tags(run, tag) VALUES (?, ?)", [(run, t) for t in tags])
    yield db
    db.close()


def select(conn: Connection, text: str | None, order_by: list[str] | None = None) -> list[str]:
    c = compile_filter(text, order_by, getattr(conn, "dialect", SQLITE))
    sql = f"SELECT r.run FROM {c.from_sql} WHERE {c.where} ORDER BY {c.order}"
    return [r for (r,) in conn.execute(sql, c.params)]


def error(text: str) -> str:
    with pytest.raises(BadQuery) as info:
        compile_filter(text)
    return info.value.message


def test_no_filter_selects_every_run_in_creation_order(conn: Connection) -> None:
    assert select(conn, None) == ["a", "b", "c", "d"]
    assert select(conn, "   ") == ["a", "b", "c", "d"]


def test_a_metric_comparison_uses_the_last_value_and_skips_runs_without_it(conn: Connection) -> None:
    assert select(conn, "metrics.loss < 0.6") == ["a", "b"]
    assert select(conn, "metrics.loss >= 0.5") == ["a", "d"]


def test_and_binds_tighter_than_or_and_parentheses_override(conn: Connection) -> None:
    assert select(conn, "status = 'failed' or status = 'completed' and metrics.loss > 0.6") == ["b", "d"]
    assert select(conn, "(status = 'failed' or status = 'completed') and metrics.loss > 0.3") == ["a", "d"]


def test_keywords_are_case_insensitive(conn: Connection) -> None:
    assert select(conn, "status = 'failed' OR pipeline = 'eval'") == ["b", "c"]


def test_config_keys_compare_by_json_value_and_reach_nested_keys(conn: Connection) -> None:
    assert select(conn, "config.lr < 0.5") == ["a", "b"]
    assert select(conn, "config.opt.name = 'adam'") == ["a"]


def test_a_tag_alone_is_true_when_the_run_has_it(conn: Connection) -> None:
    assert select(conn, "tags.x") == ["a", "b"]
    assert select(conn, ["tags.y", "not_a_tag = 1"][0]) == ["b", "d"]
    assert select(conn, "tags.x = false") == ["c", "d"]


def test_in_and_like_and_their_negations(conn: Connection) -> None:
    assert select(conn, "status in ('failed', 'running')") == ["b", "c"]
    assert select(conn, "status not in ('failed', 'running')") == ["a", "d"]
    assert select(conn, "name like '%a'") == ["a", "b", "d"]
    assert select(conn, "name not like '%a'") == ["c"]


def test_a_doubled_quote_is_a_quote_in_a_string(conn: Connection) -> None:
    assert select(conn, "name = 'gamma''s'") == ["c"]


def test_unicode_values_match_exactly(conn: Connection) -> None:
    assert select(conn, "name = 'délta'") == ["d"]


def test_started_accepts_an_iso_date(conn: Connection) -> None:
    assert select(conn, "started >= '2026-01-31'") == ["d"]
    assert select(conn, "started < 250") == ["a", "b"]


def test_null_compares_with_is(conn: Connection) -> None:
    assert select(conn, "pipeline = null") == ["d"]
    assert select(conn, "pipeline != null") == ["a", "b", "c"]


def test_order_by_a_metric_puts_runs_without_it_last(conn: Connection) -> None:
    assert select(conn, None, ["metrics.loss asc"]) == ["b", "a", "d", "c"]
    assert select(conn, None, ["metrics.loss desc"]) == ["d", "a", "b", "c"]


def test_order_by_a_config_key_and_a_plain_field(conn: Connection) -> None:
    assert select(conn, None, ["config.lr desc"]) == ["d", "a", "b", "c"]
    assert select(conn, "tags.x or tags.y", ["status", "name desc"]) == ["d", "a", "b"]


def test_metric_names_in_backticks_may_hold_any_character(conn: Connection) -> None:
    conn.execute("INSERT INTO metric_summaries(run, name, count, last) VALUES ('c', 'odd name''); --', 1, 3)")
    assert select(conn, "metrics.`odd name'); --` = 3") == ["c"]


def test_values_are_bound_never_pasted_into_the_sql() -> None:
    hostile = "x'; DROP TABLE runs; --"
    c = compile_filter(
        "name = '" + hostile.replace("'", "''") + "' or metrics.`a;b` > 1", ["config.`k;--` desc"]
    )
    sql = f"{c.from_sql} {c.where} {c.order}"
    assert "DROP" not in sql and "a;b" not in sql and "k;--" not in sql
    assert hostile in c.params and "a;b" in c.params


def test_hostile_strings_select_nothing_and_leave_the_table_alone(conn: Connection) -> None:
    for value in ["'); DELETE FROM runs; --", "/* */", "%", "\\", "\u202e\u0000", "a" * 100_000]:
        if "\u0000" in value and isinstance(conn, PgConnection):
            continue  # PostgreSQL text cannot hold NUL: the read model answers bad_query
        text = "name = '" + value.replace("'", "''") + "'"
        assert select(conn, text) == []
    assert conn.execute("SELECT count(*) FROM runs").fetchone() == (4,)


def test_an_unknown_field_names_itself_and_its_position() -> None:
    assert error("metrcs.loss < 0.5") == (
        "filter: unknown field 'metrcs.loss', expected status, name, pipeline, user, session, started,"
        " finished, metrics.NAME, config.KEY or tags.NAME at 0"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("status = 'x", "unterminated string, expected a closing quote at 9"),
        ("status =", "unexpected the end, expected a value"),
        ("(status = 'a'", "expected ')' at 13"),
        ("status = 'a' 'b'", "expected 'and', 'or' or the end at 13"),
        ("status = 'a'; DROP TABLE runs", "unexpected character ';'"),
        ("status = 'a' -- comment", "unexpected character '-'"),
        ("status 'a'", "expected an operator"),
        ("status in 'a'", "expected '(' after 'in'"),
        ("status in ('a' 'b')", "expected ',' or ')'"),
        ("and status = 'a'", "expected a field"),
        ("status = 'a' and", "unexpected the end, expected a field"),
        ("name like 3", "expected a 'quoted pattern'"),
        ("started > 'yesterday'", "expected a time"),
        ("status = 'a' # x", "unexpected character '#'"),
        ("status = \u00a0\u2028'a'", ""),
    ],
)
def test_a_bad_filter_says_what_was_expected_and_where(text: str, expected: str) -> None:
    if not expected:
        compile_filter(text)  # unicode white space is white space
        return
    message = error(text)
    assert message.startswith("filter: ")
    assert expected in message


def test_deep_nesting_and_huge_filters_are_refused_without_recursion_errors() -> None:
    assert "nested deeper" in error("(" * 10_000 + "status = 'a'" + ")" * 10_000)
    assert "longer than" in error("status = '" + "a" * 300_000 + "'")


def test_a_bad_order_by_names_its_index() -> None:
    with pytest.raises(BadQuery, match=r"order_by\[1\]: unknown field 'nope'"):
        compile_filter(None, ["name", "nope desc"])
    with pytest.raises(BadQuery, match=r"order_by\[0\]: unexpected 'sideways'"):
        compile_filter(None, ["name sideways"])


def test_a_tag_compared_with_a_string_matches_its_value_and_orders_by_it(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE run_tags SET value = 'v1' WHERE run = 'a' AND tag = 'x'")
    conn.execute("UPDATE run_tags SET value = 'v2' WHERE run = 'b' AND tag = 'x'")
    assert select(conn, "tags.x = 'v1'") == ["a"]
    assert select(conn, "tags.x != 'v1'") == ["b"]  # a run without the tag matches no comparison
    assert select(conn, "tags.y = ''") == ["b", "d"]  # a tag without a value compares as ''
    assert select(conn, "tags.x like 'v%'") == ["a", "b"]
    assert select(conn, "tags.x in ('v2', 'v3')") == ["b"]
    assert select(conn, None, ["tags.x desc"]) == ["b", "a", "c", "d"]


def test_experiment_and_experiment_name_select_the_runs_of_an_experiment(conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT INTO experiments(experiment, name, lifecycle, created, updated, created_seq, updated_seq)"
        " VALUES ('7', 'baseline', 'active', 0, 0, 1, 1)"
    )
    conn.execute("UPDATE runs SET experiment = '7' WHERE run IN ('b', 'c')")
    assert select(conn, "experiment = '7'") == ["b", "c"]
    assert select(conn, "experiment = null") == ["a", "d"]
    assert select(conn, "experiment_name = 'baseline' and status = 'failed'") == ["b"]


def test_deleted_is_a_run_field(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE runs SET deleted = 1 WHERE run = 'c'")
    assert select(conn, "deleted = true") == ["c"]
    assert select(conn, "deleted = false and status = 'completed'") == ["a", "d"]
