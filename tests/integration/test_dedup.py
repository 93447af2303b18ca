"""Near-duplicate checks against a real daemon: atomicity across connections, restarts, rebuilds."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import Client, DaemonProcess, open_client


def tracklog(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tracklog", *args], capture_output=True, text=True, timeout=120)


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
            await c.send(check("simhash", text=text.upper() if who % 2 else text, item=f"{who}-{ref}", ref=ref))
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


async def test_recorded_entries_survive_a_restart_and_a_rebuild_equals_live(daemon: DaemonProcess, db_path: Path) -> None:
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
    assert sim["duplicate"] and sim["match"] == {"item": "a", "run": "r-1", "distance": 0, "seq": first["recorded"]}
    assert exact["duplicate"] and exact["match"]["item"] == "b"
    assert emb["duplicate"] and emb["match"]["item"] == "c"
    assert not gone["duplicate"]
    await c.ws.close()

    verify = tracklog("verify", "--db", str(db_path))
    assert verify.returncode == 0, verify.stdout + verify.stderr


async def test_a_batch_check_answers_each_input_in_one_reply(client: Client) -> None:
    inputs = [{"text": "alpha beta gamma", "item": "1"}, {"text": "delta epsilon", "item": "2"},
              {"text": "ALPHA  beta gamma", "item": "3"}]
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
    ack = await client.append([{"type": "dedup.recorded", "run": "r",
                                "data": {"namespace": "n", "kind": "hash", "value": "x"}}])
    assert ack["accepted"] == 0
    assert ack["rejected"][0]["message"].startswith("type: dedup.recorded")
