"""`tracklog serve --db memory:`: a daemon whose whole state is in memory answers every
kind of question about what it was sent (through `MemoryReadModel`), and keeps nothing."""

from __future__ import annotations

import asyncio
import json
import urllib.request

from tests.conftest import DaemonProcess, open_client


async def test_a_memory_daemon_answers_questions_about_what_it_was_sent() -> None:
    daemon = DaemonProcess("memory:").start()
    try:
        client, welcome = await open_client(daemon.url)
        assert welcome["op"] == "welcome" and welcome["head"] == 0
        watcher, _ = await open_client(daemon.url)
        assert (await watcher.request({"op": "subscribe", "from_seq": 0}))["op"] == "subscribed"
        ack = await client.append(
            [
                {
                    "type": "run.started",
                    "run": "r1",
                    "data": {"name": "first", "tags": ["t"], "config": {"lr": 0.1}},
                },
                *(
                    {"type": "metrics", "run": "r1", "data": {"step": s, "values": {"loss": 1 / (s + 1)}}}
                    for s in range(50)
                ),
                {"type": "item", "run": "r1", "data": {"item": "doc-1", "stage": "fetch", "status": "ok"}},
                {"type": "run.finished", "run": "r1", "data": {"status": "completed"}},
            ]
        )
        assert ack["accepted"] == 53
        runs = await client.query("runs", filter="status = 'completed' and config.lr < 1")
        assert runs["op"] == "result" and runs["total"] == 1 and runs["rows"][0]["name"] == "first"
        assert runs["seq"] == 53
        metrics = await client.query("metrics", run="first", names=["loss"], max_points=4)
        (row,) = metrics["rows"]
        assert row["points"] == 50 and row["downsampled"] and row["steps"][0] == 0 and row["steps"][-1] == 49
        items = await client.query("items", run="r1")
        assert [i["item"] for i in items["rows"]] == ["doc-1"]
        found = await client.query("search", text="first")
        assert [(h["kind"], h["run"]) for h in found["rows"]] == [("run", "r1")]
        refused = await client.query("sql", text="SELECT 1")
        assert refused["op"] == "error" and refused["code"] == "bad_query"
        assert "not available on the memory backend" in refused["message"]
        # The subscription got every event, live.
        seqs: list[int] = []
        while len(seqs) < 53:
            frame = await watcher.recv()
            if frame.get("op") == "event":
                seqs.append(frame["event"]["seq"])
            elif frame.get("op") == "events":
                seqs.extend(e["seq"] for e in frame["events"])
        assert seqs == list(range(1, 54))
        # An export reads a model of its own, over the same log in memory.
        url = f"{daemon.http}/api/runs/r1/export/jsonl"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=30).read())
        lines = [json.loads(line) for line in body.decode().splitlines()]
        assert lines and any("loss" in json.dumps(line) for line in lines)
        # No database to measure: /metrics and stats say 0.
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"{daemon.http}/metrics", timeout=30).read().decode()
        )
        assert "\ntracklog_database_bytes 0\n" in text
        stats = await client.query("stats")
        assert stats["rows"][0]["database_bytes"] == 0 and stats["rows"][0]["runs"] == 1
    finally:
        assert daemon.stop() == 0


async def test_a_memory_daemon_starts_empty_every_time() -> None:
    for _ in range(2):
        daemon = DaemonProcess("memory:").start()
        try:
            client, welcome = await open_client(daemon.url)
            assert welcome["head"] == 0
            assert (await client.append([{"type": "run.started", "run": "r", "data": {}}]))["accepted"] == 1
            assert (await client.query("runs"))["total"] == 1
        finally:
            assert daemon.stop() == 0
