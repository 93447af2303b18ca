"""The event log as JSON Lines: one stored event per line, exactly as the log holds it.

A line is `{"seq", "id", "type", "run", "ts", "recorded", "data"}` in that order (`id`
and `run` are null where the event has none). JSON says every value the log holds
exactly, with one exception: floats that are not finite (a NaN loss) and values JSON has
no type for (MessagePack binary, maps with keys that are not strings) come from clients
that speak MessagePack. An event whose data holds one of those is written with
`"data_msgpack"`, the data's MessagePack in base64, in place of `"data"`, so that every
line reads back to the very value that was logged; all other lines are plain JSON any
tool reads. Floats are written in their shortest form that reads back to the same bits.

`same_event` is how an import, a migration and a purge tell whether two copies of an
event agree: every field equal, NaN equal to NaN, an int never equal to a float.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final

import msgspec

from tracklog.protocol.messages import StoredEvent

#: Events read and written per batch (also the import's transaction size).
BATCH: Final = 5000


class Line(msgspec.Struct, omit_defaults=False):
    """A line whose data is plain JSON (encoded already)."""

    seq: int
    id: str | None
    type: str
    run: str | None
    ts: float
    recorded: float
    data: msgspec.Raw


class EscapedLine(msgspec.Struct, omit_defaults=False):
    """A line whose data JSON cannot say exactly: its MessagePack, in base64."""

    seq: int
    id: str | None
    type: str
    run: str | None
    ts: float
    recorded: float
    data_msgpack: str


class ReadLine(msgspec.Struct):
    """Either kind of line, as read back."""

    seq: int
    type: str
    ts: float
    recorded: float
    id: str | None = None
    run: str | None = None
    data: Any = None
    data_msgpack: str | None = None


class BadLine(ValueError):
    """A line of an import that is not a stored event; the message names the line."""


_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode
_line_decode = msgspec.json.Decoder(ReadLine).decode
_msgpack_encode = msgspec.msgpack.Encoder().encode
_msgpack_decode = msgspec.msgpack.Decoder().decode


def encode_line(event: StoredEvent) -> bytes:
    """One event as a line of JSON, newline included.

    Whether JSON says the data exactly is found by reading the JSON back: its MessagePack
    must be the data's (a NaN comes back as null, bytes as text, an int key as a string).
    Three calls into msgspec cost less than walking the data in Python."""
    line: Line | EscapedLine
    packed = _msgpack_encode(event.data)
    try:
        text = _json_encode(event.data)
    except TypeError:  # a MessagePack extension: no JSON at all
        text = b"null"
    if _msgpack_encode(_json_decode(text)) == packed:
        line = Line(event.seq, event.id, event.type, event.run, event.ts, event.recorded, msgspec.Raw(text))
    else:
        line = EscapedLine(
            event.seq,
            event.id,
            event.type,
            event.run,
            event.ts,
            event.recorded,
            base64.b64encode(packed).decode(),
        )
    return _json_encode(line) + b"\n"


def decode_line(text: bytes, number: int) -> StoredEvent:
    """A line read back as the stored event it was written from; BadLine names line `number`."""
    try:
        line = _line_decode(text)
        data = line.data
        if line.data_msgpack is not None:
            data = _msgpack_decode(base64.b64decode(line.data_msgpack, validate=True))
    except (msgspec.DecodeError, ValueError) as exc:
        raise BadLine(f"line {number}: not a stored event: {exc}") from None
    if not isinstance(data, dict):
        raise BadLine(f"line {number}: data: expected an object")
    return StoredEvent(line.seq, line.type, data, line.recorded, line.ts, line.id, line.run)


def read_lines(lines: Iterable[bytes], batch: int = BATCH) -> Iterator[list[StoredEvent]]:
    """The events of a JSON Lines stream in batches, checked to rise strictly in seq.

    Blank lines are skipped. Raises BadLine for a line that is not an event or a seq that
    does not follow the one before it."""
    out: list[StoredEvent] = []
    last = 0
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        event = decode_line(text, number)
        if event.seq <= last:
            raise BadLine(f"line {number}: seq {event.seq} does not follow seq {last}: seqs must rise")
        last = event.seq
        out.append(event)
        if len(out) >= batch:
            yield out
            out = []
    if out:
        yield out


def same_value(a: Any, b: Any) -> bool:
    """Equal as the log holds them: NaN equals NaN, 1 is not 1.0 nor True, key order aside."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return bool(a == b or (math.isnan(a) and math.isnan(b)))
    if type(a) is dict:
        return a.keys() == b.keys() and all(same_value(v, b[k]) for k, v in a.items())
    if type(a) is list:
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def same_event(a: StoredEvent, b: StoredEvent) -> bool:
    """Whether two copies of an event agree in every field."""
    return (
        a.seq == b.seq
        and a.id == b.id
        and a.type == b.type
        and a.run == b.run
        and same_value(a.ts, b.ts)
        and same_value(a.recorded, b.recorded)
        # Equal MessagePack is equal data (types and NaN included), checked at C speed;
        # only data that differs there (keys in another order, say) is walked.
        and (_msgpack_encode(a.data) == _msgpack_encode(b.data) or same_value(a.data, b.data))
    )


def describe_difference(a: StoredEvent, b: StoredEvent) -> str:
    """Which fields of two copies of an event differ (for a refusal's message)."""
    fields: Sequence[str] = ("id", "type", "run", "ts", "recorded", "data")
    differing = [f for f in fields if not same_value(getattr(a, f), getattr(b, f))]
    return ", ".join(differing) or "nothing"
