"""A daemon that refuses appends for now (`disk_full`, `overloaded`) is not hammered: each
connection in a row that ends without an ack waits longer before the next, and an ack ends
the streak."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator

import msgspec
import pytest
from websockets.sync.server import Server, ServerConnection, serve

import tracklog
from tracklog.sender import Sender

from .conftest import WAIT

MakeTracker = Callable[..., tracklog.Tracker]
#: Appends the fake daemon refuses before it takes one.
REFUSALS = 5


class RefusingDaemon:
    """Welcomes every hello, refuses the first REFUSALS appends with `disk_full`, acks the rest."""

    def __init__(self) -> None:
        self.refused = 0
        self.acked = 0
        self.lock = threading.Lock()

    def handle(self, ws: ServerConnection) -> None:
        for frame in ws:
            msg = json.loads(frame) if isinstance(frame, str) else msgspec.msgpack.decode(frame)
            binary = not isinstance(frame, str)
            if msg["op"] == "hello":
                reply = {"op": "welcome", "protocol": 1, "server": "fake/0", "head": 0, "ref": msg.get("ref")}
            elif msg["op"] == "append":
                with self.lock:
                    refuse = self.refused < REFUSALS
                    if refuse:
                        self.refused += 1
                    else:
                        self.acked += len(msg["events"])
                if refuse:
                    reply = {"op": "error", "code": "disk_full", "message": "full", "ref": msg.get("ref")}
                else:
                    n = len(msg["events"])
                    reply = {"op": "ack", "accepted": n, "first_seq": 1, "last_seq": n, "ref": msg.get("ref")}
            else:
                continue
            ws.send(msgspec.msgpack.encode(reply) if binary else json.dumps(reply))


@pytest.fixture
def refusing() -> Iterator[tuple[RefusingDaemon, str]]:
    fake = RefusingDaemon()
    server: Server = serve(fake.handle, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, f"ws://127.0.0.1:{server.socket.getsockname()[1]}/ws"
    finally:
        server.shutdown()
        thread.join(WAIT)


def test_each_refused_connection_in_a_row_backs_off_longer_and_an_ack_ends_the_streak(
    refusing: tuple[RefusingDaemon, str], make_tracker: MakeTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, url = refusing
    attempts: list[int] = []
    backoff = Sender._backoff

    def recorded(self: Sender, attempt: int) -> float:
        attempts.append(attempt)
        return backoff(self, attempt) * 0.01  # the test waits for acks, not for backoff

    monkeypatch.setattr(Sender, "_backoff", recorded)
    tl = make_tracker(url)
    run = tl.start_run("refused")
    run.log_metric("loss", 0.5, step=0)
    assert tl.flush(WAIT)
    assert fake.refused == REFUSALS and fake.acked >= 2  # run.started and the metric
    assert attempts[:REFUSALS] == list(range(1, REFUSALS + 1))
    assert not tl.errors  # refused for now is not an error of the events
