"""Integration tests against a real `tracklog serve` on a free loopback port."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import Client, DaemonProcess, on_every_backend, open_client


def metric(i: int, run: str = "r1", **extra: Any) -> dict[str, Any]:
    return {
        "id": f"m-{run}-{i}",
        "type": "metrics",
        "run": run,
        "data": {"values": {"loss": 1 / (i + 1)}, "step": i},
        **extra,
    }


def tracklog(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracklog", *args], capture_output=True, text=True, timeout=120
    )


# -- handshake ---------------------------------------------------------------------


@on_every_backend
async def test_welcome_names_the_protocol_and_the_head(daemon: DaemonProcess) -> None:
    client, welcome = await open_client(daemon.url)
    assert welcome == {"op": "welcome", "protocol": 1, "server": welcome["server"], "head": 0}
    assert welcome["server"].startswith("tracklog/")
    await client.ws.close()


@on_every_backend
async def test_a_first_message_other_than_hello_gets_hello_required_and_a_close(
    daemon: DaemonProcess,
) -> None:
    async with connect(daemon.url) as ws:
        await ws.send(json.dumps({"op": "append", "events": []}))
        reply = json.loads(await ws.recv())
        assert reply["code"] == "hello_required"
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 30)
        assert ws.close_code == 1008


@on_every_backend
async def test_a_messagepack_hello_gets_messagepack_replies(daemon: DaemonProcess) -> None:
    client, welcome = await open_client(daemon.url, binary=True)
    assert welcome["op"] == "welcome"
    ack = await client.append(
        [metric(0), {"type": "metrics", "run": "r1", "data": {"values": {"x": float("nan")}}}]
    )
    assert ack["accepted"] == 2
    rows = (await client.query("events", from_seq=0))["rows"]
    assert rows[1]["data"]["values"]["x"] != rows[1]["data"]["values"]["x"]  # NaN survives MessagePack
    await client.ws.close()


# -- append and ack ----------------------------------------------------------------


@on_every_backend
async def test_accepted_events_get_consecutive_seqs_in_append_order(client: Client) -> None:
    first = await client.append([metric(i) for i in range(5)])
    second = await client.append([metric(i) for i in range(5, 8)])
    assert (first["accepted"], first["first_seq"], first["last_seq"]) == (5, 1, 5)
    assert (second["first_seq"], second["last_seq"]) == (6, 8)
    rows = (await client.query("events", from_seq=0))["rows"]
    assert [r["seq"] for r in rows] == list(range(1, 9))
    assert [r["id"] for r in rows] == [f"m-r1-{i}" for i in range(8)]


@on_every_backend
async def test_an_event_id_sent_again_is_not_appended_twice_and_the_ack_names_the_original_seq(
    daemon: DaemonProcess, client: Client
) -> None:
    await client.append([metric(0), metric(1)])
    other, _ = await open_client(daemon.url)
    ack = await other.append([metric(1), metric(2), metric(2)])
    assert ack["accepted"] == 1
    assert ack["duplicates"] == [{"index": 0, "seq": 2}, {"index": 2, "seq": 3}]
    await other.ws.close()
    run = (await client.query("run", run="r1"))["rows"][0]
    assert run["n_events"] == 3
    assert run["metrics"]["loss"]["count"] == 3


@on_every_backend
async def test_a_bad_event_is_rejected_alone_with_its_index_and_the_rest_is_kept(client: Client) -> None:
    ack = await client.append(
        [
            metric(0),
            {"type": "metrics", "run": "r1", "data": {"values": {"loss": "high"}}},
            metric(1),
            {"type": "metrics", "data": {"values": {"loss": 1}}},
            {"type": "item", "run": "r1", "data": {"status": "exploded"}},
            metric(2),
        ]
    )
    assert ack["accepted"] == 3
    assert (ack["first_seq"], ack["last_seq"]) == (1, 3)
    rejected = {r["index"]: r for r in ack["rejected"]}
    assert sorted(rejected) == [1, 3, 4]
    assert rejected[1]["code"] == "invalid_event"
    assert rejected[1]["message"].startswith("metrics.values.loss:")
    assert rejected[3]["message"].startswith("run:")
    assert rejected[4]["message"].startswith("item.status:")


@on_every_backend
async def test_an_append_of_only_bad_events_is_acked_with_nothing_accepted(client: Client) -> None:
    ack = await client.append([{"type": "metrics", "run": "r1", "data": {"values": {"loss": True}}}])
    assert ack["accepted"] == 0
    assert "first_seq" not in ack
    assert ack["rejected"][0]["index"] == 0


@on_every_backend
async def test_an_append_over_ten_thousand_events_is_too_large_and_nothing_of_it_is_kept(
    client: Client,
) -> None:
    reply = await client.append([{"type": "metrics", "run": "r1", "data": {"values": {"x": 1}}}] * 10_001)
    assert reply["op"] == "error" and reply["code"] == "too_large"
    assert (await client.query("events", from_seq=0))["rows"] == []
    assert (await client.append([metric(0)]))["accepted"] == 1


@on_every_backend
async def test_nan_and_infinities_travel_as_strings_in_json(client: Client) -> None:
    ack = await client.append(
        [
            {
                "type": "metrics",
                "run": "r1",
                "data": {"values": {"a": "NaN", "b": "Infinity", "c": "-Infinity", "d": 1}},
            }
        ]
    )
    assert ack["accepted"] == 1
    event = (await client.query("events", from_seq=0))["rows"][0]
    assert event["data"]["values"] == {"a": "NaN", "b": "Infinity", "c": "-Infinity", "d": 1.0}
    run = (await client.query("run", run="r1"))["rows"][0]
    assert run["metrics"]["a"]["last"] == "NaN"
    assert run["metrics"]["b"]["max"] == "Infinity"


# -- bad input: the connection stays up, nothing acked is lost -----------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "bad_frame"),
        ('{"op": "launch", "ref": 5}', "unknown_op"),
        ('{"ref": 5}', "bad_message"),
        ("[1, 2, 3]", "bad_message"),
        ('{"op": "append", "events": 7}', "bad_message"),
        ('{"op": "query"}', "bad_message"),
        ('{"op": "hello", "protocol": 1}', "bad_message"),
        ("[" * 100_000 + "]" * 100_000, "bad_message"),
        (
            '{"op": "append", "events": [{"type": "item", "run": "r", "data": {"data": '
            + "[" * 100_000
            + "]" * 100_000
            + "}}]}",
            "bad_frame",
        ),
    ],
)
async def test_a_bad_message_gets_its_error_and_the_connection_stays_up(
    client: Client, frame: str, code: str
) -> None:
    await client.append([metric(0)])
    await client.ws.send(frame)
    reply = await client.recv()
    assert reply["op"] == "error" and reply["code"] == code
    assert reply["message"]
    if '"ref": 5' in frame and code == "unknown_op":
        assert reply["ref"] == 5
    assert (await client.append([metric(1)]))["accepted"] == 1
    assert len((await client.query("events", from_seq=0))["rows"]) == 2


@on_every_backend
async def test_item_data_nested_deeper_than_the_limit_is_rejected_alone(client: Client) -> None:
    deep: Any = 1
    for _ in range(100):
        deep = {"x": deep}
    ack = await client.append([metric(0), {"type": "item", "run": "r1", "data": {"data": deep}}])
    assert ack["accepted"] == 1
    assert ack["rejected"][0]["index"] == 1
    assert ack["rejected"][0]["message"].startswith("item.data: nested deeper than")


@on_every_backend
async def test_names_too_long_or_with_control_characters_are_rejected_naming_the_field(
    client: Client,
) -> None:
    ack = await client.append(
        [
            {"type": "metrics", "run": "r1", "data": {"values": {"x" * 251: 1}}},
            {"type": "metrics", "run": "r1", "data": {"values": {"bad\nname": 1}}},
            {"type": "run.started", "run": "r1", "data": {"tags": ["ok", "t" * 300]}},
            {"type": "metrics", "run": "r" * 129, "data": {"values": {"x": 1}}},
            {"id": "i" * 129, "type": "metrics", "run": "r1", "data": {"values": {"x": 1}}},
            metric(0),
        ]
    )
    assert ack["accepted"] == 1
    messages = [r["message"] for r in sorted(ack["rejected"], key=lambda r: r["index"])]
    assert messages[0].startswith("metrics.values")
    assert messages[1].startswith("metrics.values:") and "control character" in messages[1]
    assert messages[2].startswith("run.started.tags")
    assert messages[3].startswith("run:")
    assert messages[4].startswith("id:")


@on_every_backend
async def test_an_unknown_query_is_bad_query_and_a_missing_run_is_not_found(client: Client) -> None:
    assert (await client.query("nonsense"))["code"] == "bad_query"
    reply = await client.query("run", run="nope")
    assert reply["code"] == "not_found" and "nope" in reply["message"]


@on_every_backend
async def test_a_frame_over_the_size_limit_closes_with_1009_and_acked_events_survive(
    daemon: DaemonProcess,
) -> None:
    client, _ = await open_client(daemon.url)
    await client.append([metric(0)])
    await client.ws.send("x" * (16 * 1024 * 1024 + 1))
    with pytest.raises(ConnectionClosed):
        await client.recv()
    assert client.ws.close_code == 1009
    other, _ = await open_client(daemon.url)
    assert len((await other.query("events", from_seq=0))["rows"]) == 1
    await other.ws.close()


# -- durability and replay ---------------------------------------------------------


async def test_every_acked_event_survives_kill_9_and_no_append_is_half_there(db_path: Path) -> None:
    proc = DaemonProcess(db_path).start()
    acked_appends = 0
    try:
        client, _ = await open_client(proc.url)
        # Pipeline appends without waiting, then kill the daemon while more are in flight.
        for k in range(40):
            await client.send(
                {
                    "op": "append",
                    "ref": k,
                    "events": [metric(k * 100 + i, run=f"r{k % 3}") for i in range(100)],
                }
            )
        acked: dict[int, dict[str, Any]] = {}
        while len(acked) < 20:
            reply = await client.recv()
            acked[reply["ref"]] = reply
        proc.kill()
        acked_appends = len(acked)
        try:
            while True:
                reply = await client.recv(timeout=5)
                acked[reply["ref"]] = reply
        except (ConnectionClosed, TimeoutError):
            pass
    finally:
        proc.kill()
    proc = DaemonProcess(db_path).start()
    try:
        client, welcome = await open_client(proc.url)
        rows: list[dict[str, Any]] = []
        while True:
            after = rows[-1]["seq"] if rows else 0
            page = (await client.query("events", from_seq=after, limit=10_000))["rows"]
            if not page:
                break
            rows.extend(page)
        assert welcome["head"] == len(rows)
        ids = {r["id"] for r in rows}
        for ref in acked:
            assert {f"m-r{ref % 3}-{ref * 100 + i}" for i in range(100)} <= ids, (
                f"append {ref} was acked but lost"
            )
        # No half append: every append is all there or not at all.
        for k in range(40):
            present = {f"m-r{k % 3}-{k * 100 + i}" for i in range(100)} & ids
            assert len(present) in (0, 100), f"append {k} is half there"
        assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
        assert acked_appends >= 20
        await client.ws.close()
    finally:
        proc.stop()
    assert tracklog("verify", "--db", str(db_path)).returncode == 0


async def mixed_workload(client: Client) -> None:
    await client.append(
        [
            {
                "id": "s1",
                "type": "run.started",
                "run": "a",
                "data": {
                    "name": "baseline",
                    "pipeline": "train",
                    "config": {"lr": 0.001, "layers": [1, 2]},
                    "tags": ["v1", "cpu"],
                },
            },
            {"type": "metrics", "run": "b", "data": {"values": {"loss": 2.0}, "step": 0}},
            {"type": "run.started", "run": "b", "data": {"name": "late start", "parent": "a"}},
        ]
    )
    for k in range(5):
        await client.append(
            [
                {
                    "type": "metrics",
                    "run": "a",
                    "data": {"values": {"loss": 1 / (i + 1), "acc": i / 3000}, "step": i, "epoch": i // 500},
                }
                for i in range(k * 700, (k + 1) * 700)
            ]
        )
    await client.append(
        [
            {
                "type": "item",
                "run": "a",
                "data": {
                    "stage": "translate",
                    "kind": "translation_result",
                    "status": "failed",
                    "error": "timeout",
                    "data": {"text": "hola"},
                    "duration": 0.5,
                },
            },
            {"type": "item", "run": "a", "data": {"stage": "translate", "data": {"text": "adios"}}},
            {
                "type": "artifact",
                "run": "a",
                "data": {"kind": "checkpoint", "path": "ckpt/1.pt", "size": 10, "metadata": {"epoch": 1}},
            },
            {
                "type": "run.updated",
                "run": "a",
                "data": {
                    "notes": "good",
                    "add_tags": ["best"],
                    "remove_tags": ["cpu"],
                    "config": {"lr": 0.002},
                },
            },
            {"type": "cache.put", "data": {"key": "schema:db1", "value": {"tables": ["a"]}, "ttl": 3600}},
            {"type": "cache.put", "data": {"key": "gone", "value": 1}},
            {"type": "cache.invalidated", "data": {"key": "gone"}},
            {"type": "run.finished", "run": "a", "data": {"status": "completed"}},
            {"type": "run.finished", "run": "b", "data": {"status": "failed", "error": "OOM"}},
            {"type": "run.deleted", "run": "b"},
            {"type": "metrics", "run": "c", "data": {"values": {"x": "NaN"}}},
        ]
    )


async def test_rebuild_equals_live_after_a_mixed_workload(
    daemon: DaemonProcess, client: Client, db_path: Path
) -> None:
    await mixed_workload(client)
    before = (await client.query("run", run="a"))["rows"][0]
    assert before["config"] == {"layers": [1, 2], "lr": 0.002}
    assert before["tags"] == ["best", "v1"]
    assert before["metrics"]["loss"]["count"] == 3500
    assert before["status"] == "completed"
    verify = tracklog("verify", "--db", str(db_path))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    await client.ws.close()
    daemon.stop()
    assert tracklog("rebuild", "--db", str(db_path)).returncode == 0
    daemon.start()
    client2, _ = await open_client(daemon.url)
    assert (await client2.query("run", run="a"))["rows"][0] == before
    await client2.ws.close()


async def test_verify_reports_a_tampered_table(daemon: DaemonProcess, client: Client, db_path: Path) -> None:
    await mixed_workload(client)
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE runs SET n_events = 999 WHERE run = 'a'")
    result = tracklog("verify", "--db", str(db_path))
    assert result.returncode == 1
    assert "runs" in result.stdout and "n_events" in result.stdout


async def test_dropped_projections_are_caught_up_from_the_log_at_start(
    daemon: DaemonProcess, client: Client, db_path: Path
) -> None:
    await mixed_workload(client)
    before = (await client.query("run", run="a"))["rows"][0]
    await client.ws.close()
    daemon.stop()
    with sqlite3.connect(db_path) as conn:
        conn.execute("DROP TABLE metric_chunks")
        conn.execute("DROP TABLE runs")
    daemon.start()
    client2, _ = await open_client(daemon.url)
    assert (await client2.query("run", run="a"))["rows"][0] == before
    await client2.ws.close()
    assert tracklog("verify", "--db", str(db_path)).returncode == 0


async def test_tables_behind_the_log_are_caught_up_at_start(
    daemon: DaemonProcess, client: Client, db_path: Path
) -> None:
    await mixed_workload(client)
    before = (await client.query("run", run="a"))["rows"][0]
    await client.ws.close()
    daemon.stop()
    with sqlite3.connect(db_path) as conn:
        # Throw away the last append's effect on the tables, as if they had fallen behind.
        conn.execute("UPDATE meta SET value = 5 WHERE key = 'applied_seq'")
        conn.execute("DELETE FROM items")
        conn.execute("DELETE FROM artifacts")
    # The tables behind: catch-up replays from applied_seq; verify tells the result apart
    # from a full rebuild only if catch-up got it wrong.
    daemon.start()
    client2, welcome = await open_client(daemon.url)
    after = (await client2.query("run", run="a"))["rows"][0]
    await client2.ws.close()
    assert welcome["head"] > 5
    assert len(after["artifacts"]) == len(before["artifacts"]) == 1


async def test_replay_writes_the_state_as_of_a_seq(
    daemon: DaemonProcess, client: Client, db_path: Path, tmp_path: Path
) -> None:
    await client.append([{"type": "run.started", "run": "a", "data": {"name": "one"}}])
    await client.append([{"type": "run.updated", "run": "a", "data": {"name": "two"}}])
    out = tmp_path / "as-of-1.db"
    result = tracklog("replay", "--db", str(db_path), "--to", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(out) as conn:
        assert conn.execute("SELECT name FROM runs").fetchall() == [("one",)]
        assert conn.execute("SELECT max(seq) FROM events").fetchone() == (1,)


# -- concurrency -------------------------------------------------------------------


@on_every_backend
async def test_concurrent_writers_get_gapless_seqs_and_never_see_database_is_locked(
    daemon: DaemonProcess,
) -> None:
    clients = [(await open_client(daemon.url))[0] for _ in range(6)]

    async def writer(n: int, c: Client) -> list[dict[str, Any]]:
        return [await c.append([metric(k * 50 + i, run=f"w{n}") for i in range(50)]) for k in range(20)]

    acks = await asyncio.gather(*(writer(n, c) for n, c in enumerate(clients)))
    seqs: list[int] = []
    for per_client in acks:
        for ack in per_client:
            assert ack["op"] == "ack" and ack["accepted"] == 50
            seqs.extend(range(ack["first_seq"], ack["last_seq"] + 1))
    assert sorted(seqs) == list(range(1, 6 * 20 * 50 + 1))
    for c in clients:
        await c.ws.close()


# -- HTTP and security -------------------------------------------------------------


@on_every_backend
async def test_healthz_reports_the_head(daemon: DaemonProcess, client: Client) -> None:
    await client.append([metric(0), metric(1)])
    def get() -> bytes:
        with urllib.request.urlopen(daemon.http + "/healthz", timeout=30) as response:
            return response.read()

    body = await asyncio.to_thread(get)
    assert json.loads(body) == {"status": "ok", "head": 2}


async def test_a_bad_token_is_unauthorized_and_closes_with_1008(tmp_path: Path) -> None:
    proc = DaemonProcess(tmp_path / "t.db", "--token", "s3cret").start()
    try:
        async with connect(proc.url) as ws:
            await ws.send(json.dumps({"op": "hello", "protocol": 1, "token": "wrong"}))
            assert json.loads(await ws.recv())["code"] == "unauthorized"
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 30)
            assert ws.close_code == 1008
        good, welcome = await open_client(proc.url, token="s3cret")
        assert welcome["op"] == "welcome"
        await good.ws.close()
        with pytest.raises(urllib.error.HTTPError) as err:
            await asyncio.to_thread(lambda: urllib.request.urlopen(proc.http + "/healthz", timeout=30))
        err.value.close()
        assert err.value.code == 401
    finally:
        proc.stop()


def test_serve_refuses_a_public_address_without_tokens(tmp_path: Path) -> None:
    result = tracklog("serve", "--db", str(tmp_path / "x.db"), "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    assert "--insecure" in result.stderr


@on_every_backend
async def test_sigterm_drains_acks_and_exits_cleanly(daemon: DaemonProcess, client: Client) -> None:
    for k in range(10):
        await client.send({"op": "append", "ref": k, "events": [metric(k * 10 + i) for i in range(10)]})
    acks = [await client.recv() for _ in range(10)]
    assert all(a["op"] == "ack" for a in acks)
    assert daemon.stop() == 0


@on_every_backend
async def test_a_client_that_never_reads_its_acks_does_not_hold_up_other_writers(
    daemon: DaemonProcess,
) -> None:
    async with connect(daemon.url, max_queue=1, max_size=None, close_timeout=1) as rude:
        await rude.send(json.dumps({"op": "hello", "protocol": 1}))
        await rude.recv()
        # Many appends whose acks it never reads: its acks back up on its own connection.
        for k in range(200):
            await rude.send(
                json.dumps(
                    {"op": "append", "ref": k, "events": [metric(k * 50 + i, run="rude") for i in range(50)]}
                )
            )
        polite, _ = await open_client(daemon.url)
        for k in range(20):
            ack = await polite.append([metric(k * 10 + i, run="polite") for i in range(10)])
            assert ack["accepted"] == 10
        run = (await polite.query("run", run="polite"))["rows"][0]
        assert run["n_events"] == 200


# -- frames that once stopped every write, and values no reader could take back ------------

POISON_FRAMES: list[str | bytes] = [
    '{"op":"append","ref":1,"events":[{"type":"metrics","run":"r","data":{"values":{"x":1e400}}}]}',
    '{"op":"append","ref":1,"events":[{"type":"nope","x":1e400}]}',
    # MessagePack: an invalid event holding a string that is not UTF-8 (and no ref).
    bytes.fromhex("82a26f70a6617070656e64a66576656e74739182a474797065a5626f677573a178a2fffe"),
]


@pytest.mark.parametrize(
    "poison", POISON_FRAMES, ids=["json-1e400-metric", "json-1e400-unknown-type", "msgpack-not-utf8"]
)
async def test_a_poison_append_is_answered_and_later_appends_on_any_connection_are_acked(
    daemon: DaemonProcess, poison: str | bytes
) -> None:
    binary = isinstance(poison, bytes)
    sender, _ = await open_client(daemon.url, binary=binary)
    other, _ = await open_client(daemon.url)
    await sender.ws.send(poison)
    reply = await sender.recv()
    assert reply["op"] == "ack" and reply["accepted"] == 0
    assert [r["code"] for r in reply["rejected"]] == ["invalid_event"]
    ack = await sender.append([metric(1)])
    assert ack["op"] == "ack" and ack["accepted"] == 1
    ack = await other.append([metric(2)])
    assert ack["op"] == "ack" and ack["accepted"] == 1
    await sender.ws.close()
    await other.ws.close()
    assert daemon.stop() == 0  # SIGTERM still stops it


def subscription_seqs(client: Client) -> list[int]:
    return [e["seq"] for m in client.unclaimed if m.get("op") == "events" for e in m["events"]]


@on_every_backend
async def test_values_no_reader_could_take_back_are_rejected_and_every_reader_keeps_working(
    daemon: DaemonProcess,
) -> None:
    watcher, _ = await open_client(daemon.url)  # JSON: the reader the bad values used to stop
    assert (await watcher.request({"op": "subscribe", "from_seq": 0}))["op"] == "subscribed"
    writer, _ = await open_client(daemon.url, binary=True)
    bad = [
        ({"type": "item", "run": "r", "data": {"data": {1: "a"}}}, "item.data.1: map keys must be strings"),
        (
            {"type": "run.started", "run": "r", "data": {"config": {"layers": {0: 64}}}},
            "run.started.config.layers.0: map keys must be strings",
        ),
        ({"type": "cache.put", "data": {"key": "k", "value": {(1, 2): "v"}}}, "cache.put.value.(1, 2): map"),
        ({"type": "cache.put", "data": {"key": "k", "value": msgspec.msgpack.Ext(5, b"")}}, "cache.put."),
        ({"type": "cache.put", "data": {"key": "k", "value": b"bytes"}}, "cache.put.value: "),
    ]
    good = {"type": "cache.put", "data": {"key": "k", "value": {"ok": [1, 2]}}}
    for event, message in bad:
        ack = await writer.append([event, good])
        assert ack["accepted"] == 1 and ack["rejected"][0]["index"] == 0
        assert ack["rejected"][0]["code"] == "invalid_event"
        assert ack["rejected"][0]["message"].startswith(message)
    head = len(bad)
    events = await watcher.query("events", from_seq=0)
    assert events["op"] == "result" and [e["seq"] for e in events["rows"]] == list(range(1, head + 1))
    cache = await watcher.query("cache", key="k")
    assert cache["op"] == "result" and cache["rows"][0]["value"] == {"ok": [1, 2]}
    # The JSON subscription delivered every event; it is still live for the next one.
    ack = await writer.append([metric(1)])
    assert ack["first_seq"] == head + 1
    async with asyncio.timeout(30):
        while subscription_seqs(watcher) != list(range(1, head + 2)):
            watcher.unclaimed.append(await watcher._recv())
