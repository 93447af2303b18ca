"""Subscriptions: exactly once, in order, across catch-up and live; slow subscribers; lost runs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from tests.conftest import Client, DaemonProcess, on_every_backend, open_client


def metric(i: int, run: str = "r1") -> dict[str, Any]:
    return {
        "id": f"{run}-{i}",
        "type": "metrics",
        "run": run,
        "data": {"values": {"loss": 1 / (i + 1)}, "step": i},
    }


async def collect(
    client: Client, sub: int, count: int, timeout: float = 10
) -> tuple[list[dict[str, Any]], list[int]]:
    """Events of `sub` until `count` have arrived; also the seqs at which `live` came."""
    events: list[dict[str, Any]] = []
    lives: list[int] = []
    deadline = time.monotonic() + timeout
    stash: list[dict[str, Any]] = client.__dict__.setdefault("stash", [])
    while len(events) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"sub {sub}: got {events} lives {lives}, stash {stash}")
        mine = [m for m in stash if m.get("sub") == sub]
        if mine:
            msg = mine[0]
            stash.remove(msg)
        else:
            try:
                msg = await client.recv(timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                raise AssertionError(f"sub {sub}: got {events} lives {lives}, stash {stash}") from None
            if msg.get("sub") != sub:
                stash.append(msg)  # another subscription's: kept for its own collect
                continue
        if msg["op"] == "events":
            events.extend(msg["events"])
        elif msg["op"] == "live":
            lives.append(msg["seq"])
    return events, lives


async def subscribe(client: Client, **args: Any) -> dict[str, Any]:
    return await client.request({"op": "subscribe", **args})


@on_every_backend
async def test_a_subscriber_from_zero_gets_the_whole_log_then_live_then_new_events(
    client: Client, daemon: DaemonProcess
) -> None:
    await client.append([metric(i) for i in range(5)])
    watcher, _ = await open_client(daemon.url)
    reply = await subscribe(watcher, from_seq=0)
    assert reply["op"] == "subscribed" and reply["head"] == 5
    events, lives = await collect(watcher, reply["sub"], 5)
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    await client.append([metric(i) for i in range(5, 8)])
    more, more_lives = await collect(watcher, reply["sub"], 3)
    assert [e["seq"] for e in more] == [6, 7, 8]
    assert (lives + more_lives)[0] == 5
    assert more[0]["data"] == {"values": {"loss": 1 / 6}, "step": 5}


@on_every_backend
async def test_a_subscriber_without_from_seq_gets_only_what_is_committed_after(
    client: Client, daemon: DaemonProcess
) -> None:
    await client.append([metric(i) for i in range(3)])
    watcher, _ = await open_client(daemon.url)
    reply = await subscribe(watcher)
    live = await watcher.recv()
    assert live == {"op": "live", "sub": reply["sub"], "seq": 3}
    await client.append([metric(3)])
    events, _ = await collect(watcher, reply["sub"], 1)
    assert [e["seq"] for e in events] == [4]


@on_every_backend
async def test_every_event_arrives_exactly_once_in_order_while_writers_append_during_catch_up(
    daemon: DaemonProcess,
) -> None:
    writers = [(await open_client(daemon.url))[0] for _ in range(3)]
    await writers[0].append([metric(i, "w0") for i in range(2000)])
    watcher, _ = await open_client(daemon.url)

    async def write(n: int, c: Client) -> None:
        for k in range(20):
            await c.append([metric(2000 + k * 100 + i, f"w{n}") for i in range(100)])

    writing = asyncio.gather(*(write(n, c) for n, c in enumerate(writers)))
    reply = await subscribe(watcher, from_seq=0)
    total = 2000 + 3 * 20 * 100
    events, lives = await collect(watcher, reply["sub"], total)
    await writing
    assert [e["seq"] for e in events] == list(range(1, total + 1))
    assert len({e["id"] for e in events}) == total
    assert lives, "the switch to live delivery is marked"


@on_every_backend
async def test_filters_select_by_run_type_and_pipeline(client: Client, daemon: DaemonProcess) -> None:
    await client.append(
        [
            {"type": "run.started", "run": "a", "data": {"pipeline": "train"}},
            {"type": "run.started", "run": "b", "data": {"pipeline": "eval"}},
        ]
    )
    watcher, _ = await open_client(daemon.url)
    by_run = await subscribe(watcher, from_seq=0, filter={"runs": ["a"]})
    by_type = await subscribe(watcher, from_seq=0, filter={"types": ["item"]})
    by_pipeline = await subscribe(watcher, filter={"pipelines": ["eval"]})
    await client.append(
        [metric(0, "a"), metric(0, "b"), {"type": "item", "run": "b", "data": {"stage": "s"}}]
    )
    run_events, _ = await collect(watcher, by_run["sub"], 2)
    type_events, _ = await collect(watcher, by_type["sub"], 1)
    pipeline_events, _ = await collect(watcher, by_pipeline["sub"], 2)
    assert [(e["run"], e["type"]) for e in run_events] == [("a", "run.started"), ("a", "metrics")]
    assert [(e["run"], e["type"]) for e in type_events] == [("b", "item")]
    assert [(e["run"], e["type"]) for e in pipeline_events] == [("b", "metrics"), ("b", "item")]


@on_every_backend
async def test_unsubscribe_ends_delivery_and_an_unknown_sub_is_not_found(
    client: Client, daemon: DaemonProcess
) -> None:
    watcher, _ = await open_client(daemon.url)
    keep = await subscribe(watcher)
    drop = await subscribe(watcher)
    assert (await watcher.request({"op": "unsubscribe", "sub": drop["sub"]}))["op"] == "unsubscribed"
    assert (await watcher.request({"op": "unsubscribe", "sub": 999}))["code"] == "not_found"
    await client.append([metric(0)])
    events, _ = await collect(watcher, keep["sub"], 1)
    assert len(events) == 1
    # The dropped subscription sent nothing after `unsubscribed`: a query answered now
    # comes after any events already sent, and none of them is for `drop`.
    await watcher.send({"op": "query", "ref": 77, "q": "events", "from_seq": 0})
    while (msg := await watcher.recv())["op"] != "result":
        assert msg.get("sub") != drop["sub"] or msg["op"] == "live"


@on_every_backend
async def test_a_stalled_subscriber_never_slows_ingest_and_later_gets_everything_once(
    daemon: DaemonProcess,
) -> None:
    writer, _ = await open_client(daemon.url)
    # A subscriber that stops reading: its socket buffers fill, the daemon's send waits,
    # its memory buffer overflows and it falls back to the log.
    async with connect(daemon.url, max_queue=1, max_size=None) as stalled:
        stalled_client = Client(stalled)
        await stalled_client.send({"op": "hello", "protocol": 1})
        await stalled_client.recv()
        reply = await stalled_client.request({"op": "subscribe", "from_seq": 0})
        total = 60_000
        for k in range(total // 1000):
            ack = await writer.append(
                [
                    {"type": "metrics", "run": "r", "data": {"values": {"text": float(i)}, "step": i}}
                    for i in range(k * 1000, (k + 1) * 1000)
                ]
            )
            assert ack["accepted"] == 1000
        # Every append was acked while the subscriber read nothing. Now it reads.
        events, _ = await collect(stalled_client, reply["sub"], total, timeout=120)
        assert [e["seq"] for e in events] == list(range(1, total + 1))


@on_every_backend
async def test_several_subscriptions_on_one_connection_each_get_their_own_stream(
    client: Client, daemon: DaemonProcess
) -> None:
    watcher, _ = await open_client(daemon.url)
    subs = [await subscribe(watcher, from_seq=0) for _ in range(3)]
    await client.append([metric(i) for i in range(4)])
    for reply in subs:
        events, _ = await collect(watcher, reply["sub"], 4)
        assert [e["seq"] for e in events] == [1, 2, 3, 4]


async def test_a_run_whose_writers_all_leave_is_marked_lost_and_resumes_when_one_returns(
    tmp_path: Path,
) -> None:
    proc = DaemonProcess(tmp_path / "t.db", "--lost-after", "0.2").start()
    try:
        writer, _ = await open_client(proc.url)
        await writer.append([{"type": "run.started", "run": "r", "data": {"name": "n"}}, metric(0, "r")])
        await writer.ws.close()
        reader, _ = await open_client(proc.url)
        deadline = time.monotonic() + 60
        while (await reader.query("run", run="r"))["rows"][0]["status"] != "lost":
            assert time.monotonic() < deadline, "run never marked lost"
            await asyncio.sleep(0.05)
        back, _ = await open_client(proc.url)
        await back.append([metric(1, "r")])
        run = (await reader.query("run", run="r"))["rows"][0]
        assert run["status"] == "running"
        # A run finished by its writer is never marked lost.
        await back.append([{"type": "run.finished", "run": "r", "data": {"status": "completed"}}])
        await back.ws.close()
        types = [e["type"] for e in (await reader.query("events", from_seq=0))["rows"]]
        assert types == ["run.started", "metrics", "run.finished", "run.updated", "metrics", "run.finished"]
    finally:
        proc.stop()


async def test_a_run_left_running_by_a_stopped_daemon_is_marked_lost_if_no_writer_returns(
    tmp_path: Path,
) -> None:
    proc = DaemonProcess(tmp_path / "t.db", "--lost-after", "0.2").start()
    try:
        writer, _ = await open_client(proc.url)
        await writer.append([{"type": "run.started", "run": "orphan", "data": {}}, metric(0, "orphan")])
        proc.stop()  # the connection closes while the daemon stops: no timer then
        proc.start()
        reader, _ = await open_client(proc.url)
        deadline = time.monotonic() + 60
        while (await reader.query("run", run="orphan"))["rows"][0]["status"] != "lost":
            assert time.monotonic() < deadline, "run never marked lost after the restart"
            await asyncio.sleep(0.05)
    finally:
        proc.stop()
