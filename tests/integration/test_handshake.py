"""The handshake: `welcome` echoes the ref of `hello`, and empty tokens never count as tokens."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import DaemonProcess, open_client
from tracklog.daemon.auth import TokenSet, grant
from tracklog.daemon.server import Daemon


def tracklog(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracklog", *args], capture_output=True, text=True, timeout=120, env=env
    )


# -- ref on the replies to hello ---------------------------------------------------------


async def test_welcome_echoes_the_ref_of_hello(daemon: DaemonProcess) -> None:
    client, welcome = await open_client(daemon.url, ref=41)
    assert welcome["op"] == "welcome" and welcome["ref"] == 41
    # Without a ref, none is sent (as before).
    other, welcome = await open_client(daemon.url)
    assert "ref" not in welcome
    await client.ws.close()
    await other.ws.close()


async def test_hello_required_echoes_the_ref_of_the_first_message(daemon: DaemonProcess) -> None:
    async with connect(daemon.url) as ws:
        await ws.send(json.dumps({"op": "query", "q": "stats", "ref": 7}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert (reply["code"], reply["ref"]) == ("hello_required", 7)


async def test_unauthorized_echoes_the_ref_of_hello(tmp_path: Path) -> None:
    proc = DaemonProcess(tmp_path / "t.db", "--token", "s3cret").start()
    try:
        async with connect(proc.url) as ws:
            await ws.send(json.dumps({"op": "hello", "protocol": 1, "token": "wrong", "ref": 3}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert (reply["code"], reply["ref"]) == ("unauthorized", 3)
    finally:
        proc.stop()


# -- empty tokens ---------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["", "   "])
def test_serve_refuses_an_empty_or_blank_token(tmp_path: Path, token: str) -> None:
    # As `--token "$VAR"` with VAR unset: it must not pass for protection on 0.0.0.0.
    result = tracklog(
        "serve", "--db", str(tmp_path / "x.db"), "--host", "0.0.0.0", "--port", "0", "--token", token
    )
    assert result.returncode == 2
    assert "empty token" in result.stderr
    result = tracklog(
        "serve", "--db", str(tmp_path / "x.db"), "--port", "0", "--token", "ok", "--token", token
    )
    assert result.returncode == 2 and "empty token" in result.stderr


def test_an_empty_token_never_matches_even_a_configured_empty_one() -> None:
    # Serve refuses empty tokens at start; should one reach the check anyway, it fails.
    daemon = SimpleNamespace(tokens=TokenSet([grant(""), grant("s3cret")]))
    assert not Daemon._token_ok(daemon, "")  # type: ignore[arg-type]
    assert not Daemon._token_ok(daemon, None)  # type: ignore[arg-type]
    assert Daemon._token_ok(daemon, "s3cret")  # type: ignore[arg-type]


async def test_a_hello_with_an_empty_token_never_authenticates(tmp_path: Path) -> None:
    proc = DaemonProcess(tmp_path / "t.db", "--token", "s3cret").start()
    try:
        async with connect(proc.url) as ws:
            await ws.send(json.dumps({"op": "hello", "protocol": 1, "token": ""}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 30))["code"] == "unauthorized"
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 30)
        # Nor does an empty bearer header on the upgrade, with or without a token in hello.
        async with connect(proc.url, additional_headers={"Authorization": "Bearer "}) as ws:
            await ws.send(json.dumps({"op": "hello", "protocol": 1}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 30))["code"] == "unauthorized"
    finally:
        proc.stop()
