"""Near-duplicate checks against a real daemon: atomicity across connections, restarts, rebuilds."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from tests.conftest import Client, DaemonProcess, open_client
from tracklog.daemon import dedup_persist
from tracklog.daemon.dedup_persist import DedupRuntime, stem
from tracklog.daemon.server import Daemon, Settings


def tracklog(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracklog", *args], capture_output=True, text=True, timeout=120
    )


def check(kind: str, **kw: Any) -> dict[str, Any]:
    return {"op": "check", "namespace": kw.pop("namespace", "pipe"), "kind": kind, **kw}


async def test_of_concurrent_checks_of_one_text_from_several_connections_exactly_one_records(
    daemon: DaemonProcess,
) -> None:
    clients = [(await open_client(daemon.url, binary=i % 2 == 1))[0] for i in range(6)]
    texts = [f"document number {n} about the same thing" for n in range(25)]

    async def check_all(c: Client, who: int) -> list[Any]:
        # Every connection sends all its checks before reading any answer, so they meet
        # in the writer's queue and in the same group commits.
        for ref, text in enumerate(texts, 1):
            await c.send(
                check("simhash", text=text.upper() if who % 2 else text, item=f"{who}-{ref}", ref=ref)
            )
        replies = [await c.recv() for _ in texts]
        return sorted(replies, key=lambda r: r["ref"])

    answers = await asyncio.gather(*(check_all(c, i) for i, c in enumerate(clients)))
    for n in range(len(texts)):
        per_text = [a[n] for a in answers]
        assert all(r["op"] == "checked" for r in per_text), per_text
        recorded = [r for r in per_text if not r["duplicate"]]
        assert len(recorded) == 1, per_text
        winner = recorded[0]["recorded"]
        assert all(r["match"]["seq"] == winner for r in per_text if r["duplicate"])
    head = (await clients[0].query("events", from_seq=0, limit=1000))["rows"]
    assert len(head) == len(texts)


async def test_recorded_entries_survive_a_restart_and_a_rebuild_equals_live(
    daemon: DaemonProcess, db_path: Path
) -> None:
    c, _ = await open_client(daemon.url)
    first = await c.request(check("simhash", text="the cat sat on the mat today", run="r-1", item="a"))
    await c.request(check("hash", value={"host": "db", "port": 5432}, item="b"))
    await c.request(check("embedding", space="minilm", vector=[0.6, 0.8, 0.0], item="c"))
    await c.request(check("hash", text="to be forgotten", namespace="other"))
    ack = await c.append([{"type": "dedup.cleared", "data": {"namespace": "other"}}])
    assert ack["accepted"] == 1
    await c.ws.close()
    assert daemon.stop() == 0

    daemon.start()
    c, _ = await open_client(daemon.url)
    sim = await c.request(check("simhash", text="The cat sat on the mat TODAY", record=False))
    exact = await c.request(check("hash", value={"port": 5432, "host": "db"}, record=False))
    emb = await c.request(check("embedding", space="minilm", vector=[0.61, 0.79, 0.0], record=False))
    gone = await c.request(check("hash", text="to be forgotten", namespace="other", record=False))
    assert sim["duplicate"] and sim["match"] == {
        "item": "a",
        "run": "r-1",
        "distance": 0,
        "seq": first["recorded"],
    }
    assert exact["duplicate"] and exact["match"]["item"] == "b"
    assert emb["duplicate"] and emb["match"]["item"] == "c"
    assert not gone["duplicate"]
    await c.ws.close()

    verify = tracklog("verify", "--db", str(db_path))
    assert verify.returncode == 0, verify.stdout + verify.stderr


async def test_a_batch_check_answers_each_input_in_one_reply(client: Client) -> None:
    inputs = [
        {"text": "alpha beta gamma", "item": "1"},
        {"text": "delta epsilon", "item": "2"},
        {"text": "ALPHA  beta gamma", "item": "3"},
    ]
    reply = await client.request(check("simhash", inputs=inputs, threshold=0))
    assert reply["op"] == "checked"
    assert [r["duplicate"] for r in reply["results"]] == [False, False, True]
    assert reply["results"][2]["match"]["item"] == "1"
    assert reply["seq"] == 2


async def test_bad_checks_get_errors_naming_the_field_and_the_connection_stays_usable(client: Client) -> None:
    wrong_dim = await client.request(check("embedding", space="s", vector=[1.0, 0.0]))
    assert wrong_dim["op"] == "checked"
    replies = [
        await client.request(check("embedding", space="s", vector=[1.0, 0.0, 0.0])),
        await client.request(check("embedding", space="s", vector=[0.0, 0.0])),
        await client.request(check("simhash", text="x", threshold=40)),
        await client.request({"op": "check", "kind": "hash", "text": "x"}),
    ]
    assert [r["op"] for r in replies] == ["error"] * 4
    assert replies[0]["message"].startswith("check.vector: expected 2 dimensions")
    assert replies[1]["message"].startswith("check.vector: a zero vector")
    assert replies[2]["message"].startswith("check.threshold:")
    assert replies[3]["message"] == "check: missing required field 'namespace'"
    assert all(r["code"] == "bad_message" for r in replies)
    ok = await client.request(check("hash", text="still here"))
    assert ok["op"] == "checked" and not ok["duplicate"]


async def test_clients_cannot_append_dedup_recorded_events(client: Client) -> None:
    ack = await client.append(
        [{"type": "dedup.recorded", "run": "r", "data": {"namespace": "n", "kind": "hash", "value": "x"}}]
    )
    assert ack["accepted"] == 0
    assert ack["rejected"][0]["message"].startswith("type: dedup.recorded")


# -- start-up: indexes load after the daemon listens; embedding indexes are saved ---------


def _vectors(n: int, dims: int = 16, seed: int = 1) -> list[list[float]]:
    v = np.random.default_rng(seed).normal(size=(n, dims))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).tolist()


async def _in_process(db: Path) -> Daemon:
    d = Daemon(Settings(db=db, port=0))
    await d.start()
    return d


async def test_a_check_waits_for_its_namespace_index_alone_while_other_work_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "t.db"
    vectors = _vectors(3)
    d = await _in_process(db)
    c, _ = await open_client(f"ws://127.0.0.1:{d.port}/ws")
    for name in ("slow", "fast"):
        await c.request(check("embedding", namespace=name, space="s", vector=vectors[0], item=f"{name}-0"))
    await c.request(check("simhash", namespace="slow", text="one two three four", item="t"))
    await d.stop()

    release = threading.Event()
    original = DedupRuntime._read

    def blocking_read(self: DedupRuntime, conn: Any, unit: tuple[str, str]) -> Any:
        if unit == ("slow", "embedding"):
            release.wait(60)
        return original(self, conn, unit)

    monkeypatch.setattr(DedupRuntime, "_read", blocking_read)
    d = await _in_process(db)
    try:
        c, _ = await open_client(f"ws://127.0.0.1:{d.port}/ws")
        await c.send(check("embedding", namespace="slow", space="s", vector=vectors[0], record=False, ref=1))
        # While 'slow' loads: another namespace, another kind in 'slow', appends and queries answer.
        fast = await c.request(
            check("embedding", namespace="fast", space="s", vector=vectors[0], record=False)
        )
        assert fast["duplicate"] and fast["match"]["item"] == "fast-0"
        same_ns = await c.request(check("simhash", namespace="slow", text="one two three four", record=False))
        assert same_ns["duplicate"]
        ack = await c.append([{"id": "e-1", "type": "run.started", "run": "r", "data": {}}])
        assert ack["op"] == "ack" and ack["accepted"] == 1
        assert (await c.query("stats"))["op"] == "result"
        assert not release.is_set()  # the first check is still unanswered (it would be the next frame)
        release.set()
        waited = await c.recv()
        assert waited["ref"] == 1 and waited["duplicate"] and waited["match"]["item"] == "slow-0"
    finally:
        release.set()
        await d.stop()


async def test_a_namespace_cleared_while_its_index_loads_is_empty_once_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "t.db"
    vectors = _vectors(2)
    d = await _in_process(db)
    c, _ = await open_client(f"ws://127.0.0.1:{d.port}/ws")
    await c.request(check("embedding", namespace="ns", space="s", vector=vectors[0]))
    await d.stop()
    release = threading.Event()
    original = DedupRuntime._read

    def blocking_read(self: DedupRuntime, conn: Any, unit: tuple[str, str]) -> Any:
        release.wait(60)
        return original(self, conn, unit)

    monkeypatch.setattr(DedupRuntime, "_read", blocking_read)
    d = await _in_process(db)
    try:
        c, _ = await open_client(f"ws://127.0.0.1:{d.port}/ws")
        ack = await c.append([{"type": "dedup.cleared", "data": {"namespace": "ns"}}])
        assert ack["accepted"] == 1
        release.set()
        again = await c.request(
            check("embedding", namespace="ns", space="s", vector=vectors[0], record=False)
        )
        assert not again["duplicate"]
    finally:
        release.set()
        await d.stop()


async def test_a_clean_stop_saves_the_embedding_index_and_the_next_start_loads_it(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    vectors = _vectors(20)
    d = await _in_process(db)
    c, _ = await open_client(f"ws://127.0.0.1:{d.port}/ws")
    await c.request(check("embedding", namespace="ns", space="s", inputs=[{"vector": v} for v in vectors]))
    await d.stop()
    assert (db.parent / "t.db.dedup" / f"{stem('ns')}.json").exists()
    d = await _in_process(db)
    try:
        c, _ = await open_client(f"ws://127.0.0.1:{d.port}/ws")
        r = await c.request(check("embedding", namespace="ns", space="s", vector=vectors[7], record=False))
        assert r["duplicate"]
        assert d.writer.dedup is not None and d.writer.dedup.sources["ns"] == ("saved", 0)
    finally:
        await d.stop()


async def test_the_embedding_index_is_saved_every_n_vectors_while_the_daemon_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dedup_persist, "SAVE_EVERY_VECTORS", 5)
    db = tmp_path / "t.db"
    d = await _in_process(db)
    try:
        c, _ = await open_client(f"ws://127.0.0.1:{d.port}/ws")
        r = await c.request(
            check("embedding", namespace="ns", space="s", inputs=[{"vector": v} for v in _vectors(6)])
        )
        # The save was started by the commit that answered the check: wait for it to end.
        assert d.writer.dedup is not None
        await asyncio.wait_for(asyncio.wrap_future(d.writer.dedup.saves["ns"]), 30)
        header = db.parent / "t.db.dedup" / f"{stem('ns')}.json"
        assert msgspec.json.decode(header.read_bytes())["seq"] == r["seq"]
    finally:
        await d.stop()


async def test_after_kill_9_the_older_saved_index_is_caught_up_from_the_log(db_path: Path) -> None:
    first, later = _vectors(30, seed=2), _vectors(10, seed=3)
    d = DaemonProcess(db_path).start()
    try:
        c, _ = await open_client(d.url)
        await c.request(check("embedding", namespace="ns", space="s", inputs=[{"vector": v} for v in first]))
        await c.ws.close()
    finally:
        assert d.stop() == 0
    d = DaemonProcess(db_path).start()
    try:
        c, _ = await open_client(d.url)
        await c.request(check("embedding", namespace="ns", space="s", inputs=[{"vector": v} for v in later]))
        await c.ws.close()
    finally:
        d.kill()
    d = DaemonProcess(db_path).start()
    try:
        c, _ = await open_client(d.url)
        r = await c.request(
            check(
                "embedding",
                namespace="ns",
                space="s",
                record=False,
                inputs=[{"vector": v} for v in first + later],
            )
        )
        assert all(x["duplicate"] for x in r["results"])
        loads = [msgspec.json.decode(line) for line in d.log if '"embedding index"' in line]
        assert [(x["source"], x["added_from_log"]) for x in loads] == [("saved", 10)], d.log
    finally:
        d.stop()
