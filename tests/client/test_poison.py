"""One bad event never holds back the good ones, and no append is resent forever.

The daemon may refuse a whole append for one event in it (today a dict with integer
keys makes it answer `internal`); the sender splits the append until the bad event is
alone, reports it in `Tracker.errors`, and stores every other event.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import tracklog
from tests.conftest import DaemonProcess
from tracklog import wire
from tracklog.ids import uuid7
from tracklog.protocol.events import Item, ItemData, RunStarted, RunStartedData
from tracklog.spool import SpoolFile, endpoint_dir

from .conftest import WAIT, PortDaemon, query, stored_events

MakeTracker = Callable[..., tracklog.Tracker]
#: Codes the daemon may use for an event it cannot store: `internal` for the whole append
#: (before the daemon checked keys), `invalid_event` for the one event (after).
REFUSAL_CODES = {"internal", "invalid_event"}


def poison_item(run_id: str) -> Item:
    """An item whose data has an integer key, built past the call's check (as an older
    client, or a spool written by one, would send it)."""
    ts = time.time()
    return Item(id=uuid7(ts), run=run_id, ts=ts, data=ItemData(item="bad", data={1: "a"}))


def test_a_bad_event_in_a_batch_is_reported_once_and_the_good_ones_are_stored(
    daemon: DaemonProcess, make_tracker: MakeTracker
) -> None:
    tl = make_tracker(daemon.url, linger=0.05)  # the events gather into one batch
    run = tl.start_run("poisoned")
    for step in range(10):
        run.log_metric("loss", 1.0 / (step + 1), step=step)
    run._put(wire.raw_event(poison_item(run.id)))
    for step in range(10, 20):
        run.log_metric("loss", 1.0 / (step + 1), step=step)
    run.log_item("good", data={"text": "hola"})
    assert tl.flush(WAIT)
    assert [e.event["data"]["item"] for e in tl.errors] == ["bad"]
    assert tl.errors[0].code in REFUSAL_CODES
    assert len(stored_events(daemon.url, run=run.id, types=["metrics"])) == 20
    assert [e["data"]["item"] for e in stored_events(daemon.url, run=run.id, types=["item"])] == ["good"]
    assert tl.stats()["connects"] < 10, tl.stats()  # bounded: no resend loop


def test_a_spool_holding_a_poison_batch_is_adopted_without_looping(
    port_daemon: PortDaemon, make_tracker: MakeTracker, spool_dir: Path
) -> None:
    port_daemon.start()
    ts = time.time()
    started = RunStarted(id=uuid7(ts), run="spooled-run", ts=ts, data=RunStartedData(name="spooled"))
    good = Item(id=uuid7(ts), run="spooled-run", ts=ts, data=ItemData(item="good"))
    batch = wire.encode([started, poison_item("spooled-run"), good])
    left_behind = SpoolFile.create(endpoint_dir(spool_dir, port_daemon.url))
    left_behind.append(batch, 3)
    left_behind.close(delete=False)  # as a process that died before sending it

    tl = make_tracker(port_daemon.url)
    assert tl.flush(WAIT)
    assert tl.stats()["adopted"] == 3
    assert [(e.code in REFUSAL_CODES, e.event["data"]["item"]) for e in tl.errors] == [(True, "bad")]
    assert query(port_daemon.url, "run", run="spooled-run")["rows"][0]["name"] == "spooled"
    assert [e["data"]["item"] for e in stored_events(port_daemon.url, "spooled-run", ["item"])] == ["good"]
    assert tl.stats()["connects"] < 10, tl.stats()
    tl.close(WAIT)
    assert not list(spool_dir.rglob("*.spool"))


def test_integer_keys_are_reported_at_the_call_and_never_raised_or_sent(
    daemon: DaemonProcess, make_tracker: MakeTracker
) -> None:
    tl = make_tracker(daemon.url)
    run = tl.start_run("layers", config={"layers": {0: 64}})
    run.log_item("bad", data={1: "a"})
    run.log_item("nested", data={"rows": [{"ok": 1}, {2: "b"}]})
    run.log_artifact("plot", "p.png", metadata={(1, 2): "x"})
    run.update(config={"lr": {0.1: "warm"}})
    run.log_item("good", data={"text": "hola"})
    assert tl.flush(WAIT)
    assert [(e.code, e.message) for e in tl.errors] == [
        ("invalid_event", "run.started.config.layers: keys must be strings, got int 0"),
        ("invalid_event", "item.data: keys must be strings, got int 1"),
        ("invalid_event", "item.data.rows[1]: keys must be strings, got int 2"),
        ("invalid_event", "artifact.metadata: keys must be strings, got tuple (1, 2)"),
        ("invalid_event", "run.updated.config.lr: keys must be strings, got float 0.1"),
    ]
    assert tl.errors[0].event["type"] == "run.started"
    assert tl.stats()["rejected"] == 5
    items = stored_events(daemon.url, run=run.id, types=["item"])
    assert [e["data"]["item"] for e in items] == ["good"]
