"""Web pages of other origins cannot use the daemon: Origin on upgrades and requests, Host on loopback."""

from __future__ import annotations

import asyncio
import http.client
import http.server
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.conftest import DaemonProcess
from tests.integration.test_web_console import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DEADLINE_MS,
    async_playwright,
    needs_browser,
)


def http_get(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_host="Host" in headers)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


async def upgrade(daemon: DaemonProcess, origin: str | None) -> int:
    """The status of a WebSocket upgrade with this Origin: 101 when it opens."""
    try:
        async with connect(daemon.url, origin=origin, open_timeout=30) as ws:  # type: ignore[arg-type]
            await ws.send(json.dumps({"op": "hello", "protocol": 1}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 30))["op"] == "welcome"
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


# -- plain clients with forged headers -------------------------------------------------------


async def test_upgrades_from_other_origins_are_refused(daemon: DaemonProcess) -> None:
    port = daemon.port
    assert await upgrade(daemon, None) == 101  # not a browser: no Origin
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"):
        assert await upgrade(daemon, origin) == 101, origin
    for origin in (
        "http://evil.example",
        f"http://evil.example:{port}",
        f"http://127.0.0.1:{port + 1}",
        "http://127.0.0.1",
        "null",
        "file://",
    ):
        assert await upgrade(daemon, origin) == 403, origin


async def test_http_requests_from_other_origins_are_refused(daemon: DaemonProcess) -> None:
    port = daemon.port
    assert http_get(port, "/api/runs", {"Origin": f"http://localhost:{port}"})[0] == 200
    status, body = http_get(port, "/api/runs", {"Origin": "http://evil.example"})
    assert status == 403 and json.loads(body)["error"] == "forbidden"


def test_a_host_other_than_loopback_names_is_refused_on_loopback(daemon: DaemonProcess) -> None:
    port = daemon.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "localhost", "LOCALHOST:1"):
        assert http_get(port, "/api/runs", {"Host": host})[0] == 200, host
    for host in (f"evil.example:{port}", "evil.example", "127.0.0.1.evil.example", "", "a@127.0.0.1"):
        status, body = http_get(port, "/api/runs", {"Host": host})
        assert status == 403, host
        assert "Host" in json.loads(body)["message"]
    assert http_get(port, "/ws", {"Host": "evil.example"})[0] == 403


async def test_configured_origins_and_hosts_are_accepted(db_path: Path) -> None:
    proc = DaemonProcess(
        db_path, "--allow-origin", "http://app.example:3000/", "--allow-host", "tracklog.internal"
    ).start()
    try:
        assert await upgrade(proc, "http://app.example:3000") == 101
        assert await upgrade(proc, f"http://tracklog.internal:{proc.port}") == 101
        assert await upgrade(proc, "http://app.example:3001") == 403
        assert http_get(proc.port, "/api/runs", {"Host": f"tracklog.internal:{proc.port}"})[0] == 200
        assert http_get(proc.port, "/api/runs", {"Host": "other.internal"})[0] == 403
    finally:
        proc.stop()


# -- a real browser ------------------------------------------------------------------------------

PAGE = """<!doctype html><html><body><script>
window.result = {};
const ws = new WebSocket("ws://127.0.0.1:%(port)d/ws");
ws.onopen = () => ws.send(JSON.stringify({op: "hello", protocol: 1}));
ws.onmessage = (e) => { window.result.ws = "read: " + e.data; };
ws.onclose = (e) => { window.result.ws = window.result.ws || ("closed: " + e.code); };
fetch("http://127.0.0.1:%(port)d/api/runs")
  .then((r) => r.text()).then((t) => { window.result.fetch = "read: " + t; },
                              (e) => { window.result.fetch = "refused: " + e; });
</script></body></html>"""


@pytest.fixture
def other_site(daemon: DaemonProcess) -> Iterator[str]:
    """A second local web server, on another port: the page of another origin."""
    page = (PAGE % {"port": daemon.port}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(30)


@pytest.fixture
async def rebinding_browser() -> AsyncIterator[object]:
    """Chromium resolving evil.test to 127.0.0.1, as DNS rebinding would make it."""
    assert async_playwright is not None
    async with async_playwright() as p:
        b = await p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[*CHROMIUM_ARGS, "--host-resolver-rules=MAP evil.test 127.0.0.1"],
            headless=True,
        )
        try:
            yield b
        finally:
            await b.close()


@needs_browser[0]
@needs_browser[1]
async def test_a_page_of_another_origin_cannot_use_the_daemon(
    daemon: DaemonProcess, other_site: str, rebinding_browser: object
) -> None:
    browser = rebinding_browser
    page = await browser.new_page()  # type: ignore[attr-defined]
    try:
        await page.goto(other_site, timeout=DEADLINE_MS)
        await page.wait_for_function("window.result.ws && window.result.fetch", timeout=DEADLINE_MS)
        result = await page.evaluate("window.result")
        assert result["ws"].startswith("closed: "), result  # refused: the upgrade got a 403
        assert result["fetch"].startswith("refused: "), result
        # DNS rebinding: the attacker's name, resolved to 127.0.0.1, on the daemon's port.
        response = await page.goto(f"http://evil.test:{daemon.port}/api/runs", timeout=DEADLINE_MS)
        assert response is not None and response.status == 403
        # The daemon's own console, addressed as localhost, still works.
        response = await page.goto(f"http://localhost:{daemon.port}/api/runs", timeout=DEADLINE_MS)
        assert response is not None and response.status == 200
    finally:
        await page.close()
