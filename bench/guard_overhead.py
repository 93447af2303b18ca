"""What the security checks cost per request, in process (no daemon, no socket):

    python bench/guard_overhead.py [--events 1000] [--tokens 100]

- the connection guard on an append frame with no rate limits (the default: scopes only,
  nothing read from the frame);
- the guard with events-per-second limits on, which reads the frame's ref and counts its
  events (a MessagePack append of `--events` metrics events);
- finding a token among `--tokens` configured ones (every one is compared, in constant time).

Each figure is the best of 5 timings. This script is not a test.
"""

from __future__ import annotations

import argparse
import time
import timeit
from collections.abc import Callable

import msgspec

from tracklog.daemon.auth import TokenSet, grant
from tracklog.daemon.guard import ConnectionGuard, Limits
from tracklog.daemon.ratelimit import ConnectionLimiter, Rate, RatePolicy, TokenBuckets
from tracklog.protocol.connection import AppendFrame


def best(fn: Callable[[], object], number: int) -> float:
    """Seconds per call: the best of 5 runs of `number` calls."""
    return min(timeit.repeat(fn, number=number, repeat=5)) / number


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1000, help="events in the append frame")
    parser.add_argument("--tokens", type=int, default=100, help="tokens configured")
    args = parser.parse_args()

    events = [
        {"id": f"e{i}", "type": "metrics", "run": "r", "data": {"values": {"loss": 0.5}, "step": i}}
        for i in range(args.events)
    ]
    frame = AppendFrame(msgspec.msgpack.encode({"op": "append", "ref": 1, "events": events}))
    plain = ConnectionGuard(grant("t"), Limits())
    per_frame = best(lambda: plain.refusal(frame), 200_000)
    print(f"guard, no rate limits:        {per_frame * 1e9:8.0f} ns per append")

    policy = RatePolicy(conn_events=Rate(1e12, 1e12), token_events=Rate(1e12, 1e12))
    limiter = ConnectionLimiter(policy, TokenBuckets(policy, time.monotonic), "token:x", time.monotonic)
    limited = ConnectionGuard(grant("t"), Limits(), limiter)
    per_append = best(lambda: limited.refusal(frame), 2_000)
    print(
        f"guard, events/s limits on:    {per_append * 1e6:8.1f} us per append of {args.events} events"
        f" ({len(frame.frame)} bytes; {per_append / args.events * 1e9:.0f} ns per event)"
    )

    tokens = TokenSet([grant(f"token-{i:032d}") for i in range(args.tokens)])
    wanted = f"token-{args.tokens // 2:032d}"
    print(
        f"token lookup, {args.tokens} tokens:     {best(lambda: tokens.find(wanted), 20_000) * 1e6:8.1f} us"
    )


if __name__ == "__main__":
    main()
