"""Tokens and their scopes: who may connect, and which ops each token may use.

A token grants one or more scopes:

- `append`: append events, `check` (which records entries), delete and restore runs;
- `read`: queries, subscriptions, the HTTP API's reads and exports;
- `admin`: everything, including `sql` and `schema` queries and anything that changes the
  daemon itself.

Tokens come from `--token`/`$TRACKLOG_TOKENS` (all scopes, as before scopes existed) and
from a tokens file, one token a line followed by its scopes (none: all scopes):

    # token                          scopes
    3f9a0c7e5b...                    append
    71d2e4aa09...                    read,append
    c0ffee1234...                    admin
    legacy-token-without-scopes

Tokens are compared in constant time against every configured token (a match found early
returns no sooner), so the time an answer takes says nothing about how much of a guess was
right. The table of what each op needs (`OP_SCOPES`, `QUERY_SCOPES`, `http_scope`) is here
and nowhere else; everything here is pure, so it is tested by calling it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from tracklog.protocol import errors

APPEND: Final = "append"
READ: Final = "read"
ADMIN: Final = "admin"
SCOPES: Final = frozenset({APPEND, READ, ADMIN})
ALL_SCOPES: Final = SCOPES

#: The scope each client op needs (`hello` needs none: it is where the token is given).
OP_SCOPES: Final[dict[str, str]] = {
    "append": APPEND,
    # A check records what it checked (unless `record: false`): it writes to the log.
    "check": APPEND,
    "query": READ,
    "subscribe": READ,
    "unsubscribe": READ,
}
#: Queries that need more than `read`: SQL on the daemon's database, and its schema.
QUERY_SCOPES: Final[dict[str, str]] = {"sql": ADMIN, "schema": ADMIN}
#: HTTP paths any valid token may read, whatever its scopes (as before scopes existed).
ANY_TOKEN_PATHS: Final = frozenset({"/healthz", "/metrics"})
#: MLflow's tracking endpoints that only read but are called with POST (their fields in a
#: JSON body): they need `read`, as a GET does. Every other POST of MLflow's writes.
MLFLOW_POST_READS: Final = frozenset({"experiments/search", "runs/search", "logged-models/search"})
_MLFLOW_TRACKING: Final = re.compile(r"/(?:ajax-)?api/2\.0/mlflow/(?P<endpoint>.*?)/?")


class TokenFileError(errors.TracklogError):
    """A tokens file that cannot be used; the message names the line, never a token."""


@dataclass(frozen=True)
class Grant:
    """One configured token and the scopes it grants. `name` identifies it in logs and in
    per-token rate limits without revealing it (a short digest)."""

    token: str = field(repr=False)
    scopes: frozenset[str] = ALL_SCOPES
    name: str = ""

    def allows(self, scope: str | None) -> bool:
        """Whether this token may do what needs `scope` (None: any valid token may)."""
        return scope is None or scope in self.scopes or ADMIN in self.scopes


def token_name(token: str) -> str:
    """A token's name for logs: `token:` and the first 8 hex digits of its SHA-256."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:8]


def grant(token: str, scopes: Iterable[str] = ALL_SCOPES) -> Grant:
    return Grant(token, frozenset(scopes), token_name(token))


_SCOPE_SPLIT = re.compile(r"[,\s]+")


def parse_tokens(text: str, source: str = "tokens file") -> tuple[Grant, ...]:
    """The grants of a tokens file's text: `TOKEN [SCOPE[,SCOPE...]]` a line, scopes split by
    commas or spaces; blank lines and `#` comments skipped (also after a token, following a
    space). TokenFileError, naming the line, for an unknown scope or a token given twice."""
    grants: list[Grant] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        line = re.split(r"\s#", line, maxsplit=1)[0].strip()
        if not line or line.startswith("#"):
            continue
        token, *rest = line.split(None, 1)
        words = [w for w in _SCOPE_SPLIT.split(rest[0]) if w] if rest else []
        unknown = [w for w in words if w not in SCOPES]
        if unknown:
            expected = ", ".join(sorted(SCOPES))
            raise TokenFileError(
                f"{source} line {number}: unknown scope '{unknown[0][:40]}' (expected {expected})"
            )
        if token in seen:
            raise TokenFileError(f"{source} line {number}: a token given twice")
        seen.add(token)
        grants.append(grant(token, words or ALL_SCOPES))
    return tuple(grants)


def read_tokens(path: Path) -> tuple[Grant, ...]:
    """The grants of the tokens file at path; TokenFileError when it cannot be read or used."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"cannot read the tokens file: {exc}") from exc
    return parse_tokens(text, str(path))


class TokenSet:
    """The configured grants; `find` says which one a token is, in constant time.

    Empty means no tokens are configured: every connection is let in with all scopes.
    """

    def __init__(self, grants: Iterable[Grant] = ()) -> None:
        merged: dict[str, Grant] = {}
        for g in grants:
            before = merged.get(g.token)
            # The same token from two sources grants what both give it.
            merged[g.token] = g if before is None else grant(g.token, before.scopes | g.scopes)
        self.grants = tuple(merged.values())
        self._encoded = tuple((g.token.encode(), g) for g in self.grants)

    @property
    def configured(self) -> bool:
        return bool(self.grants)

    def __len__(self) -> int:
        return len(self.grants)

    def find(self, token: str | None) -> Grant | None:
        """The grant of `token`, or None. Every configured token is compared, whatever
        matches, each with hmac.compare_digest; an empty token never matches."""
        if not token:
            return None
        given = token.encode()
        found: Grant | None = None
        for expected, g in self._encoded:
            if hmac.compare_digest(given, expected) and expected:
                found = g
        return found


#: What a connection is let in with when no tokens are configured.
OPEN_GRANT: Final = Grant("", ALL_SCOPES, "anonymous")


def op_scope(op: str, q: str | None = None) -> str | None:
    """The scope a client op needs (`q`: the query's name for `query`); None for hello."""
    if op == "query" and q is not None:
        return QUERY_SCOPES.get(q, READ)
    return OP_SCOPES.get(op)


def http_scope(method: str, path: str) -> str | None:
    """The scope an HTTP request needs: None (any valid token) for /healthz and /metrics,
    `read` for reads (GET, HEAD, and MLflow's searches, which are POSTs), `append` for what
    writes (deleting, restoring runs; MLflow's POST, PATCH, PUT and DELETE: logging, creating
    runs and experiments, artifact uploads)."""
    if path in ANY_TOKEN_PATHS:
        return None
    if method in ("GET", "HEAD"):
        return READ
    mlflow = _MLFLOW_TRACKING.fullmatch(path)
    if mlflow is not None and method == "POST" and mlflow["endpoint"] in MLFLOW_POST_READS:
        return READ
    return APPEND


def forbidden(scope: str, what: str, who: Grant, ref: int | None = None) -> errors.Forbidden:
    """The `forbidden` error for `what`, naming the scope it needs and the token (by name)."""
    return errors.Forbidden(f"{what}: needs the '{scope}' scope, which {who.name} does not have", ref)
