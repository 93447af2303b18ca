"""Tokens with scopes at a real daemon: each op class over WebSocket, HTTP, and SIGHUP reload."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import Client, DaemonProcess, open_client
from tests.integration.test_service import stop_quietly, wait_for_log

TOKENS = """\
# token      scopes
writer       append
reader       read
boss         admin
legacy
"""


@pytest.fixture
def scoped(tmp_path: Path) -> Iterator[tuple[DaemonProcess, Path]]:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    daemon = DaemonProcess(tmp_path / "t.db", "--tokens", str(tokens), "--token", "static").start()
    try:
        yield daemon, tokens
    finally:
        stop_quietly(daemon)


def started(run: str) -> dict[str, Any]:
    return {"id": f"s-{run}", "type": "run.started", "run": run, "data": {"name": run}}


async def outcome(client: Client, msg: dict[str, Any]) -> str:
    """The reply's op, or its error code."""
    reply = await client.request(msg)
    return str(reply["code"] if reply["op"] == "error" else reply["op"])


#: One request of each op class, and what each token gets for it.
REQUESTS: dict[str, dict[str, Any]] = {
    "append": {"op": "append", "events": [started("r-x")]},
    "check": {"op": "check", "namespace": "n", "kind": "hash", "text": "t"},
    "query": {"op": "query", "q": "runs"},
    "sql": {"op": "query", "q": "sql", "sql": "SELECT 1"},
    "schema": {"op": "query", "q": "schema"},
    "subscribe": {"op": "subscribe", "from_seq": 0},
}
EXPECTED = {
    "writer": {"append": "ack", "check": "checked"},
    "reader": {"query": "result", "subscribe": "subscribed"},
    "boss": {name: None for name in REQUESTS},
    "legacy": {name: None for name in REQUESTS},
    "static": {name: None for name in REQUESTS},
}
ANSWERS = {
    "append": "ack",
    "check": "checked",
    "query": "result",
    "sql": "result",
    "schema": "result",
    "subscribe": "subscribed",
}


@pytest.mark.parametrize("token", list(EXPECTED))
async def test_each_token_may_use_only_the_ops_of_its_scopes(
    scoped: tuple[DaemonProcess, Path], token: str
) -> None:
    daemon, _ = scoped
    client, welcome = await open_client(daemon.url, token=token)
    assert welcome["op"] == "welcome"
    for name, msg in REQUESTS.items():
        allowed = name in EXPECTED[token]
        got = await outcome(client, msg)
        assert got == (ANSWERS[name] if allowed else "forbidden"), (token, name)
    # A forbidden request leaves the connection open and usable.
    assert await outcome(client, {"op": "query", "q": "stats"}) in ("result", "forbidden")


async def test_forbidden_names_the_scope_and_an_append_is_refused_in_its_turn(
    scoped: tuple[DaemonProcess, Path],
) -> None:
    daemon, _ = scoped
    reader, _ = await open_client(daemon.url, token="reader")
    reply = await reader.request({"op": "append", "events": [started("r1")]})
    assert reply["code"] == "forbidden" and "needs the 'append' scope" in reply["message"]
    assert "reader" not in reply["message"]  # the token is named by its digest only
    writer, _ = await open_client(daemon.url, token="writer")
    reply = await writer.request({"op": "query", "q": "sql", "sql": "SELECT 1"})
    assert reply["code"] == "forbidden" and "needs the 'admin' scope" in reply["message"]
    # Appends pipelined behind a refused one are acked in order (refs match the order sent).
    mixed, _ = await open_client(daemon.url, token="boss")
    for ref in (1, 2, 3):
        await mixed.send({"op": "append", "ref": ref, "events": [started(f"m{ref}")]})
    refs = [(await mixed.recv())["ref"] for _ in range(3)]
    assert refs == [1, 2, 3]


async def test_without_a_valid_token_the_connection_is_unauthorized_and_closed_1008(
    scoped: tuple[DaemonProcess, Path],
) -> None:
    daemon, _ = scoped
    for hello in ({}, {"token": "nope"}):
        async with connect(daemon.url) as ws:
            await ws.send(json.dumps({"op": "hello", "protocol": 1, **hello}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 30))["code"] == "unauthorized"
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 30)
            assert ws.close_code == 1008
    # The upgrade's bearer header counts as the hello's token, with its scopes.
    async with connect(daemon.url, additional_headers={"Authorization": "Bearer reader"}) as ws:
        client = Client(ws)
        await client.send({"op": "hello", "protocol": 1})
        assert (await client.recv())["op"] == "welcome"
        assert await outcome(client, REQUESTS["append"]) == "forbidden"
        assert await outcome(client, REQUESTS["query"]) == "result"


def http(daemon: DaemonProcess, path: str, token: str | None, method: str = "GET") -> tuple[int, Any]:
    request = urllib.request.Request(daemon.http + path, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            body = reply.read()
            return reply.status, json.loads(body) if reply.headers[
                "Content-Type"
            ] == "application/json" else body
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


async def test_http_takes_bearer_tokens_with_the_same_scopes(scoped: tuple[DaemonProcess, Path]) -> None:
    daemon, _ = scoped
    writer, _ = await open_client(daemon.url, token="writer")
    assert (await writer.append([started("h1")]))["op"] == "ack"

    def check() -> None:
        assert http(daemon, "/api/runs", None)[0] == 401
        assert http(daemon, "/api/runs", "nope")[0] == 401
        assert http(daemon, "/api/runs", "reader")[0] == 200
        status, body = http(daemon, "/api/runs", "writer")
        assert status == 403 and body["error"] == "forbidden" and "'read' scope" in body["message"]
        assert http(daemon, "/api/runs/h1/export/json", "reader")[0] == 200
        assert http(daemon, "/api/runs/h1/export/json", "writer")[0] == 403
        # /healthz and /metrics: any valid token, as before scopes.
        for token in ("writer", "reader", "boss"):
            assert http(daemon, "/healthz", token)[0] == 200
            assert http(daemon, "/metrics", token)[0] == 200
        assert http(daemon, "/healthz", None)[0] == 401
        # Deleting a run writes to the log: append.
        assert http(daemon, "/api/runs/h1", "reader", "DELETE")[0] == 403
        assert http(daemon, "/api/runs/h1", "writer", "DELETE")[0] == 200
        assert http(daemon, "/api/runs/h1/restore", "boss", "POST")[0] == 200

    await asyncio.to_thread(check)


async def test_sighup_reloads_scopes_and_a_bad_file_keeps_the_old_ones(
    scoped: tuple[DaemonProcess, Path],
) -> None:
    daemon, tokens = scoped
    assert daemon.proc is not None
    reader, _ = await open_client(daemon.url, token="reader")
    assert await outcome(reader, REQUESTS["append"]) == "forbidden"

    tokens.write_text("reader read,append\nnewcomer read\n")
    daemon.proc.send_signal(signal.SIGHUP)
    reloaded = await asyncio.to_thread(wait_for_log, daemon, "reloaded")
    assert reloaded["tokens"] == 3  # the two of the file and --token static
    again, _ = await open_client(daemon.url, token="reader")
    assert await outcome(again, {"op": "append", "events": [started("after")]}) == "ack"
    _, welcome = await open_client(daemon.url, token="newcomer")
    assert welcome["op"] == "welcome"
    _, welcome = await open_client(daemon.url, token="writer")
    assert welcome["code"] == "unauthorized"  # gone from the file

    # A file with a mistake is not taken: the daemon says why and keeps the tokens it had.
    tokens.write_text("reader read\nnewcomer reed\n")
    daemon.proc.send_signal(signal.SIGHUP)
    failed = await asyncio.to_thread(wait_for_log, daemon, "reload failed; settings unchanged")
    assert "line 2: unknown scope 'reed'" in failed["error"]
    kept, _ = await open_client(daemon.url, token="reader")
    assert await outcome(kept, {"op": "append", "events": [started("kept")]}) == "ack"
    assert daemon.stop() == 0


async def test_a_reload_that_finds_no_tokens_keeps_the_old_ones(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("only read\n")
    daemon = DaemonProcess(tmp_path / "t.db", "--tokens", str(tokens)).start()
    try:
        assert daemon.proc is not None
        tokens.write_text("# everyone left\n")
        daemon.proc.send_signal(signal.SIGHUP)
        failed = await asyncio.to_thread(wait_for_log, daemon, "reload failed; settings unchanged")
        assert "no tokens" in failed["error"]
        _, welcome = await open_client(daemon.url)
        assert welcome["code"] == "unauthorized"
        _, welcome = await open_client(daemon.url, token="only")
        assert welcome["op"] == "welcome"
    finally:
        stop_quietly(daemon)
