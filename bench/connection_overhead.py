"""What the protocol's connection objects add per frame on the hot paths, against the
bare encode/decode calls they wrap (the code before protocol/connection.py).

    python bench/connection_overhead.py [--rounds 5] [--number 200000]

Per frame, the min over rounds: the client's append of an encoded batch of 1,000
metrics, the client's handling of its ack, and the daemon's routing of an append frame
to the writer. A batch carries 1,000 events, so the figures divide by 1,000 per event.
This script is not a test.
"""

from __future__ import annotations

import argparse
import itertools
import timeit

import msgspec
from msgspec import Raw, Struct

from tracklog.protocol.connection import ClientConnection, ServerConnection
from tracklog.protocol.messages import Ack, Codec, ServerMessage


class _BareAppend(Struct, tag="append", tag_field="op"):
    """The append frame as the client built it by hand before."""

    ref: int
    events: Raw


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--number", type=int, default=200_000)
    args = parser.parse_args()
    codec = Codec()
    batch = msgspec.msgpack.encode(
        [
            {
                "type": "metrics",
                "id": f"id-{i}",
                "run": "r",
                "ts": 1.0,
                "data": {"values": {"loss": 0.5}, "step": i},
            }
            for i in range(1000)
        ]
    )
    server = ServerConnection(codec, "tracklog/bench")
    client = ClientConnection("bench")
    server.receive(client.hello())
    client.receive(server.welcome(0))
    encoder = msgspec.msgpack.Encoder()
    decode_reply = msgspec.msgpack.Decoder(ServerMessage).decode
    refs = itertools.count(1)
    frame = client.append_encoded(batch)[1]

    def bare_append() -> None:
        encoder.encode(_BareAppend(next(refs), Raw(batch)))

    def conn_append() -> None:
        client.append_encoded(batch)

    acked = ClientConnection("bench")
    other_server = ServerConnection(codec, "tracklog/bench")
    other_server.receive(acked.hello())
    acked.receive(other_server.welcome(0))
    for _ in range(args.number):
        acked.append_encoded(batch)
    ack_frames = [
        encoder.encode(Ack(accepted=1000, first_seq=1, last_seq=1000, ref=r))
        for r in range(1, 1 + args.number)
    ]
    bare_acks = iter(ack_frames)
    conn_acks = iter(ack_frames)

    def bare_ack() -> None:
        reply = decode_reply(next(bare_acks))
        assert isinstance(reply, Ack)

    def conn_ack() -> None:
        acked.receive(next(conn_acks))

    def bare_route() -> None:
        codec.is_append(frame)

    def conn_route() -> None:
        server.receive(frame)

    def best(fn: object) -> float:
        return (
            min(timeit.repeat(fn, number=args.number, repeat=1)[0] for _ in range(args.rounds))
            / args.number
            * 1e9
        )  # type: ignore[arg-type]

    rows = [
        ("client: append frame", bare_append, conn_append),
        ("daemon: route append frame", bare_route, conn_route),
    ]
    print(f"{'per frame':30} {'bare ns':>9} {'connection ns':>14}")
    for name, bare, conn in rows:
        print(f"{name:30} {best(bare):9,.0f} {best(conn):14,.0f}")
    # Acks once each (every ack answers one append): one round of `number` acks.
    bare_ns = timeit.timeit(bare_ack, number=args.number) / args.number * 1e9
    conn_ns = timeit.timeit(conn_ack, number=args.number) / args.number * 1e9
    print(f"{'client: handle ack':30} {bare_ns:9,.0f} {conn_ns:14,.0f}")


if __name__ == "__main__":
    main()
