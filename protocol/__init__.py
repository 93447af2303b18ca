"""The tracklog wire protocol: messages, events, codecs, limits and error codes. No I/O."""

from .errors import ProtocolError, TracklogError
from .events import AnyEvent, Event, check_event, event_type
from .limits import DEFAULT_HOST, DEFAULT_PORT, MAX_EVENTS_PER_APPEND, MAX_FRAME_BYTES, PROTOCOL_VERSION
from .messages import Ack, Append, ClientMessage, Codec, Error, Hello, Query, Result, StoredEvent, Welcome

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "MAX_EVENTS_PER_APPEND",
    "MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "Ack",
    "AnyEvent",
    "Append",
    "ClientMessage",
    "Codec",
    "Error",
    "Event",
    "Hello",
    "ProtocolError",
    "Query",
    "Result",
    "StoredEvent",
    "TracklogError",
    "Welcome",
    "check_event",
    "event_type",
]
