"""MLflow's search syntax translated into tracklog's filter grammar, without a daemon: every
name and value quoted, MLflow's attributes and statuses mapped, its mistakes refused."""

from __future__ import annotations

import pytest

from tracklog.daemon.filter_grammar import parse_run_query
from tracklog.daemon.mlflow import MlflowError
from tracklog.daemon.mlflow.search import experiment_matcher, parse_filter, run_filter, run_order


@pytest.mark.parametrize(
    ("mlflow", "tracklog"),
    [
        ("metrics.acc > 0.9", "metrics.`acc` > 0.9"),
        ("metric.`val/loss` <= 1e-3", "metrics.`val/loss` <= 0.001"),
        ("params.lr = '0.01'", "config.`lr` = '0.01'"),
        ('params."a b" != "x"', "config.`a b` != 'x'"),
        ("tags.team LIKE 'nl%'", "tags.`team` like 'nl%'"),
        ("tags.team ILIKE 'NL%'", "tags.`team` like 'NL%'"),
        ("tags.team IS NULL", "tags.`team` = false"),
        ("params.lr IS NOT NULL", "config.`lr` != null"),
        ("tags.`mlflow.runName` = 'x'", "name = 'x'"),
        ("attributes.status = 'FAILED'", "status in ('failed', 'lost')"),
        ("status != 'FINISHED'", "status not in ('completed')"),
        ("attributes.run_id IN ('a', 'b')", "id in ('a', 'b')"),
        ("attributes.start_time > 1000", "started > 1.0"),
        ("run_name = 'it''s'", "name = 'it''s'"),
        ("tags.`a``b` = 'v'", "tags.`a``b` = 'v'"),
        ("metrics.a > 1 AND params.b = 'c'", "metrics.`a` > 1 and config.`b` = 'c'"),
    ],
)
def test_a_filter_translates_to_tracklogs_grammar_which_parses_it(mlflow: str, tracklog: str) -> None:
    assert run_filter(mlflow) == tracklog
    parse_run_query(tracklog)  # and tracklog's parser takes it


def test_a_filter_with_quotes_or_comments_stays_a_value() -> None:
    text = run_filter("params.x = 'a'' or 1=1 --'")
    assert text == "config.`x` = 'a'' or 1=1 --'"
    parse_run_query(text)


@pytest.mark.parametrize(
    "bad",
    [
        "metrics.a > 1 OR metrics.b > 2",
        "metrics.a LIKE 'x'",
        "params.a > 'x'",
        "attributes.artifact_uri = 'x'",
        "datasets.name = 'x'",
        "metrics.a >",
        "metrics.a = 'x'",
        "= 1",
    ],
)
def test_a_filter_mlflow_refuses_is_invalid_parameter_value(bad: str) -> None:
    with pytest.raises(MlflowError) as info:
        run_filter(bad)
    assert info.value.code == "INVALID_PARAMETER_VALUE" and info.value.status == 400


def test_order_by_adds_mlflows_tie_breakers() -> None:
    assert run_order(None) == ["started desc", "id asc"]
    assert run_order(["metrics.acc DESC", "params.lr"]) == [
        "metrics.`acc` desc",
        "config.`lr` asc",
        "started desc",
        "id asc",
    ]
    assert run_order(["attributes.start_time ASC"]) == ["started asc", "id asc"]
    parse_run_query(None, run_order(["tags.t DESC", "attributes.end_time"]))


def test_in_lists_and_is_null_parse_into_clauses() -> None:
    clauses = parse_filter("attributes.run_id NOT IN ('a', \"b\") AND tags.t IS NOT NULL")
    assert [(c.kind, c.key, c.op, c.value) for c in clauses] == [
        ("attribute", "run_id", "NOT IN", ("a", "b")),
        ("tag", "t", "IS NOT NULL", None),
    ]


def test_experiment_filters_match_names_case_as_like_and_ilike_say() -> None:
    experiment = {
        "experiment_id": "1",
        "name": "Base",
        "creation_time": 5,
        "tags": [{"key": "k", "value": "v"}],
    }
    assert experiment_matcher("name LIKE 'B%'")(experiment)
    assert not experiment_matcher("name LIKE 'b%'")(experiment)
    assert experiment_matcher("name ILIKE 'b%' AND tags.k = 'v' AND creation_time >= 5")(experiment)
    assert not experiment_matcher("tags.k != 'v'")(experiment)
