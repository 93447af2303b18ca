"""The filter grammar parses to a tree without any storage: precedence, tags, lists, nulls,
orderings, and the limits every backend then shares."""

from __future__ import annotations

import pytest

from tracklog.daemon.filter_grammar import (
    MAX_METRIC_NAMES,
    BoolOp,
    Comparison,
    FieldRef,
    OrderTerm,
    TagTest,
    parse_run_query,
)
from tracklog.protocol import errors


def test_and_binds_tighter_than_or() -> None:
    parsed = parse_run_query("status = 'failed' or name = 'a' and metrics.loss < 0.5")
    assert parsed.condition == BoolOp(
        "or",
        (
            Comparison(FieldRef("run", "status"), "=", "failed"),
            BoolOp(
                "and",
                (
                    Comparison(FieldRef("run", "name"), "=", "a"),
                    Comparison(FieldRef("metric", "loss"), "<", 0.5),
                ),
            ),
        ),
    )
    assert parsed.metrics == ("loss",)


def test_tags_lists_nulls_and_negations_become_their_nodes() -> None:
    parsed = parse_run_query(
        "tags.gpu = false and config.lr not in (1, 2) and user != null and name not like 'a%'"
    )
    assert isinstance(parsed.condition, BoolOp)
    assert parsed.condition.parts == (
        TagTest("gpu", False),
        Comparison(FieldRef("config", "lr"), "not in", (1, 2)),
        Comparison(FieldRef("run", "user"), "!=", None),
        Comparison(FieldRef("run", "name"), "not like", "a%"),
    )


def test_times_are_read_as_seconds_since_the_epoch() -> None:
    parsed = parse_run_query("started >= '1970-01-02'")
    assert parsed.condition == Comparison(FieldRef("time", "started"), ">=", 86400.0)


def test_an_ordering_is_a_list_of_terms_and_shares_the_metric_count() -> None:
    parsed = parse_run_query("metrics.a > 1", ["metrics.b desc", "name"])
    assert parsed.order == (
        OrderTerm(FieldRef("metric", "b"), True),
        OrderTerm(FieldRef("run", "name"), False),
    )
    assert parsed.metrics == ("a", "b")
    names = [f"metrics.m{i}" for i in range(MAX_METRIC_NAMES)]
    with pytest.raises(errors.BadQuery, match=r"order_by\[0\]: more than 32 distinct metrics"):
        parse_run_query(" and ".join(f"{n} > 0" for n in names), ["metrics.extra"])


def test_an_empty_filter_is_no_condition_and_a_mistake_names_its_position() -> None:
    assert parse_run_query("  ").condition is None and parse_run_query(None).order == ()
    with pytest.raises(errors.BadQuery, match="at 9"):
        parse_run_query("status = ")
    with pytest.raises(errors.BadQuery, match="expected true, false or a 'quoted string' after a tag"):
        parse_run_query("tags.x = 2")


def test_a_tag_compared_with_a_string_is_its_value_and_alone_or_with_a_boolean_its_presence() -> None:
    assert parse_run_query("tags.x").condition == TagTest("x", True)
    assert parse_run_query("tags.x = false").condition == TagTest("x", False)
    assert parse_run_query("tags.x = 'v'").condition == Comparison(FieldRef("tag", "x"), "=", "v")
    assert parse_run_query("tags.x like 'v%'").condition == Comparison(FieldRef("tag", "x"), "like", "v%")
    assert parse_run_query("tags.x not in ('a')").condition == Comparison(
        FieldRef("tag", "x"), "not in", ("a",)
    )
    assert parse_run_query(None, ["tags.x desc"]).order == (OrderTerm(FieldRef("tag", "x"), True),)


def test_experiment_and_experiment_name_are_run_fields() -> None:
    condition = parse_run_query("experiment = '3' or experiment_name like 'base%'").condition
    assert condition == BoolOp(
        "or",
        (
            Comparison(FieldRef("run", "experiment"), "=", "3"),
            Comparison(FieldRef("run", "experiment_name"), "like", "base%"),
        ),
    )
