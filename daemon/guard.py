"""What a connection may do: its token's scopes, its rate limits, and the daemon's limits.

The daemon's connection handler asks `ConnectionGuard.refusal` about every request before
acting on it, and sends the error it returns instead (`forbidden`, `rate_limited`,
`too_large`), so the handler holds one call and the rules live here, tested by calling
them. `Limits` holds every configurable limit; its defaults are the protocol's
(protocol/limits.py) and those the daemon had before they were configurable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgspec
from msgspec import Raw, Struct

from tracklog.protocol import errors
from tracklog.protocol.connection import AppendFrame, Close, Greeted, Send, ServerEvent
from tracklog.protocol.limits import MAX_DEPTH, MAX_EVENTS_PER_APPEND, MAX_FRAME_BYTES, MAX_QUERY_LIMIT
from tracklog.protocol.messages import Check, Query, Result, Subscribe, Unsubscribe

from .auth import APPEND, READ, Grant, forbidden, op_scope
from .ratelimit import ConnectionLimiter

#: Connections the daemon serves at once unless configured otherwise.
DEFAULT_MAX_CONNECTIONS: Final = 1000
#: Subscriptions one connection may hold open unless configured otherwise.
DEFAULT_MAX_SUBSCRIPTIONS: Final = 100
#: Connections still speaking HTTP (not yet a WebSocket) the daemon keeps at once unless
#: configured otherwise: a browser opens about 6, a dashboard or a script a few.
DEFAULT_MAX_HTTP_CONNECTIONS: Final = 256
#: Seconds an HTTP connection has for a whole request head unless configured otherwise.
DEFAULT_HTTP_HEAD_TIMEOUT: Final = 10.0


@dataclass(frozen=True)
class Limits:
    """The daemon's limits on what clients send and hold (serve options and environment).

    `max_field_chars` None: a string's length is bounded by the frame (and, for ids, run
    ids and names, by the protocol's own limits); `max_connections` None: no limit.

    `max_connections` counts WebSocket connections, `max_http_connections` the connections
    still speaking HTTP (every accepted one until it becomes a WebSocket or closes): apart,
    so that a flood of HTTP connections cannot lock the writers out, nor many writers the
    console; together they bound every connection the daemon holds.
    `http_head_timeout`: seconds for a whole request head (the first, or the next on a
    kept-alive connection), so a client sending it a byte at a time cannot keep its place.
    """

    max_frame_bytes: int = MAX_FRAME_BYTES
    max_events_per_append: int = MAX_EVENTS_PER_APPEND
    max_connections: int | None = DEFAULT_MAX_CONNECTIONS
    max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS
    max_query_rows: int = MAX_QUERY_LIMIT
    max_depth: int = MAX_DEPTH
    max_field_chars: int | None = None
    max_http_connections: int | None = DEFAULT_MAX_HTTP_CONNECTIONS
    http_head_timeout: float = DEFAULT_HTTP_HEAD_TIMEOUT

    def __post_init__(self) -> None:
        for name in (
            "max_frame_bytes",
            "max_events_per_append",
            "max_connections",
            "max_subscriptions",
            "max_query_rows",
            "max_depth",
            "max_field_chars",
            "max_http_connections",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}: expected 1 or more, got {value}")
        if self.max_frame_bytes < 1024:
            raise ValueError(f"max_frame_bytes: expected 1024 or more, got {self.max_frame_bytes}")
        if not 0 < self.http_head_timeout < float("inf"):
            raise ValueError(f"http_head_timeout: expected seconds above 0, got {self.http_head_timeout}")

    def told(self) -> tuple[int | None, int | None]:
        """The frame and append limits a `welcome` tells clients: each only when it is not
        the protocol's default (None: left out)."""
        return (
            self.max_frame_bytes if self.max_frame_bytes != MAX_FRAME_BYTES else None,
            self.max_events_per_append if self.max_events_per_append != MAX_EVENTS_PER_APPEND else None,
        )

    def too_many_connections(self, open_now: int) -> str | None:
        """The close reason when a connection is one too many (None: it may be served)."""
        limit = self.max_connections
        if limit is not None and open_now >= limit:
            return f"too many connections (max_connections={limit})"
        return None

    def check_rows(self, result: Result, q: Query) -> Result:
        """`result`, or TooLarge when it holds more rows than `max_query_rows`."""
        if len(result.rows) > self.max_query_rows:
            raise errors.TooLarge(
                f"query {q.q[:40]}: {len(result.rows)} rows, at most {self.max_query_rows}"
                " (max_query_rows); ask with limit and offset",
                q.ref,
            )
        return result


class _AppendHead(Struct, forbid_unknown_fields=False):
    """An append read only as far as its ref and how many events it holds."""

    events: list[Raw] = []
    ref: int | None = None


_json_head = msgspec.json.Decoder(_AppendHead)
_msgpack_head = msgspec.msgpack.Decoder(_AppendHead)


def append_head(frame: bytes | str) -> tuple[int | None, int]:
    """An append frame's ref and number of events ((None, 0) when it cannot be read: the
    writer's decoding will say why)."""
    if not isinstance(frame, str):
        quick = msgpack_append_head(frame)
        if quick is not None:
            return quick
    try:
        head = _json_head.decode(frame) if isinstance(frame, str) else _msgpack_head.decode(frame)
    except (msgspec.DecodeError, RecursionError):
        return None, 0
    return head.ref, len(head.events)


def msgpack_append_head(frame: bytes) -> tuple[int | None, int] | None:
    """The ref and event count of a MessagePack append read from its headers alone, without
    walking its events (the thin client's appends are a map of `op`, `ref`, then `events`);
    None when the frame has another shape, for `append_head` to decode it instead.

    Only `events` as the map's last entry is read so: no second `events` can follow it to
    be counted by nobody, and a count beyond the bytes left is no count at all.
    """
    try:
        first = frame[0]
        if 0x80 <= first <= 0x8F:
            entries, at = first & 0x0F, 1
        elif first == 0xDE:
            entries, at = int.from_bytes(frame[1:3]), 3
        else:
            return None
        ref: int | None = None
        for entry in range(entries):
            key, at = _msgpack_str(frame, at)
            if key == b"events":
                if entry != entries - 1:
                    return None
                kind = frame[at]
                if 0x90 <= kind <= 0x9F:
                    count, at = kind & 0x0F, at + 1
                elif kind in (0xDC, 0xDD):
                    width = 2 if kind == 0xDC else 4
                    count, at = int.from_bytes(frame[at + 1 : at + 1 + width]), at + 1 + width
                else:
                    return None
                return (ref, count) if count <= len(frame) - at else None
            if key == b"op":
                _, at = _msgpack_str(frame, at)
            elif key == b"ref":
                ref, at = _msgpack_int(frame, at)
            else:
                return None
    except (IndexError, ValueError):
        return None
    return None


def _msgpack_str(frame: bytes, at: int) -> tuple[bytes, int]:
    """A str at `at` (fixstr or str8): its bytes and the offset after it; ValueError otherwise."""
    kind = frame[at]
    if 0xA0 <= kind <= 0xBF:
        length, at = kind & 0x1F, at + 1
    elif kind == 0xD9:
        length, at = frame[at + 1], at + 2
    else:
        raise ValueError("not a short string")
    if at + length > len(frame):
        raise ValueError("truncated")
    return frame[at : at + length], at + length


#: MessagePack's integer formats after their marker byte: (width, signed).
_MSGPACK_INTS: Final = {
    0xCC: (1, False),
    0xCD: (2, False),
    0xCE: (4, False),
    0xCF: (8, False),
    0xD0: (1, True),
    0xD1: (2, True),
    0xD2: (4, True),
    0xD3: (8, True),
}


def _msgpack_int(frame: bytes, at: int) -> tuple[int | None, int]:
    """An integer (or nil) at `at`, and the offset after it; ValueError for anything else."""
    kind = frame[at]
    if kind <= 0x7F:
        return kind, at + 1
    if kind >= 0xE0:
        return kind - 0x100, at + 1
    if kind == 0xC0:
        return None, at + 1
    form = _MSGPACK_INTS.get(kind)
    if form is None:
        raise ValueError("not an integer")
    width, signed = form
    if at + 1 + width > len(frame):
        raise ValueError("truncated")
    return int.from_bytes(frame[at + 1 : at + 1 + width], signed=signed), at + 1 + width


class ConnectionGuard:
    """The scopes, rate limits and limits of one connection."""

    def __init__(self, grant: Grant, limits: Limits, limiter: ConnectionLimiter | None = None) -> None:
        self.grant = grant
        self.limits = limits
        self.limiter = limiter
        self._may_append = grant.allows(APPEND)
        self._may_read = grant.allows(READ)

    def refusal(self, request: ServerEvent, subscriptions: int = 0) -> errors.ProtocolError | None:
        """The error to answer `request` with instead of doing it, or None to do it.
        `subscriptions`: how many this connection holds open now."""
        limiter = self.limiter
        match request:
            case AppendFrame():
                if self._may_append and (limiter is None or not limiter.limits_events):
                    return None  # the hot path: nothing to read in the frame
                ref, events = append_head(request.frame)
                if not self._may_append:
                    return forbidden(APPEND, "append", self.grant, ref)
                assert limiter is not None
                return limiter.append(events, ref)
            case Query():
                scope = op_scope("query", request.q)
                assert scope is not None
                if not self.grant.allows(scope):
                    return forbidden(scope, f"query {request.q[:40]}", self.grant, request.ref)
                limit = self.limits.max_query_rows
                if request.limit is not None and request.limit > limit:
                    return errors.TooLarge(
                        f"limit: {request.limit} rows asked, at most {limit} per query (max_query_rows)",
                        request.ref,
                    )
                return limiter.query("query", request.ref) if limiter is not None else None
            case Check():
                if not self._may_append:
                    return forbidden(APPEND, "check", self.grant, request.ref)
                return limiter.query("check", request.ref) if limiter is not None else None
            case Subscribe():
                if not self._may_read:
                    return forbidden(READ, "subscribe", self.grant, request.ref)
                limit = self.limits.max_subscriptions
                if subscriptions >= limit:
                    return errors.TooLarge(
                        f"subscribe: {subscriptions} subscriptions open, at most {limit} per connection"
                        " (max_subscriptions)",
                        request.ref,
                    )
                return None
            case Unsubscribe():
                return None if self._may_read else forbidden(READ, "unsubscribe", self.grant, request.ref)
            case Send() | Greeted() | Close():
                return None
        return None  # pragma: no cover
