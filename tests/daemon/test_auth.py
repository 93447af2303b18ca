"""Tokens with scopes: the tokens file, constant-time lookup, and the table of what each op needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracklog.daemon.auth import (
    ADMIN,
    ALL_SCOPES,
    APPEND,
    READ,
    TokenFileError,
    TokenSet,
    grant,
    http_scope,
    op_scope,
    parse_tokens,
    read_tokens,
)
from tracklog.daemon.service import load_reloadable


def test_a_tokens_file_gives_each_token_its_scopes() -> None:
    text = (
        "# token   scopes\n"
        "\n"
        "writer    append\n"
        "reader\tread  # dashboards\n"
        "both      read,append\n"
        "spaced    read  append\n"
        "boss      admin\n"
        "legacy\n"
    )
    grants = {g.token: g.scopes for g in parse_tokens(text)}
    assert grants == {
        "writer": {APPEND},
        "reader": {READ},
        "both": {READ, APPEND},
        "spaced": {READ, APPEND},
        "boss": {ADMIN},
        "legacy": ALL_SCOPES,  # a line without scopes: all of them, as before scopes existed
    }


def test_a_bad_tokens_file_names_the_line_and_never_the_token() -> None:
    with pytest.raises(TokenFileError, match="line 2: unknown scope 'wrte'") as caught:
        parse_tokens("ok append\nsecret-token wrte\n")
    assert "secret-token" not in str(caught.value)
    with pytest.raises(TokenFileError, match="line 3: a token given twice"):
        parse_tokens("a read\nb\na append\n")


def test_read_tokens_says_when_the_file_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="cannot read the tokens file"):
        read_tokens(tmp_path / "missing")


def test_find_returns_the_grant_of_the_token_and_nothing_for_others() -> None:
    tokens = TokenSet([grant("aaa", {READ}), grant("bbb", {APPEND}), grant("", {ADMIN})])
    found = tokens.find("bbb")
    assert found is not None and found.scopes == {APPEND}
    assert tokens.find("bb") is None and tokens.find("bbbb") is None
    assert tokens.find("") is None and tokens.find(None) is None  # empty never authenticates
    assert found.name.startswith("token:") and "bbb" not in repr(found)


def test_find_compares_every_token_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    import tracklog.daemon.auth as auth

    calls: list[bytes] = []
    compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    tokens = TokenSet([grant("first"), grant("second"), grant("third")])
    assert tokens.find("first") is not None
    assert calls == [b"first", b"second", b"third"]  # no early return on a match


def test_the_same_token_from_two_sources_gets_both_scopes() -> None:
    tokens = TokenSet([grant("t", {READ}), grant("t", {APPEND})])
    found = tokens.find("t")
    assert found is not None and found.scopes == {READ, APPEND} and len(tokens) == 1


def test_admin_allows_everything_and_other_scopes_only_themselves() -> None:
    assert grant("a", {ADMIN}).allows(APPEND) and grant("a", {ADMIN}).allows(READ)
    assert grant("r", {READ}).allows(READ) and not grant("r", {READ}).allows(APPEND)
    assert not grant("r", {READ, APPEND}).allows(ADMIN)
    assert grant("w", {APPEND}).allows(None)  # /healthz, /metrics: any valid token


@pytest.mark.parametrize(
    ("op", "q", "scope"),
    [
        ("append", None, APPEND),
        ("check", None, APPEND),
        ("query", "runs", READ),
        ("query", "events", READ),
        ("query", "sql", ADMIN),
        ("query", "schema", ADMIN),
        ("subscribe", None, READ),
        ("unsubscribe", None, READ),
        ("hello", None, None),
    ],
)
def test_every_op_maps_to_the_scope_it_needs(op: str, q: str | None, scope: str | None) -> None:
    assert op_scope(op, q) == scope


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/healthz", None),
        ("GET", "/metrics", None),
        ("GET", "/api/runs", READ),
        ("GET", "/api/runs/r1/export/csv", READ),
        ("GET", "/", READ),
        ("DELETE", "/api/runs/r1", APPEND),
        ("POST", "/api/runs/r1/restore", APPEND),
        # MLflow: its searches are POSTs that only read; every other POST, PUT, DELETE writes.
        ("POST", "/api/2.0/mlflow/runs/search", READ),
        ("POST", "/ajax-api/2.0/mlflow/experiments/search", READ),
        ("POST", "/api/2.0/mlflow/logged-models/search/", READ),
        ("GET", "/api/2.0/mlflow/runs/get", READ),
        ("POST", "/api/2.0/mlflow/runs/log-batch", APPEND),
        ("POST", "/api/2.0/mlflow/experiments/create", APPEND),
        ("POST", "/api/2.0/mlflow/runs/searchx", APPEND),
        ("PUT", "/api/2.0/mlflow-artifacts/artifacts/0/r/artifacts/f.txt", APPEND),
        ("GET", "/api/2.0/mlflow-artifacts/artifacts/0/r/artifacts/f.txt", READ),
        ("DELETE", "/api/2.0/mlflow-artifacts/artifacts/0/r/artifacts/f.txt", APPEND),
    ],
)
def test_every_http_request_maps_to_the_scope_it_needs(method: str, path: str, scope: str | None) -> None:
    assert http_scope(method, path) == scope


def test_reload_reads_scoped_tokens_and_environment_tokens(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("w append\nr read\n")
    env = tmp_path / "env"
    env.write_text("TRACKLOG_TOKENS=e1,e2\n")
    reloaded = load_reloadable(tokens, env)
    assert reloaded.tokens == ("e1", "e2", "w", "r")
    assert {g.token: g.scopes for g in reloaded.grants} == {
        "e1": ALL_SCOPES,
        "e2": ALL_SCOPES,
        "w": {APPEND},
        "r": {READ},
    }
