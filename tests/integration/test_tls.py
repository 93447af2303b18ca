"""TLS: `serve --tls-cert/--tls-key`, and wss:// and https:// in the client and the CLI,
with a self-signed certificate the test makes (`openssl req`)."""

from __future__ import annotations

import asyncio
import datetime
import json
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

import tracklog
from tests.conftest import DaemonProcess, open_client
from tests.integration.test_service import stop_quietly, wait_for_log
from tracklog.daemon.certificates import not_after
from tracklog.queries import QueryClient
from tracklog.requests import DaemonUnavailable
from tracklog.tls import CA_VARIABLE, ssl_context

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1, and its key (PEM files)."""
    folder.mkdir(exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_daemon(tmp_path: Path) -> Iterator[tuple[DaemonProcess, Path]]:
    cert, key = self_signed(tmp_path)
    daemon = DaemonProcess(
        tmp_path / "t.db", "--tls-cert", str(cert), "--tls-key", str(key), "--token", "s3cret"
    ).start()
    try:
        yield daemon, cert
    finally:
        stop_quietly(daemon)


def wss(daemon: DaemonProcess) -> str:
    return f"wss://127.0.0.1:{daemon.port}/ws"


def started(run: str) -> dict[str, object]:
    return {"id": f"s-{run}", "type": "run.started", "run": run, "data": {"name": run}}


async def test_the_thin_client_logs_and_queries_over_wss_with_a_custom_ca(
    tls_daemon: tuple[DaemonProcess, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, cert = tls_daemon
    monkeypatch.setenv(CA_VARIABLE, str(cert))
    tl = tracklog.connect(wss(daemon), token="s3cret", spool_dir=tmp_path / "spool")
    try:
        with tl.start_run(name="secure", pipeline="tls") as run:
            run.log_metrics({"loss": 0.5}, step=1)
        assert await asyncio.to_thread(tl.flush, 60)
        assert tl.stats()["acked"] == 3
        runs = await asyncio.to_thread(QueryClient(wss(daemon), "s3cret").runs)
        assert [r["name"] for r in runs] == ["secure"]
    finally:
        await asyncio.to_thread(tl.close, 10)


async def test_https_answers_with_the_certificate_and_plain_ws_is_not_served(
    tls_daemon: tuple[DaemonProcess, Path],
) -> None:
    daemon, cert = tls_daemon
    context = ssl_context(f"https://127.0.0.1:{daemon.port}", str(cert))
    assert context is not None

    def health() -> tuple[int, object]:
        request = urllib.request.Request(f"https://127.0.0.1:{daemon.port}/healthz")
        request.add_header("Authorization", "Bearer s3cret")
        with urllib.request.urlopen(request, timeout=30, context=context) as reply:
            return reply.status, json.loads(reply.read())

    status, body = await asyncio.to_thread(health)
    assert status == 200 and body == {"status": "ok", "head": 0}
    with pytest.raises(Exception):  # noqa: B017 - a TLS port does not speak plain HTTP
        await open_client(daemon.url, token="s3cret")
    # The raw protocol over wss:// with the context, as any client would.
    async with connect(wss(daemon), ssl=context) as ws:
        await ws.send(json.dumps({"op": "hello", "protocol": 1, "token": "s3cret"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 30))["op"] == "welcome"


async def test_a_certificate_nobody_vouches_for_is_refused(
    tls_daemon: tuple[DaemonProcess, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, _ = tls_daemon
    monkeypatch.delenv(CA_VARIABLE, raising=False)
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.to_thread(QueryClient(wss(daemon), "s3cret").runs)
    requests = tracklog.requests.Requests(wss(daemon), "s3cret", "tests")
    try:
        with pytest.raises(DaemonUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            await asyncio.to_thread(requests.request, tracklog.requests.Query(q="stats"))
    finally:
        requests.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracklog", *args], capture_output=True, text=True, timeout=120
    )


async def test_the_cli_speaks_wss_and_https_with_ca(
    tls_daemon: tuple[DaemonProcess, Path], tmp_path: Path
) -> None:
    daemon, cert = tls_daemon
    async with connect(wss(daemon), ssl=ssl_context(wss(daemon), str(cert))) as ws:
        await ws.send(json.dumps({"op": "hello", "protocol": 1, "token": "s3cret"}))
        await ws.recv()
        await ws.send(json.dumps({"op": "append", "ref": 1, "events": [started("c1")]}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 30))["op"] == "ack"
    common = ("--url", wss(daemon), "--token", "s3cret", "--ca", str(cert))
    result = await asyncio.to_thread(cli, "runs", *common, "--json")
    assert result.returncode == 0, result.stderr
    assert [r["id"] for r in json.loads(result.stdout)["runs"]] == ["c1"]
    out = tmp_path / "c1.json"
    result = await asyncio.to_thread(cli, "export", "c1", "--format", "json", "-o", str(out), *common)
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["run"]["id"] == "c1"
    # Without the CA the certificate is not trusted, and the command says it cannot reach the daemon.
    result = await asyncio.to_thread(cli, "runs", "--url", wss(daemon), "--token", "s3cret")
    assert result.returncode == 2 and "CERTIFICATE_VERIFY_FAILED" in result.stderr


def test_serve_refuses_a_certificate_it_cannot_load(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    result = cli(
        "serve",
        "--db",
        str(tmp_path / "t.db"),
        "--port",
        "0",
        "--tls-cert",
        str(missing),
        "--tls-key",
        str(missing),
    )
    assert result.returncode == 2 and "cannot load the TLS certificate" in result.stderr
    result = cli("serve", "--db", str(tmp_path / "t.db"), "--port", "0", "--tls-cert", str(missing))
    assert result.returncode == 2 and "needs both --tls-cert and --tls-key" in result.stderr


# -- certificate rotation on SIGHUP -----------------------------------------------------------


def peer_certificate(port: int) -> bytes:
    """The certificate (DER) a new TLS connection to the daemon is served."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def der_of(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


async def test_sighup_serves_a_renewed_certificate_and_open_connections_keep_theirs(tmp_path: Path) -> None:
    first, first_key = self_signed(tmp_path / "first")
    second, second_key = self_signed(tmp_path / "second")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(first, cert)
    shutil.copy(first_key, key)
    daemon = DaemonProcess(tmp_path / "t.db", "--tls-cert", str(cert), "--tls-key", str(key)).start()
    try:
        assert await asyncio.to_thread(peer_certificate, daemon.port) == der_of(first)
        async with connect(wss(daemon), ssl=ssl_context(wss(daemon), str(first))) as old:
            await old.send(json.dumps({"op": "hello", "protocol": 1}))
            assert json.loads(await asyncio.wait_for(old.recv(), 30))["op"] == "welcome"

            # The renewal replaces the files; SIGHUP makes the daemon take them.
            shutil.copy(second, cert)
            shutil.copy(second_key, key)
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGHUP)
            loaded = await asyncio.to_thread(wait_for_log, daemon, "TLS certificate loaded")
            assert loaded["cert"] == str(cert) and loaded["level"] == "info"
            assert loaded["not_after"] == not_after(second.read_bytes()) is not None

            assert await asyncio.to_thread(peer_certificate, daemon.port) == der_of(second)
            # A client that trusts the new certificate connects; the open connection goes on
            # with the one it was made with.
            async with connect(wss(daemon), ssl=ssl_context(wss(daemon), str(second))) as new:
                await new.send(json.dumps({"op": "hello", "protocol": 1}))
                assert json.loads(await asyncio.wait_for(new.recv(), 30))["op"] == "welcome"
            await old.send(json.dumps({"op": "append", "ref": 1, "events": [started("kept")]}))
            assert json.loads(await asyncio.wait_for(old.recv(), 30))["op"] == "ack"
            ssl_object = old.transport.get_extra_info("ssl_object")
            assert ssl_object.getpeercert(binary_form=True) == der_of(first)
    finally:
        stop_quietly(daemon)


async def test_a_bad_certificate_on_sighup_is_logged_and_the_old_one_goes_on_serving(
    tls_daemon: tuple[DaemonProcess, Path], tmp_path: Path
) -> None:
    daemon, cert = tls_daemon
    serving = der_of(cert)
    key = cert.with_name("key.pem")
    assert daemon.proc is not None
    _, other_key = self_signed(tmp_path / "other")
    original_cert, original_key = cert.read_bytes(), key.read_bytes()
    # A key that is not the certificate's, a certificate that is not PEM, a file gone.
    breakages = [
        (lambda: key.write_bytes(other_key.read_bytes()), str(key)),
        (lambda: cert.write_text("not a certificate\n"), str(cert)),
        (cert.unlink, str(cert)),
    ]
    for breakage, named in breakages:
        cert.write_bytes(original_cert)
        key.write_bytes(original_key)
        breakage()
        daemon.proc.send_signal(signal.SIGHUP)
        failed = await asyncio.to_thread(
            wait_for_log, daemon, "TLS certificate reload failed; the old certificate stays"
        )
        assert failed["level"] == "error" and named in failed["error"]
        assert await asyncio.to_thread(peer_certificate, daemon.port) == serving


def test_not_after_is_read_from_the_certificate_as_openssl_reads_it(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    shown = subprocess.run(
        ["openssl", "x509", "-enddate", "-noout", "-in", str(cert)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    expected = datetime.datetime.strptime(shown.removeprefix("notAfter="), "%b %d %H:%M:%S %Y %Z")
    assert not_after(cert.read_bytes()) == expected.isoformat() + "Z"
    assert not_after(b"no certificate here") is None
    assert not_after(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n") is None
