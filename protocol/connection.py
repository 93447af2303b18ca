"""Both ends of one connection as state machines: bytes in, events and bytes out, no I/O.

The handshake, `ref` allocation and matching, the order of acks, the position of each
subscription (on both ends: what the client was given, what the daemon has delivered)
and the choice of encoding live here, once. A socket handler (the daemon's
WebSocket handler, each of the client's speakers) only moves frames: it gives every
frame it receives to `receive` and sends the bytes the methods return. Nothing here
imports asyncio or websockets, so both sides are tested by calling them
(tests/protocol/test_connection.py), in the manner of websockets' own `protocol.py`.

    client = ClientConnection("my-pipeline/0.3")         server = ServerConnection(codec, "tracklog/x")
    send(client.hello())                          ->      server.receive(frame) -> Greeted(hello)
                                                  <-      send(server.welcome(head))
    client.receive(frame) -> [Opened(welcome)]
    ref, data = client.request(Query(q="runs"))   ->      server.receive(frame) -> Query(...)
                                                  <-      send(server.answer(result, query.ref))
    client.receive(frame) -> [Answered(ref, Result(...))]
"""

from __future__ import annotations

import bisect
import enum
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from msgspec import Raw, Struct

from . import errors
from .limits import PROTOCOL_VERSION
from .messages import (
    Ack,
    Append,
    Check,
    Checked,
    Codec,
    Error,
    Events,
    Hello,
    Live,
    Message,
    Query,
    Result,
    ServerMessage,
    StoredEvent,
    Subscribe,
    Subscribed,
    SubscribeFilter,
    Unsubscribe,
    Unsubscribed,
    Welcome,
)

#: The close code of a connection refused at the handshake (policy violation).
CLOSE_POLICY: Final = 1008


class State(enum.Enum):
    """Where a connection stands: before the handshake is done, open, or closed."""

    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"


class Encoding(enum.Enum):
    """The connection's encoding, chosen by the client: the frame type of its `hello`."""

    MSGPACK = "msgpack"  # binary frames
    JSON = "json"  # text frames

    @property
    def binary(self) -> bool:
        return self is Encoding.MSGPACK


class ConnectionViolation(errors.TracklogError):
    """The peer broke the protocol in a way no reply can mend (an ack out of order, a reply
    before the welcome): the connection cannot be trusted and is to be dropped."""


class EncodedAppend(Struct, tag="append", tag_field="op"):
    """An `append` whose `events` are already encoded, in the connection's encoding, as an
    array: the thin client's batches (which are also its spool records) go out as they are."""

    ref: int
    events: Raw


class HelloFrame(Struct, tag="hello", tag_field="op", omit_defaults=True):
    """The hello as a client sends it: unlike `Hello`, whose `protocol` has a default that
    `omit_defaults` would leave out, it always names the protocol version it speaks."""

    protocol: int
    client: str
    token: str | None = None


# -- what a client connection reports -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Opened:
    """The daemon welcomed the hello: requests may be sent."""

    welcome: Welcome


@dataclass(frozen=True, slots=True)
class Refused:
    """The daemon refused the hello (`hello_required`, `unauthorized`); it closes next."""

    error: Error


@dataclass(frozen=True, slots=True)
class Answered:
    """The reply to request `ref`: an Ack, Result, Checked, Subscribed, Unsubscribed or Error."""

    ref: int
    reply: ServerMessage


@dataclass(frozen=True, slots=True)
class Delivered:
    """New events of subscription `sub`, in seq order, none already delivered."""

    sub: int
    events: list[StoredEvent]


@dataclass(frozen=True, slots=True)
class WentLive:
    """Subscription `sub` caught up with the log at `seq`: what follows is live."""

    sub: int
    seq: int


@dataclass(frozen=True, slots=True)
class Notice:
    """An error that answers no request this connection is waiting on (no ref, or an unknown one)."""

    error: Error


ClientEvent = Opened | Refused | Answered | Delivered | WentLive | Notice


@dataclass(slots=True)
class Position:
    """How far a subscription has been delivered: the seq to resume after, and what was odd.

    `last_seq` is None for a subscription "from now on" until the daemon says its head.
    `duplicates` counts events dropped as already delivered; `gaps` counts jumps in seq on
    a subscription without a filter, where every seq must come (a filtered one skips seqs).
    """

    last_seq: int | None
    gapless: bool
    duplicates: int = 0
    gaps: int = 0

    def admit(self, events: list[StoredEvent]) -> list[StoredEvent]:
        """The events not delivered before, in order; moves the position past them."""
        last = self.last_seq
        if (
            last is not None
            and events
            and events[0].seq == last + 1
            and all(b.seq == a.seq + 1 for a, b in itertools.pairwise(events))
        ):
            self.last_seq = events[-1].seq
            return events  # the common case: exactly the next seqs
        fresh: list[StoredEvent] = []
        for event in events:
            if last is not None and event.seq <= last:
                self.duplicates += 1
                continue
            if self.gapless and last is not None and event.seq != last + 1:
                self.gaps += 1
            fresh.append(event)
            last = event.seq
        self.last_seq = last
        return fresh


class ClientConnection:
    """The client's end: says hello, allocates refs, matches replies, orders acks, tracks
    subscriptions. One per WebSocket connection; a reconnect starts a new one.

    `enc_hook` encodes values msgspec does not know (numpy scalars, paths) in requests.
    """

    def __init__(
        self,
        client: str,
        token: str | None = None,
        encoding: Encoding = Encoding.MSGPACK,
        enc_hook: Callable[[Any], Any] | None = None,
    ) -> None:
        self.client = client
        self.token = token
        self.encoding = encoding
        self.state = State.CONNECTING
        #: The daemon's welcome, once open.
        self.welcome: Welcome | None = None
        self._hello_sent = False
        self._refs = itertools.count(1)
        #: Refs of requests other than appends, waiting for their reply.
        self._pending: set[int] = set()
        #: Refs of appends, oldest first: the daemon acks a connection's appends in order.
        self._appends: deque[int] = deque()
        #: Subscribe requests waiting for `subscribed`: ref -> the position they start from.
        self._subscribing: dict[int, Position] = {}
        self.positions: dict[int, Position] = {}
        if encoding is Encoding.MSGPACK:
            self._encode: Callable[[Any], bytes] = msgspec.msgpack.Encoder(enc_hook=enc_hook).encode
            self._decode: Callable[[bytes], ServerMessage] = msgspec.msgpack.Decoder(ServerMessage).decode
        else:
            self._encode = msgspec.json.Encoder(enc_hook=enc_hook).encode
            self._decode = msgspec.json.Decoder(ServerMessage).decode

    @property
    def binary(self) -> bool:
        """Whether frames go as binary (MessagePack) rather than text (JSON)."""
        return self.encoding.binary

    @property
    def pending(self) -> int:
        """Requests and appends sent and not yet answered."""
        return len(self._pending) + len(self._appends)

    def hello(self) -> bytes:
        """The first frame to send."""
        if self.state is not State.CONNECTING or self._hello_sent:
            raise ConnectionViolation("hello: already sent on this connection")
        self._hello_sent = True
        return self._encode(HelloFrame(PROTOCOL_VERSION, self.client, self.token))

    def request(self, message: Query | Check | Subscribe | Unsubscribe | Append) -> tuple[int, bytes]:
        """Give `message` a fresh ref; returns the ref and the frame to send."""
        self._require_open()
        ref = next(self._refs)
        message = msgspec.structs.replace(message, ref=ref)
        if isinstance(message, Append):
            self._appends.append(ref)
        else:
            self._pending.add(ref)
            if isinstance(message, Subscribe):
                gapless = message.filter is None or not any(
                    (message.filter.runs, message.filter.types, message.filter.pipelines)
                )
                self._subscribing[ref] = Position(message.from_seq, gapless)
        return ref, self._encode(message)

    def append_encoded(self, events: bytes) -> tuple[int, bytes]:
        """An append of events already encoded as an array (the hot path); its ref and frame."""
        self._require_open()
        ref = next(self._refs)
        self._appends.append(ref)
        return ref, self._encode(EncodedAppend(ref, Raw(events)))

    def subscribe(
        self,
        from_seq: int | None,
        runs: list[str] | None = None,
        types: list[str] | None = None,
        pipelines: list[str] | None = None,
    ) -> tuple[int, bytes]:
        """Subscribe after `from_seq` (None: from now on); filters left empty are not sent."""
        flt = SubscribeFilter(runs or None, types or None, pipelines or None)
        has_filter = flt.runs is not None or flt.types is not None or flt.pipelines is not None
        return self.request(Subscribe(from_seq=from_seq, filter=flt if has_filter else None))

    def receive(self, frame: bytes | str) -> list[ClientEvent]:
        """Take one frame from the daemon; what it means for this connection.

        Raises ConnectionViolation when the daemon broke the protocol, and
        msgspec.DecodeError for a frame that is not a message at all. A message of a kind
        this client does not know is ignored, as the protocol says.
        """
        if isinstance(frame, str):
            frame = frame.encode()
        try:
            msg = self._decode(frame)
        except msgspec.ValidationError:
            return []
        if self.state is State.CONNECTING:
            return [self._handshake(msg)]
        if self.state is State.CLOSED:
            return []
        match msg:
            case Ack():
                return [self._acked(msg)]
            case Events():
                position = self.positions.get(msg.sub)
                if position is None:
                    return []  # a subscription already ended here
                events = position.admit(msg.events)
                return [Delivered(msg.sub, events)] if events else []
            case Live():
                return [WentLive(msg.sub, msg.seq)] if msg.sub in self.positions else []
            case Error():
                return [self._error(msg)]
            case Welcome():
                raise ConnectionViolation("welcome: the connection is already open")
            case Result() | Checked() | Subscribed() | Unsubscribed():
                return self._reply(msg)
        return []

    def close(self) -> None:
        """The connection ended: nothing more is expected on it."""
        self.state = State.CLOSED

    def _require_open(self) -> None:
        if self.state is not State.OPEN:
            raise ConnectionViolation(f"cannot send a request: the connection is {self.state.value}")

    def _handshake(self, msg: ServerMessage) -> ClientEvent:
        if isinstance(msg, Welcome):
            self.state = State.OPEN
            self.welcome = msg
            return Opened(msg)
        if isinstance(msg, Error):
            self.state = State.CLOSED
            return Refused(msg)
        raise ConnectionViolation(f"expected welcome, got {msg.__struct_config__.tag}")

    def _acked(self, ack: Ack) -> ClientEvent:
        appends = self._appends
        if not appends or ack.ref != appends[0]:
            raise ConnectionViolation(f"ack for ref {ack.ref} does not match the oldest append in flight")
        return Answered(appends.popleft(), ack)

    def _error(self, error: Error) -> ClientEvent:
        ref = error.ref
        if ref is None:
            return Notice(error)
        if self._appends and self._appends[0] == ref:
            return Answered(self._appends.popleft(), error)
        if ref in self._pending:
            self._pending.discard(ref)
            self._subscribing.pop(ref, None)
            return Answered(ref, error)
        return Notice(error)

    def _reply(self, msg: Result | Checked | Subscribed | Unsubscribed) -> list[ClientEvent]:
        ref = msg.ref
        if ref is None or ref not in self._pending:
            return []  # an answer to nothing this connection asked: ignored
        self._pending.discard(ref)
        if isinstance(msg, Subscribed):
            position = self._subscribing.pop(ref)
            if position.last_seq is None:
                position.last_seq = msg.head  # "from now on" starts after the head
            self.positions[msg.sub] = position
        elif isinstance(msg, Unsubscribed):
            self.positions.pop(msg.sub, None)
        return [Answered(ref, msg)]


# -- the daemon's end -------------------------------------------------------------------

_mp_encode = msgspec.msgpack.encode
#: The MessagePack of {"op": "events", "sub": ..., "events": [...]} up to the sub's value.
_MP_EVENTS_HEAD: Final = b"\x83" + _mp_encode("op") + _mp_encode("events") + _mp_encode("sub")
_MP_EVENTS_KEY: Final = _mp_encode("events")


def _seq_of(event: StoredEvent) -> int:
    return event.seq


class EventFrames:
    """`events` frames assembled from each event's encoding, shared by a daemon's connections.

    An event that goes to many subscribers is encoded once per encoding; each subscriber's
    frame is then a header and a join, the same bytes as encoding the whole `Events`
    message (a test holds it). The newest `keep` events are remembered per encoding; older
    ones (read back by a catch-up) are encoded again when asked for.
    """

    def __init__(self, codec: Codec, keep: int = 40_000) -> None:
        self.codec = codec
        self.keep = keep
        #: Each recent event's encoding (by seq), per encoding (True: MessagePack).
        self._encoded: dict[bool, dict[int, bytes]] = {True: {}, False: {}}
        self._newest = 0

    def frame(self, sub: int, events: list[StoredEvent], binary: bool) -> bytes:
        """The `events` message of subscription `sub` carrying `events`, in that encoding."""
        cache = self._encoded[binary]
        encode_one = self.codec.encode_stored
        parts = []
        for e in events:
            part = cache.get(e.seq)
            if part is None:
                part = cache[e.seq] = encode_one(e, binary)
            parts.append(part)
        if events and events[-1].seq > self._newest:
            self._newest = events[-1].seq
        if len(cache) > self.keep:
            self._trim(cache)
        if binary:
            n = len(parts)
            header = (
                bytes([0x90 | n])
                if n < 16
                else b"\xdc" + n.to_bytes(2, "big")
                if n < 65536
                else b"\xdd" + n.to_bytes(4, "big")
            )
            return b"".join((_MP_EVENTS_HEAD, _mp_encode(sub), _MP_EVENTS_KEY, header, *parts))
        return b"".join(
            (b'{"op":"events","sub":', str(sub).encode(), b',"events":[', b",".join(parts), b"]}")
        )

    def _trim(self, cache: dict[int, bytes]) -> None:
        oldest_kept = self._newest - self.keep // 2
        for seq in [seq for seq in cache if seq <= oldest_kept]:
            del cache[seq]
        if len(cache) > self.keep:  # mostly old seqs read by catch-up: start over
            cache.clear()


class ServerSubscription:
    """One subscription on the daemon's end: how far it has been delivered, and its frames.

    Whoever feeds it (the daemon's hub, from the log and from live commits) may offer an
    event more than once; the subscription makes each matching event go out once, in seq
    order, never at or below `position`. Its frames are in the connection's encoding.
    """

    __slots__ = ("_binary", "_frames", "active", "delivered", "position", "sub")

    def __init__(self, sub: int, position: int, binary: bool, frames: EventFrames) -> None:
        self.sub = sub
        #: The highest seq delivered, or known to hold nothing for this subscription.
        self.position = position
        #: Events delivered so far.
        self.delivered = 0
        #: False once unsubscribed or the connection closed: no frame is made after that.
        self.active = True
        self._binary = binary
        self._frames = frames

    def events(self, events: list[StoredEvent]) -> bytes | None:
        """The `events` frame of those of `events` (in seq order) after the position, which
        moves past them; None when none is new or the subscription has ended."""
        if not self.active or not events:
            return None
        if events[0].seq <= self.position:
            events = events[bisect.bisect_right(events, self.position, key=_seq_of) :]
            if not events:
                return None
        self.position = events[-1].seq
        self.delivered += len(events)
        return self._frames.frame(self.sub, events, self._binary)

    def skip_to(self, seq: int) -> None:
        """The log was read up to `seq` with nothing more for this subscription: resume after
        it (never moves back)."""
        if seq > self.position:
            self.position = seq

    def live(self) -> bytes:
        """The `live` frame: caught up with the log at the position; what follows is live."""
        return self._frames.codec.encode(Live(sub=self.sub, seq=self.position), self._binary)


@dataclass(frozen=True, slots=True)
class Greeted:
    """A good hello: answer it with `ServerConnection.welcome`."""

    hello: Hello


@dataclass(frozen=True, slots=True)
class Send:
    """Send `data` now (an error the connection answers itself); the connection stays open."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """Send `data`, then close with `code` and `reason`: the handshake was refused."""

    data: bytes
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class AppendFrame:
    """An append, left encoded: the writer decodes it with its group. Ack it with `ack`."""

    frame: bytes | str


#: What `ServerConnection.receive` gives the daemon to act on.
ServerEvent = Greeted | Send | Close | AppendFrame | Query | Check | Subscribe | Unsubscribe


class ServerConnection:
    """The daemon's end: requires a hello first (checking its token with `authorize`), turns
    frames into typed requests or error replies, and encodes replies with their refs.

    `authorize(token)` gets the hello's token (None when it has none) and says whether it
    may connect; None means no tokens are configured. Acks must be made (`ack`) in the
    order the appends came; `unacked` counts the appends still waiting for theirs. Each
    subscription keeps its delivery state (`ServerSubscription`); `frames` is shared by the
    daemon's connections so that an event is encoded once for all of its subscribers.
    """

    def __init__(
        self,
        codec: Codec,
        server: str,
        authorize: Callable[[str | None], bool] | None = None,
        frames: EventFrames | None = None,
    ) -> None:
        self.codec = codec
        self.server = server
        self.authorize = authorize
        self.state = State.CONNECTING
        self.encoding = Encoding.MSGPACK
        self.hello: Hello | None = None
        self.unacked = 0
        self.frames = frames if frames is not None else EventFrames(codec)
        #: The subscriptions open on this connection, by id.
        self.subscriptions: dict[int, ServerSubscription] = {}

    @property
    def binary(self) -> bool:
        return self.encoding.binary

    def receive(self, frame: bytes | str) -> ServerEvent:
        """Take one frame from the client: a request to act on, or what to send back."""
        if self.state is State.CONNECTING:
            return self._handshake(frame)
        if self.state is State.CLOSED:
            raise ConnectionViolation("receive: the connection is closed")
        codec = self.codec
        if codec.is_append(frame):
            self.unacked += 1
            return AppendFrame(frame)
        try:
            msg = codec.decode(frame)
        except errors.ProtocolError as exc:
            return Send(self.error(exc))
        match msg:
            case Append():
                # Not reached: `is_append` finds every append. Kept on the same path should
                # the two ever disagree.
                self.unacked += 1
                return AppendFrame(frame)
            case Hello():
                return Send(self.error(errors.BadMessage("hello: already said"), msg.ref))
            case Subscribe():
                if msg.from_seq is not None and not 0 <= msg.from_seq < 2**63:  # the log's seqs are 64-bit
                    return Send(
                        self.error(errors.BadMessage("subscribe.from_seq: expected 0 to 2^63-1"), msg.ref)
                    )
                return msg
            case Unsubscribe():
                if msg.sub not in self.subscriptions:
                    message = f"sub: no subscription {msg.sub} on this connection"
                    return Send(self.error(errors.NotFound(message), msg.ref))
                self.subscriptions.pop(msg.sub).active = False
                return msg
            case Query() | Check():
                return msg
        raise AssertionError(f"unhandled message {msg!r}")  # pragma: no cover

    def welcome(
        self, head: int, max_frame_bytes: int | None = None, max_events_per_append: int | None = None
    ) -> bytes:
        """The answer to the hello (`head`: the newest committed seq); the connection is open.
        The limits are told when the daemon's differ from the protocol's defaults."""
        if self.state is not State.CONNECTING or self.hello is None:
            raise ConnectionViolation("welcome: no hello to answer")
        self.state = State.OPEN
        return self.encode(
            Welcome(
                protocol=PROTOCOL_VERSION,
                server=self.server,
                head=head,
                ref=self.hello.ref,
                max_frame_bytes=max_frame_bytes,
                max_events_per_append=max_events_per_append,
            )
        )

    def ack(self, result: Ack | errors.ProtocolError) -> bytes:
        """The answer to the oldest unacked append: its ack, or the error that refused it
        (its ref is the writer's, who decoded the append)."""
        self.unacked = max(0, self.unacked - 1)
        if isinstance(result, Ack):
            return self.encode(result)
        return self.codec.encode_error(result, self.binary)

    def answer(self, reply: Result | Checked) -> bytes:
        """The answer to a query or a check (the reply carries the request's ref)."""
        return self.encode(reply)

    def error(self, exc: errors.ProtocolError, ref: int | None = None) -> bytes:
        """An error reply; `ref`, when given, is the request's (the error's own otherwise)."""
        if ref is not None:
            exc.ref = ref
        return self.codec.encode_error(exc, self.binary)

    def subscribed(self, request: Subscribe, sub: int, head: int) -> tuple[ServerSubscription, bytes]:
        """Open subscription `sub` for `request` (`head`: the newest seq published): its
        state, starting after the request's `from_seq` (after `head` when it has none), and
        the `subscribed` frame, which goes out before any of its events."""
        position = head if request.from_seq is None else request.from_seq
        subscription = ServerSubscription(sub, position, self.binary, self.frames)
        self.subscriptions[sub] = subscription
        return subscription, self.encode(Subscribed(sub=sub, head=head, ref=request.ref))

    def unsubscribed(self, request: Unsubscribe) -> bytes:
        return self.encode(Unsubscribed(sub=request.sub, ref=request.ref))

    def encode(self, msg: Message) -> bytes:
        return self.codec.encode(msg, self.binary)

    def close(self) -> None:
        """The connection ended: its subscriptions make no more frames."""
        self.state = State.CLOSED
        for subscription in self.subscriptions.values():
            subscription.active = False
        self.subscriptions.clear()

    def _handshake(self, frame: bytes | str) -> ServerEvent:
        self.encoding = Encoding.JSON if isinstance(frame, str) else Encoding.MSGPACK
        try:
            msg: Any = self.codec.decode(frame)
        except errors.ProtocolError:
            msg = None
        if not isinstance(msg, Hello):
            self.state = State.CLOSED
            # The reply echoes the ref of whatever came first, as every reply does.
            refused = errors.HelloRequired("the first message must be hello", getattr(msg, "ref", None))
            return Close(self.codec.encode_error(refused, self.binary), CLOSE_POLICY, "hello required")
        if self.authorize is not None and not self.authorize(msg.token):
            self.state = State.CLOSED
            unauthorized = errors.Unauthorized("bad or missing token", msg.ref)
            return Close(self.codec.encode_error(unauthorized, self.binary), CLOSE_POLICY, "unauthorized")
        self.hello = msg
        return Greeted(msg)
