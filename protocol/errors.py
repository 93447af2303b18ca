"""Error codes of the wire protocol and the exception tree of tracklog.

TracklogError
 └── ProtocolError          an error that has a wire code (PROTOCOL.md, "errors")
      ├── BadFrame          bad_frame: the frame could not be decoded
      ├── BadMessage        bad_message: decoded, but not a valid message
      ├── UnknownOp         unknown_op
      ├── HelloRequired     hello_required (closes the connection)
      ├── Unauthorized      unauthorized (closes the connection, code 1008)
      ├── Forbidden         forbidden
      ├── TooLarge          too_large
      ├── NotFound          not_found
      ├── BadQuery          bad_query
      ├── Overloaded        overloaded
      ├── RateLimited       rate_limited (transient: send again after `retry_after` seconds)
      ├── DiskFull          disk_full (nothing committed; transient: resend later)
      └── InternalError     internal
 └── StorageError           the log store failed (wraps the driver's error)
"""

from __future__ import annotations

from typing import ClassVar, Final

BAD_FRAME: Final = "bad_frame"
BAD_MESSAGE: Final = "bad_message"
UNKNOWN_OP: Final = "unknown_op"
HELLO_REQUIRED: Final = "hello_required"
UNAUTHORIZED: Final = "unauthorized"
FORBIDDEN: Final = "forbidden"
TOO_LARGE: Final = "too_large"
NOT_FOUND: Final = "not_found"
BAD_QUERY: Final = "bad_query"
OVERLOADED: Final = "overloaded"
#: A rate limit of the connection or of its token: nothing of the request was done; the
#: error's `retry_after` says how many seconds to wait before sending it again.
RATE_LIMITED: Final = "rate_limited"
#: The daemon's disk is full: nothing of the request was committed. Transient by nature:
#: the daemon recovers by itself when space returns, so a client keeps the events and
#: sends them again later (as for `overloaded` and `internal`).
DISK_FULL: Final = "disk_full"
INTERNAL: Final = "internal"
#: Per-event code in an ack's `rejected` list.
INVALID_EVENT: Final = "invalid_event"

ERROR_CODES: Final = frozenset(
    {
        BAD_FRAME,
        BAD_MESSAGE,
        UNKNOWN_OP,
        HELLO_REQUIRED,
        UNAUTHORIZED,
        FORBIDDEN,
        TOO_LARGE,
        NOT_FOUND,
        BAD_QUERY,
        OVERLOADED,
        RATE_LIMITED,
        DISK_FULL,
        INTERNAL,
    }
)
#: Codes that say nothing about the request itself: the same request may succeed later.
TRANSIENT_CODES: Final = frozenset({OVERLOADED, RATE_LIMITED, DISK_FULL, INTERNAL})


class TracklogError(Exception):
    """Root of every exception tracklog raises on purpose."""


class ProtocolError(TracklogError):
    """An error that travels on the wire as `{"op": "error", "code": ...}`."""

    code: ClassVar[str] = INTERNAL

    def __init__(self, message: str, ref: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.ref = ref


class BadFrame(ProtocolError):
    code = BAD_FRAME


class BadMessage(ProtocolError):
    code = BAD_MESSAGE


class UnknownOp(ProtocolError):
    code = UNKNOWN_OP


class HelloRequired(ProtocolError):
    code = HELLO_REQUIRED


class Unauthorized(ProtocolError):
    code = UNAUTHORIZED


class Forbidden(ProtocolError):
    code = FORBIDDEN


class TooLarge(ProtocolError):
    code = TOO_LARGE


class NotFound(ProtocolError):
    code = NOT_FOUND


class BadQuery(ProtocolError):
    code = BAD_QUERY


class Overloaded(ProtocolError):
    code = OVERLOADED


class RateLimited(ProtocolError):
    """A rate limit was hit; `retry_after`: seconds until the same request would pass."""

    code = RATE_LIMITED

    def __init__(self, message: str, ref: int | None = None, retry_after: float = 0.0) -> None:
        super().__init__(message, ref)
        self.retry_after = retry_after


class DiskFull(ProtocolError):
    code = DISK_FULL


class InternalError(ProtocolError):
    code = INTERNAL


class StorageError(TracklogError):
    """The event log or its tables could not be read or written."""


_BY_CODE: dict[str, type[ProtocolError]] = {
    cls.code: cls
    for cls in (
        BadFrame,
        BadMessage,
        UnknownOp,
        HelloRequired,
        Unauthorized,
        Forbidden,
        TooLarge,
        NotFound,
        BadQuery,
        Overloaded,
        RateLimited,
        DiskFull,
        InternalError,
    )
}


def error_for_code(
    code: str, message: str, ref: int | None = None, retry_after: float | None = None
) -> ProtocolError:
    """The exception that stands for a wire error code (unknown codes: InternalError)."""
    if code == RATE_LIMITED:
        return RateLimited(message, ref, retry_after or 0.0)
    return _BY_CODE.get(code, InternalError)(message, ref)
