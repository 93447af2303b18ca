"""The cache's entries (`cache.set` events) read by key, expired entries left out."""

from __future__ import annotations

from typing import Any

from tracklog.protocol import errors
from tracklog.protocol.messages import Query

from .dialect import Connection
from .rows import msgpack_decode


def query_cache(conn: Connection, q: Query, now: float) -> tuple[list[Any], int | None]:
    """The entry under q.key, unless absent or expired at `now`."""
    if not q.key:
        raise errors.BadQuery("key: required for q 'cache'", q.ref)
    row = conn.execute("SELECT value, expires_at FROM cache WHERE key = ?", (q.key,)).fetchone()
    if row is None or (row[1] is not None and row[1] <= now):
        return [], 0
    return [{"key": q.key, "value": msgpack_decode(row[0]), "expires_at": row[1]}], 1
