"""Wire messages, tagged by `op`, and the codec that turns frames into them and back.

Text frames are JSON, binary frames MessagePack. Decoding is pure: `Codec.decode`
takes a frame and returns a message, or raises the ProtocolError whose code the reply
carries. An `append` whose events are partly bad decodes to an `Append` holding the
good events and a `rejected` entry for each bad one, so nothing else is lost.
"""

from __future__ import annotations

import logging
from typing import Any, Final, Literal

import msgspec
from msgspec import UNSET, Raw, Struct, UnsetType, field

from . import errors
from .events import (
    DAEMON_TYPES,
    FREE_FORM_FIELDS,
    AnyEvent,
    Event,
    InvalidEvent,
    Metrics,
    Name,
    RunId,
    _check_name,
    check_event,
    event_type,
    explain_validation_error,
    finite_floats_as_strings,
    json_value_problem,
)
from .limits import MAX_DEPTH, MAX_EVENTS_PER_APPEND

_log = logging.getLogger("tracklog.protocol")


class Message(Struct, tag_field="op", forbid_unknown_fields=False, omit_defaults=True, kw_only=True):
    """Base of every wire message.

    tag_field="op": the `op` field names the kind, so one Union decodes them all.
    forbid_unknown_fields=False: unknown fields are ignored, as the protocol says.
    omit_defaults=True: optional fields left at their default are not sent.
    """


# -- client to daemon ---------------------------------------------------------------


class Hello(Message, tag="hello"):
    protocol: int = 1
    client: str | None = None
    token: str | None = None
    ref: int | None = None


class Rejection(Struct, omit_defaults=True):
    index: int
    code: str
    message: str


class Append(Message, tag="append"):
    events: list[AnyEvent]
    ref: int | None = None
    #: Filled by the codec, never read from the wire: events refused one by one.
    rejected: list[Rejection] = field(default_factory=list)
    #: Filled by the codec: the index in the append of each event in `events`.
    indexes: list[int] | None = None


class Query(Message, tag="query"):
    q: str
    ref: int | None = None
    filter: str | None = None
    order_by: list[str] | None = None
    limit: int | None = None
    offset: int | None = None
    deleted: bool | None = None
    run: str | None = None
    runs: list[str] | None = None
    names: list[str] | None = None
    metrics: list[str] | None = None
    metric: str | None = None
    mode: str | None = None
    max_points: int | None = None
    step_from: int | None = None
    step_to: int | None = None
    stage: str | None = None
    status: str | None = None
    model: str | None = None
    backend: str | None = None
    text: str | None = None
    from_seq: int | None = None
    types: list[str] | None = None
    key: str | None = None
    #: The statement of q 'sql' (extension).
    sql: str | None = None
    #: Experiment ids, for q 'experiments' (extension).
    experiments: list[str] | None = None


class SubscribeFilter(Struct, forbid_unknown_fields=False, omit_defaults=True):
    runs: list[str] | None = None
    types: list[str] | None = None
    pipelines: list[str] | None = None


class Subscribe(Message, tag="subscribe"):
    ref: int | None = None
    from_seq: int | None = None
    filter: SubscribeFilter | None = None


class Unsubscribe(Message, tag="unsubscribe"):
    sub: int
    ref: int | None = None


class CheckInput(Struct, forbid_unknown_fields=False, omit_defaults=True):
    """One input of a batch `check` (extension): the input and its item; the rest comes from the check."""

    text: str | None = None
    value: Any | UnsetType = UNSET
    vector: list[float] | None = None
    item: str | None = None


class Check(Message, tag="check"):
    """Near-duplicate check of one input (`text`, `value` or `vector`), or of many (`inputs`)."""

    namespace: Name
    kind: Literal["hash", "simhash", "embedding"]
    text: str | None = None
    #: Any JSON value, null included: UNSET tells an absent value from a null one.
    value: Any | UnsetType = UNSET
    vector: list[float] | None = None
    space: Name | None = None
    threshold: float | None = None
    record: bool = True
    run: RunId | None = None
    item: str | None = None
    #: Extension: many inputs in one message, answered by one `checked` with `results`.
    inputs: list[CheckInput] | None = None
    ref: int | None = None


ClientMessage = Hello | Append | Query | Subscribe | Unsubscribe | Check
CLIENT_OPS: Final = frozenset({"hello", "append", "query", "subscribe", "unsubscribe", "check"})


# -- daemon to client ---------------------------------------------------------------


class Welcome(Message, tag="welcome"):
    protocol: int
    server: str
    head: int
    #: The `ref` of the `hello` this answers (omitted when the hello had none).
    ref: int | None = None
    #: Extension: the daemon's limits, when they are not the protocol's defaults, so a
    #: client can size its appends to fit (frame bytes, events per append).
    max_frame_bytes: int | None = None
    max_events_per_append: int | None = None


class Duplicate(Struct):
    index: int
    seq: int


class Ack(Message, tag="ack"):
    accepted: int
    first_seq: int | None = None
    last_seq: int | None = None
    duplicates: list[Duplicate] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    ref: int | None = None


class Result(Message, tag="result"):
    seq: int
    rows: list[Any]
    total: int | None = None
    ref: int | None = None


class Subscribed(Message, tag="subscribed"):
    sub: int
    head: int
    ref: int | None = None


class Unsubscribed(Message, tag="unsubscribed"):
    """Extension: the answer to `unsubscribe`; no event of `sub` follows it."""

    sub: int
    ref: int | None = None


class Match(Struct, omit_defaults=False):
    """The nearest recorded entry of a duplicate: its item, run and distance (and seq, an extension)."""

    item: str | None
    run: str | None
    distance: float | int
    seq: int


class CheckOutcome(Struct, omit_defaults=True):
    """The answer for one input of a batch check; `recorded`: the seq of the `dedup.recorded` it wrote."""

    duplicate: bool
    match: Match | None
    recorded: int | None = None


class Checked(Message, tag="checked"):
    """The answer to `check`. `seq`: the log's head after the check. For a batch, `results`
    holds one outcome per input, `duplicate` says whether any was one, and `match` is null."""

    duplicate: bool
    match: Match | None
    seq: int
    recorded: int | None = None
    results: list[CheckOutcome] | None = None
    ref: int | None = None


class StoredEvent(Struct, omit_defaults=False):
    """An event as the log holds it: client form plus `seq` and `recorded`."""

    seq: int
    type: str
    data: Any
    recorded: float
    ts: float
    id: str | None = None
    run: str | None = None


class Events(Message, tag="events"):
    sub: int
    events: list[StoredEvent]


class Live(Message, tag="live"):
    sub: int
    seq: int


class Error(Message, tag="error"):
    code: str
    message: str
    ref: int | None = None
    #: Extension, with `rate_limited` only: seconds to wait before sending the request again.
    retry_after: float | None = None


ServerMessage = Welcome | Ack | Result | Subscribed | Unsubscribed | Events | Live | Error | Checked


class _Envelope(Struct, forbid_unknown_fields=False):
    op: Any = None
    ref: Any = None


class _RawAppend(Struct, forbid_unknown_fields=False):
    events: list[Raw]
    ref: int | None = None


def _free_form_problem(event: Event, max_depth: int = MAX_DEPTH) -> str | None:
    """The first free-form value of an event (config, item data, metadata, cache value)
    that is not a JSON value every reader can take back, as a rejection message."""
    data = event.data  # type: ignore[attr-defined]
    for name in FREE_FORM_FIELDS.get(data.__class__, ()):
        problem = json_value_problem(getattr(data, name), f"{event_type(event)}.{name}", max_depth)
        if problem is not None:
            return problem
    return None


def long_string_problem(value: Any, limit: int, path: str) -> str | None:
    """The first string (or map key) longer than `limit` characters anywhere in value (maps,
    lists, structs), as `PATH: N characters, at most LIMIT (max_field_chars)`; None if none."""
    cls = value.__class__
    if cls is str:
        if len(value) > limit:
            return f"{path}: {len(value)} characters, at most {limit} (max_field_chars)"
        return None
    if isinstance(value, Struct):  # its field names are the protocol's: only the values are checked
        for name in value.__struct_fields__:
            found = long_string_problem(getattr(value, name), limit, f"{path}.{name}")
            if found is not None:
                return found
        return None
    if cls is dict:
        for key, child in value.items():
            if key.__class__ is str and len(key) > limit:
                return f"{path}: a key of {len(key)} characters, at most {limit} (max_field_chars)"
            found = long_string_problem(child, limit, f"{path}.{key}")
            if found is not None:
                return found
    elif cls is list or cls is tuple:
        for index, child in enumerate(value):
            found = long_string_problem(child, limit, f"{path}[{index}]")
            if found is not None:
                return found
    return None


class Codec:
    """Decodes client frames and encodes replies; one per process, built once.

    The limits on what a client sends are the protocol's defaults (protocol/limits.py)
    unless the daemon is configured otherwise: `max_events_per_append` (also the inputs of
    one batch check), `max_depth` (nesting of free-form values) and `max_field_chars`
    (the longest string anywhere in an event's data; None: bounded by the frame only).
    """

    def __init__(
        self,
        max_events_per_append: int = MAX_EVENTS_PER_APPEND,
        max_depth: int = MAX_DEPTH,
        max_field_chars: int | None = None,
    ) -> None:
        self.max_events_per_append = max_events_per_append
        self.max_depth = max_depth
        self.max_field_chars = max_field_chars
        self._json_msg = msgspec.json.Decoder(ClientMessage)
        self._mp_msg = msgspec.msgpack.Decoder(ClientMessage)
        self._json_env = msgspec.json.Decoder(_Envelope)
        self._mp_env = msgspec.msgpack.Decoder(_Envelope)
        self._json_raw_append = msgspec.json.Decoder(_RawAppend)
        self._mp_raw_append = msgspec.msgpack.Decoder(_RawAppend)
        self._json_event = msgspec.json.Decoder(AnyEvent)
        self._mp_event = msgspec.msgpack.Decoder(AnyEvent)
        # Plain decoders for explaining a bad event: float_hook lets a number JSON cannot
        # hold as a float (1e400) through as an infinity, so the event can be read to name
        # the field that holds it.
        self._json_any = msgspec.json.Decoder(float_hook=float)
        self._mp_any = msgspec.msgpack.Decoder()
        self._json_enc = msgspec.json.Encoder()
        self._mp_enc = msgspec.msgpack.Encoder()
        #: Frames whose decoding raised something other than a ProtocolError (a bug in
        #: the codec): answered with bad_frame by the last-resort guard in `decode`.
        self.unexpected_errors = 0

    # -- decoding ---------------------------------------------------------------

    def decode(self, frame: bytes | str) -> ClientMessage:
        """Decode one frame (str: JSON, bytes: MessagePack) into a checked message.

        Raises only ProtocolError, by construction: whatever else escapes the decoding (a
        bug) is counted, logged, and answered as `bad_frame`, a verdict on the frame's
        content (so a client does not resend it), never one that could stop a caller.
        """
        try:
            return self._decode(frame)
        except errors.ProtocolError:
            raise
        except Exception as exc:
            self.unexpected_errors += 1
            _log.exception("unexpected error while decoding a frame")
            message = f"the frame could not be decoded ({type(exc).__name__}: {str(exc)[:200]})"
            raise errors.BadFrame(message, self._ref_of(frame)) from exc

    def _ref_of(self, frame: bytes | str) -> int | None:
        """The frame's `ref` if it can be read at all, for an error reply."""
        try:
            ref = (
                self._json_env.decode(frame).ref if isinstance(frame, str) else self._mp_env.decode(frame).ref
            )
        except Exception:
            return None
        return ref if isinstance(ref, int) and not isinstance(ref, bool) else None

    def _decode(self, frame: bytes | str) -> ClientMessage:
        binary = not isinstance(frame, str)
        try:
            msg = self._json_msg.decode(frame) if isinstance(frame, str) else self._mp_msg.decode(frame)
        except msgspec.ValidationError as exc:
            return self._decode_slow(frame, binary, exc)
        except msgspec.DecodeError as exc:
            raise errors.BadFrame(f"undecodable {'MessagePack' if binary else 'JSON'}: {exc}") from exc
        except RecursionError as exc:
            raise errors.BadFrame("frame nested too deeply") from exc
        if isinstance(msg, Append):
            msg.rejected = []  # never taken from the wire
            msg.indexes = None
            self._check_append(msg)
        elif isinstance(msg, Check):
            check_request(msg, self.max_events_per_append)
        return msg

    def is_append(self, frame: bytes | str) -> bool:
        """Whether a frame is an `append` (cheap: reads only `op`; False if undecodable)."""
        try:
            env = self._json_env.decode(frame) if isinstance(frame, str) else self._mp_env.decode(frame)
        except Exception:  # undecodable: `decode` will say why
            return False
        return isinstance(env.op, str) and env.op == "append"

    def _too_many_events(self, count: int, ref: int | None) -> errors.TooLarge:
        limit = self.max_events_per_append
        return errors.TooLarge(
            f"events: {count} events, at most {limit} per append (max_events_per_append)", ref
        )

    def _check_append(self, msg: Append) -> None:
        if len(msg.events) > self.max_events_per_append:
            raise self._too_many_events(len(msg.events), msg.ref)
        good: list[AnyEvent] = []
        indexes: list[int] = []
        for index, event in enumerate(msg.events):
            problem = self._check_event(event)
            if problem is None:
                good.append(event)
                indexes.append(index)
            else:
                msg.rejected.append(Rejection(index, errors.INVALID_EVENT, problem))
        if msg.rejected:
            msg.events = good
            msg.indexes = indexes

    def _check_event(self, event: Event) -> str | None:
        try:
            check_event(event)
        except InvalidEvent as exc:
            text = str(exc)
            return text if text.startswith(("run:", "ts:")) else f"{event_type(event)}.{text}"
        if self.max_field_chars is not None:
            data = event.data  # type: ignore[attr-defined]
            problem = long_string_problem(data, self.max_field_chars, event_type(event))
            if problem is not None:
                return problem
        if event.__class__ is Metrics:
            return None
        tag = event_type(event)
        if tag in DAEMON_TYPES:
            return f"type: {tag} events are written by the daemon only"
        return _free_form_problem(event, self.max_depth)

    def _decode_slow(self, frame: bytes | str, binary: bool, exc: msgspec.ValidationError) -> ClientMessage:
        try:
            env = self._json_env.decode(frame) if isinstance(frame, str) else self._mp_env.decode(frame)
        except msgspec.ValidationError as exc2:
            raise errors.BadMessage(f"expected an object with an 'op' field: {exc2}") from exc2
        except (msgspec.DecodeError, RecursionError) as exc2:
            raise errors.BadFrame(f"undecodable frame: {exc2}") from exc2
        ref = env.ref if isinstance(env.ref, int) and not isinstance(env.ref, bool) else None
        if env.op is None:
            raise errors.BadMessage("op: missing required field", ref)
        if not isinstance(env.op, str):
            raise errors.BadMessage("op: expected a string", ref)
        if env.op not in CLIENT_OPS:
            raise errors.UnknownOp(f"op: unknown op '{env.op[:64]}'", ref)
        if env.op == "append":
            return self._decode_append_slow(frame, binary, ref)
        raise errors.BadMessage(explain_validation_error(exc, None, env.op), ref)

    def _decode_append_slow(self, frame: bytes | str, binary: bool, ref: int | None) -> Append:
        try:
            raw = (
                self._json_raw_append.decode(frame)
                if isinstance(frame, str)
                else self._mp_raw_append.decode(frame)
            )
        except msgspec.ValidationError as exc:
            raise errors.BadMessage(explain_validation_error(exc, None, "append"), ref) from exc
        except (msgspec.DecodeError, RecursionError) as exc:
            raise errors.BadFrame(f"undecodable frame: {exc}", ref) from exc
        if len(raw.events) > self.max_events_per_append:
            raise self._too_many_events(len(raw.events), ref)
        event_decoder = self._mp_event if binary else self._json_event
        any_decoder = self._mp_any if binary else self._json_any
        good: list[AnyEvent] = []
        indexes: list[int] = []
        rejected: list[Rejection] = []
        for index, item in enumerate(raw.events):
            try:
                event = event_decoder.decode(item)
            except msgspec.ValidationError as exc:
                rejected.append(Rejection(index, errors.INVALID_EVENT, self._explain(exc, item, any_decoder)))
                continue
            except (msgspec.DecodeError, RecursionError) as exc:
                # A string that is not UTF-8, say: this event cannot be read, the others can.
                rejected.append(Rejection(index, errors.INVALID_EVENT, f"event: undecodable: {exc}"))
                continue
            problem = self._check_event(event)
            if problem is None:
                good.append(event)
                indexes.append(index)
            else:
                rejected.append(Rejection(index, errors.INVALID_EVENT, problem))
        return Append(events=good, ref=ref, rejected=rejected, indexes=indexes)

    @staticmethod
    def _explain(exc: msgspec.ValidationError, item: Raw, any_decoder: Any) -> str:
        """The message for an event the typed decoder refused, read from the event as plain data."""
        try:
            plain = any_decoder.decode(item)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as plain_exc:
            return f"event: undecodable: {plain_exc}"
        if not isinstance(plain, dict):
            return "event: expected an object"
        tag = plain.get("type")
        if "type" not in plain:
            return "type: missing required field"
        if not isinstance(tag, str):
            return "type: expected a string"
        text = str(exc)
        if text.startswith("Invalid value") and "`$.type`" in text:
            return f"type: unknown event type '{tag[:64]}'"
        prefix = tag
        where = text.partition(" - at `")[2]
        if where.startswith(("$.run", "$.id", "$.ts")):
            prefix = ""
        return explain_validation_error(exc, plain, prefix)

    # -- encoding ---------------------------------------------------------------

    def encode(self, msg: Message, binary: bool) -> bytes:
        """Encode a reply for a connection (binary: MessagePack, else JSON bytes).

        A value JSON cannot carry (one logged before values were checked at the door: a
        map key that is not a string, a MessagePack extension) is sent in a readable form
        rather than failing the reply: nothing in the log is unreadable in any encoding.
        """
        if binary:
            return self._mp_enc.encode(msg)
        try:
            return self._encode_json(msg)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
            if isinstance(msg, Result):
                msg = Result(seq=msg.seq, rows=json_readable(msg.rows), total=msg.total, ref=msg.ref)
            elif isinstance(msg, Events):
                msg = Events(sub=msg.sub, events=[_readable_stored(e) for e in msg.events])
            return self._json_enc.encode(msg)

    def _encode_json(self, msg: Message) -> bytes:
        if isinstance(msg, Result):
            rows = finite_floats_as_strings(msgspec.to_builtins(msg.rows))
            msg = Result(seq=msg.seq, rows=rows, total=msg.total, ref=msg.ref)
        elif isinstance(msg, Events):
            msg = Events(
                sub=msg.sub,
                events=[
                    StoredEvent(
                        e.seq,
                        e.type,
                        finite_floats_as_strings(msgspec.to_builtins(e.data)),
                        e.recorded,
                        e.ts,
                        e.id,
                        e.run,
                    )
                    for e in msg.events
                ],
            )
        return self._json_enc.encode(msg)

    def encode_stored(self, e: StoredEvent, binary: bool) -> bytes:
        """One event in stored form, as it stands inside an `events` message."""
        if binary:
            return self._mp_enc.encode(e)
        try:
            data = finite_floats_as_strings(msgspec.to_builtins(e.data))
            return self._json_enc.encode(StoredEvent(e.seq, e.type, data, e.recorded, e.ts, e.id, e.run))
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
            return self._json_enc.encode(_readable_stored(e))

    def encode_error(self, exc: errors.ProtocolError, binary: bool) -> bytes:
        retry_after = exc.retry_after if isinstance(exc, errors.RateLimited) else None
        return self.encode(
            Error(code=exc.code, message=exc.message, ref=exc.ref, retry_after=retry_after), binary
        )


def json_readable(obj: Any) -> Any:
    """A copy of obj that JSON can carry: keys as strings, extensions and other values JSON
    has no form for as their `repr`, integers beyond 64 bits as strings, NaN and the
    infinities as the strings the protocol uses. Only for values logged before the door
    checked them; nothing accepted now needs it."""
    cls = obj.__class__
    if isinstance(obj, Struct):
        obj, cls = msgspec.structs.asdict(obj), dict
    if cls is dict:
        return {(k if k.__class__ is str else repr(k)): json_readable(v) for k, v in obj.items()}
    if cls is list or cls is tuple:
        return [json_readable(v) for v in obj]
    if obj is None or cls is bool or cls is str:
        return obj
    if cls is int:
        return obj if -(2**63) <= obj < 2**64 else str(obj)
    if cls is float:
        return finite_floats_as_strings(obj)
    if cls is bytes:
        return obj  # base64 in JSON
    if cls is msgspec.msgpack.Ext:
        return f"msgpack-ext({obj.code}, {obj.data.hex()})"
    return repr(obj)


def _readable_stored(e: StoredEvent) -> StoredEvent:
    return StoredEvent(e.seq, e.type, json_readable(e.data), e.recorded, e.ts, e.id, e.run)


def client_message_op(
    msg: ClientMessage,
) -> Literal["hello", "append", "query", "subscribe", "unsubscribe", "check"]:
    return msg.__struct_config__.tag  # type: ignore[return-value]


#: Highest SimHash threshold the band index answers exactly.
MAX_SIMHASH_THRESHOLD: Final = 16


def check_request(msg: Check, max_inputs: int = MAX_EVENTS_PER_APPEND) -> None:
    """Check what decoding cannot say about a `check`; raises BadMessage naming the field."""
    ref = msg.ref
    try:
        _check_name(msg.namespace, "check.namespace")
        if msg.run is not None:
            _check_name(msg.run, "check.run")
    except InvalidEvent as exc:
        raise errors.BadMessage(str(exc), ref) from exc
    threshold = msg.threshold
    if (
        msg.kind == "simhash"
        and threshold is not None
        and (threshold != int(threshold) or not 0 <= threshold <= MAX_SIMHASH_THRESHOLD)
    ):
        raise errors.BadMessage(
            f"check.threshold: expected an integer from 0 to {MAX_SIMHASH_THRESHOLD} for simhash", ref
        )
    if msg.kind == "embedding":
        if threshold is not None and not 0 < threshold <= 2:
            raise errors.BadMessage("check.threshold: expected a cosine distance above 0, at most 2", ref)
        if msg.space is None:
            raise errors.BadMessage("check.space: required for kind 'embedding'", ref)
    single = msg.text is not None or msg.value is not UNSET or msg.vector is not None
    if msg.inputs is None:
        _check_input(msg.kind, msg.text, msg.value, msg.vector, "check", ref)
        return
    if single:
        raise errors.BadMessage("check.inputs: give inputs, or one text, value or vector, not both", ref)
    if not msg.inputs:
        raise errors.BadMessage("check.inputs: expected at least one input", ref)
    if len(msg.inputs) > max_inputs:
        raise errors.TooLarge(f"check.inputs: {len(msg.inputs)} inputs, at most {max_inputs}", ref)
    for i, one in enumerate(msg.inputs):
        _check_input(msg.kind, one.text, one.value, one.vector, f"check.inputs[{i}]", ref)


def _check_input(
    kind: str, text: str | None, value: Any, vector: list[float] | None, where: str, ref: int | None
) -> None:
    has_value = value is not UNSET
    if kind == "embedding":
        if vector is None:
            raise errors.BadMessage(f"{where}.vector: required for kind 'embedding'", ref)
        if text is not None or has_value:
            raise errors.BadMessage(
                f"{where}.{'text' if text is not None else 'value'}: "
                "not used by kind 'embedding' (send vector)",
                ref,
            )
        if not vector:
            raise errors.BadMessage(f"{where}.vector: expected at least one number", ref)
        return
    if vector is not None:
        raise errors.BadMessage(f"{where}.vector: only for kind 'embedding'", ref)
    if text is None and not has_value:
        raise errors.BadMessage(f"{where}.text: required for kind '{kind}' (or value)", ref)
    if text is not None and has_value:
        raise errors.BadMessage(f"{where}.value: give text or value, not both", ref)
    if has_value:
        problem = json_value_problem(value, f"{where}.value")
        if problem is not None:
            raise errors.BadMessage(problem, ref)
