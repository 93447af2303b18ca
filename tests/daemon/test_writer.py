"""The writer keeps committing whatever one request or one group does, and says when it
cannot: /healthz and /metrics of an in-process daemon when the writer is down, stuck, or
the disk is full (a real SQLITE_FULL, from the write connection's page limit)."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.conftest import open_client
from tracklog.daemon import writer as writer_module
from tracklog.daemon.ingest import AppendRequest
from tracklog.daemon.server import Daemon, Settings
from tracklog.daemon.storage import SqliteBackend
from tracklog.daemon.storage.eventlog import AppendResult
from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog
from tracklog.daemon.writer import Writer
from tracklog.protocol import errors
from tracklog.protocol.events import Metrics, MetricsData
from tracklog.protocol.messages import Append

WAIT = 30.0


def append(ref: int, n: int = 2) -> Append:
    events = [Metrics(run="r", data=MetricsData(values={"loss": float(i)}, step=i)) for i in range(n)]
    return Append(events=events, ref=ref)  # type: ignore[arg-type]


def frame(ref: int) -> str:
    event = {"type": "metrics", "run": "r", "data": {"values": {"x": 1}}}
    return json.dumps({"op": "append", "ref": ref, "events": [event]})


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[Writer]:
    w = Writer(SqliteBackend(tmp_path / "w.db"))
    await w.start()
    try:
        yield w
    finally:
        await w.stop()


async def results(futures: list[asyncio.Future[Any]]) -> list[Any]:
    return await asyncio.wait_for(asyncio.gather(*futures), WAIT)


# -- the writer survives any one request ---------------------------------------------------


async def test_a_failing_group_is_retried_request_by_request_so_only_the_bad_request_fails(
    writer: Writer,
) -> None:
    store = writer._store
    assert store is not None
    real = store.append_group

    def poisoned(requests: Any, publish: bool = False) -> Any:
        if any(getattr(r, "ref", None) == 13 for r in requests):
            raise RuntimeError("boom")
        return real(requests, publish)

    store.append_group = poisoned  # type: ignore[method-assign]
    # Queued before the writer runs again, so the three go in one group.
    futures = [await writer.submit(append(ref)) for ref in (12, 13, 14)]
    first, bad, last = await results(futures)
    assert isinstance(first, AppendResult) and first.ack.ref == 12 and first.ack.accepted == 2
    assert isinstance(bad, errors.InternalError) and bad.ref == 13
    assert isinstance(last, AppendResult) and last.ack.ref == 14
    assert writer.alive and writer.failures >= 1
    (after,) = await results([await writer.submit(append(15))])
    assert isinstance(after, AppendResult) and after.ack.first_seq == 5


async def test_an_unexpected_error_decoding_one_frame_fails_only_that_frame(writer: Writer) -> None:
    real = writer.codec.decode

    def decode(data: str | bytes) -> Any:
        if '"ref": 2,' in str(data):
            raise ValueError("a codec bug")
        return real(data)

    writer.codec.decode = decode  # type: ignore[method-assign]
    got = await results([await writer.submit_frame(frame(ref)) for ref in (1, 2, 3)])
    assert [type(r).__name__ for r in got] == ["AppendResult", "InternalError", "AppendResult"]
    assert writer.alive


async def test_a_protocol_error_for_a_raw_frame_gets_its_ref_and_the_writer_goes_on(writer: Writer) -> None:
    # The old error path read `.ref` off the raw frame and killed the writer.
    bad = '{"op":"append","ref":5,"events":[{"type":"nope","x":1e400}]}'
    too_many = json.dumps({"op": "append", "ref": 6, "events": [{}] * 10_001})
    got = await results([await writer.submit_frame(f) for f in (bad, too_many, frame(7))])
    assert isinstance(got[0], AppendResult) and got[0].ack.rejected[0].code == errors.INVALID_EVENT
    assert isinstance(got[1], errors.TooLarge) and got[1].ref == 6
    assert isinstance(got[2], AppendResult) and got[2].ack.accepted == 1


async def test_an_exception_in_the_writers_own_bookkeeping_fails_that_group_and_not_the_writer(
    writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = writer_module._weight

    def weight(request: Any) -> int:
        if isinstance(request, AppendRequest) and request.append.ref == 99:
            raise RuntimeError("a writer bug")
        return real(request)

    monkeypatch.setattr(writer_module, "_weight", weight)
    (failed,) = await results([await writer.submit(append(99))])
    assert isinstance(failed, errors.InternalError) and failed.ref == 99
    (ok,) = await results([await writer.submit(append(100))])
    assert isinstance(ok, AppendResult) and ok.ack.accepted == 2
    assert writer.alive and writer.failures == 1
    await asyncio.wait_for(writer.drain(), WAIT)


async def test_a_dead_writer_answers_at_once_and_draining_does_not_hang(writer: Writer) -> None:
    assert writer._task is not None
    writer._task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer._task
    assert not writer.alive
    assert writer.problem() is not None and writer.problem()[0] == "writer_down"  # type: ignore[index]
    (answer,) = await results([await writer.submit(append(1))])
    assert isinstance(answer, errors.InternalError) and answer.ref == 1
    await asyncio.wait_for(writer.drain(), WAIT)


# -- /healthz and /metrics of an in-process daemon -------------------------------------------


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon(Settings(db=tmp_path / "d.db", port=0))
    await d.start()
    try:
        yield d
    finally:
        await asyncio.wait_for(d.stop(), WAIT)


async def http_get(d: Daemon, path: str) -> tuple[int, bytes]:
    def get() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{d.port}{path}", timeout=WAIT) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()

    return await asyncio.to_thread(get)


async def health(d: Daemon) -> tuple[int, dict[str, Any]]:
    status, body = await http_get(d, "/healthz")
    return status, json.loads(body)


async def metrics(d: Daemon) -> dict[str, float]:
    status, body = await http_get(d, "/metrics")
    assert status == 200
    return {
        line.split()[0]: float(line.split()[1])
        for line in body.decode().splitlines()
        if not line.startswith("#")
    }


async def test_healthz_and_metrics_say_when_the_writer_is_down(daemon: Daemon) -> None:
    assert await health(daemon) == (200, {"status": "ok", "head": 0})
    assert (await metrics(daemon))["tracklog_writer_up"] == 1
    task = daemon.writer._task
    assert task is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    status, body = await health(daemon)
    assert status == 503 and body["status"] == "writer_down" and "writer" in body["reason"]
    assert (await metrics(daemon))["tracklog_writer_up"] == 0


async def test_healthz_and_metrics_say_when_the_writer_is_stuck_and_recover_when_it_moves(
    daemon: Daemon,
) -> None:
    store = daemon.writer._store
    assert store is not None
    real = store.append_group
    entered, release = threading.Event(), threading.Event()

    def blocked(requests: Any, publish: bool = False) -> Any:
        entered.set()
        release.wait(WAIT)
        return real(requests, publish)

    store.append_group = blocked  # type: ignore[method-assign]
    daemon.writer.stuck_after = 0.0  # any wait counts: the test needs no clock
    client, _ = await open_client(f"ws://127.0.0.1:{daemon.port}/ws")
    await client.send(
        {"op": "append", "ref": 1, "events": [{"type": "metrics", "run": "r", "data": {"values": {"x": 1}}}]}
    )
    await asyncio.to_thread(entered.wait, WAIT)
    try:
        status, body = await health(daemon)
        assert status == 503 and body["status"] == "writer_stuck"
        seen = await metrics(daemon)
        assert seen["tracklog_writer_oldest_request_seconds"] > 0 and seen["tracklog_writer_up"] == 1
    finally:
        release.set()
    assert (await client.recv())["op"] == "ack"
    assert await health(daemon) == (200, {"status": "ok", "head": 1})
    assert (await metrics(daemon))["tracklog_writer_oldest_request_seconds"] == 0


async def test_a_full_disk_is_disk_full_logged_once_reported_and_recovered_from(daemon: Daemon) -> None:
    writer = daemon.writer
    store: SqliteEventLog | None = writer._store
    assert store is not None
    client, _ = await open_client(f"ws://127.0.0.1:{daemon.port}/ws")
    item = {"type": "item", "run": "r", "data": {"data": {"text": "x" * 2000}}}
    assert (await client.append([item]))["accepted"] == 1

    def limit_pages(extra: int | None) -> None:
        pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
        limit = 1_000_000_000 if extra is None else pages + extra
        store.conn.execute(f"PRAGMA max_page_count = {limit}")

    loop = asyncio.get_running_loop()
    await loop.run_in_executor(writer._executor, limit_pages, 0)  # on the writer's thread
    with structlog.testing.capture_logs() as logs:
        for ref in (10, 11):
            reply = await client.request({"op": "append", "ref": ref, "events": [item] * 200})
            assert (
                reply
                == {
                    "op": "error",
                    "code": "disk_full",
                    "message": reply["message"],
                    "ref": ref,
                }
                and "disk is full" in reply["message"]
            )
        status, body = await health(daemon)
        assert (
            status == 503 and body["status"] == "disk_full" and "full" in body["reason"] and body["head"] == 1
        )
        seen = await metrics(daemon)
        assert seen["tracklog_disk_full"] == 1 and seen["tracklog_disk_full_refusals_total"] == 2
        assert seen["tracklog_disk_full_episodes_total"] == 1
        # Space returns: the next append commits, and the daemon says so.
        await loop.run_in_executor(writer._executor, limit_pages, None)
        ack = await client.request({"op": "append", "ref": 12, "events": [item] * 200})
        assert ack["op"] == "ack" and ack["accepted"] == 200 and ack["first_seq"] == 2
    full = [e for e in logs if e["event"].startswith("disk full")]
    assert len(full) == 1 and full[0]["log_level"] == "error"
    assert any(e["event"].startswith("disk space is back") for e in logs)
    assert await health(daemon) == (200, {"status": "ok", "head": 201})
    assert (await metrics(daemon))["tracklog_disk_full"] == 0
