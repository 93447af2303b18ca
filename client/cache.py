"""The metadata cache from the thin client: `tl.cache.get/set/invalidate/clear/get_or_set`,
and `tracklog.cache_key` for stable keys derived from connection details.

Entries live in the daemon (`cache.put` / `cache.invalidated` events, the `cache` query),
so every pipeline and every run on the machine shares them, and they outlive processes.
`set` waits for the daemon's ack, so a `get` right after it sees the value.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

import msgspec

from tracklog.protocol.events import (
    CacheInvalidated,
    CacheInvalidatedData,
    CachePut,
    CachePutData,
    event_type,
)
from tracklog.protocol.messages import Ack, Append, Query, Result

from . import wire
from .ids import uuid7
from .requests import DaemonUnavailable

if TYPE_CHECKING:
    from .tracker import Tracker

T = TypeVar("T")
_MISSING: Final = object()
_canonical = msgspec.json.Encoder(order="sorted", enc_hook=wire.enc_hook).encode

#: Detail names that are secrets (compared lower-cased, `-` read as `_`): left out of keys.
SECRET_NAMES: Final = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "secret",
        "token",
        "api_key",
        "apikey",
        "access_key",
        "secret_key",
        "private_key",
        "client_secret",
        "access_token",
        "refresh_token",
        "session_token",
        "auth",
        "authorization",
        "credentials",
        "cookie",
    }
)
_SECRET_SUFFIXES: Final = tuple(f"_{name}" for name in SECRET_NAMES)


def is_secret(name: str) -> bool:
    """Whether a detail's name says it holds a secret (`password`, `DB_PASSWORD`, `api-key`...)."""
    normal = name.lower().replace("-", "_")
    return normal in SECRET_NAMES or normal.endswith(_SECRET_SUFFIXES)


def _without_secrets(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _without_secrets(v) for k, v in value.items() if not is_secret(str(k))}
    if isinstance(value, (list, tuple)):
        return [_without_secrets(v) for v in value]
    if isinstance(value, str) and "://" in value and "@" in value:
        return _url_without_password(value)
    return value


def _url_without_password(url: str) -> str:
    """postgresql://user:pw@host/db -> postgresql://user@host/db (other strings unchanged)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        user = f"{parts.username}@" if parts.username else ""
        return urlunsplit(parts._replace(netloc=user + host))
    except ValueError:
        return url


def cache_key(kind: str, **details: Any) -> str:
    """A stable cache key for `kind` and connection details: SHA-256 of their canonical JSON.

    Keys are sorted, so argument order does not matter; secrets (passwords, tokens, API
    keys, a password inside a URL) are left out, so rotating one keeps the key and the
    key reveals none.

        key = tracklog.cache_key("db_schema", host="db1", port=5432, database="sales", password=pw)
    """
    payload = {"kind": kind, "details": _without_secrets(details)}
    return f"{kind}:{hashlib.sha256(_canonical(payload)).hexdigest()}"


class Cache:
    """The daemon's metadata cache, as `tracker.cache`."""

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = tracker

    def get(self, key: str, default: Any = None, *, timeout: float | None = None) -> Any:
        """The value cached under key, or default when absent or expired."""
        value = self._get(key, timeout)
        return default if value is _MISSING else value

    def _get(self, key: str, timeout: float | None) -> Any:
        wire.check_name("key", key)
        reply = self._tracker._requests.request(Query(q="cache", key=key), timeout)
        assert isinstance(reply, Result), reply
        return reply.rows[0]["value"] if reply.rows else _MISSING

    def set(self, key: str, value: Any, ttl: float | None = None, *, timeout: float | None = None) -> None:
        """Cache value under key, for ttl seconds (None: until invalidated). Waits for the ack."""
        wire.check_name("key", key)
        ttl = None if ttl is None else wire.check_float("ttl", ttl)
        ts = time.time()
        self._append(CachePut(id=uuid7(ts), ts=ts, data=CachePutData(key, value, ttl)), timeout)

    def invalidate(self, key: str, *, timeout: float | None = None) -> None:
        """Forget one key."""
        wire.check_name("key", key)
        ts = time.time()
        self._append(CacheInvalidated(id=uuid7(ts), ts=ts, data=CacheInvalidatedData(key)), timeout)

    def clear(self, *, timeout: float | None = None) -> None:
        """Forget every key."""
        ts = time.time()
        self._append(CacheInvalidated(id=uuid7(ts), ts=ts), timeout)

    def get_or_set(
        self, key: str, compute: Callable[[], T], ttl: float | None = None, *, timeout: float | None = None
    ) -> T:
        """The cached value, or compute() cached for ttl seconds.

        The cache is a help, never a requirement: when the daemon is away, compute() is
        called and its value returned uncached.
        """
        try:
            value = self._get(key, timeout)
        except DaemonUnavailable:
            return compute()
        if value is not _MISSING:
            return value  # type: ignore[no-any-return]
        value = compute()
        with contextlib.suppress(DaemonUnavailable):
            self.set(key, value, ttl, timeout=timeout)
        return value

    def _append(self, event: CachePut | CacheInvalidated, timeout: float | None) -> None:
        reply = self._tracker._requests.request(Append(events=[event]), timeout)
        assert isinstance(reply, Ack), reply
        if reply.rejected:
            raise ValueError(
                f"cache: the daemon refused the {event_type(event)} event: {reply.rejected[0].message}"
            )
