"""The web console at `GET /`: its files over HTTP, and the page itself in headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Client, DaemonProcess, open_client

try:
    from playwright.async_api import Browser, Page, async_playwright
except ImportError:  # the browser tests skip, the HTTP ones still run
    async_playwright = None  # type: ignore[assignment]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Generous: a cold Chromium start on a loaded CI machine takes seconds.
DEADLINE_MS = 30_000
#: Where the screenshot of the page goes, to look at after the run.
SCREENSHOT_DIR = Path(os.environ.get("TRACKLOG_SCREENSHOTS", "/tmp/tracklog-screenshots"))

needs_browser = [
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium (apt-get install chromium)"
    ),
    pytest.mark.skipif(
        async_playwright is None, reason="Playwright for Python is not installed (pip install playwright)"
    ),
]


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


# -- over HTTP ----------------------------------------------------------------------------


def test_the_console_files_are_served_with_their_content_types(daemon: DaemonProcess) -> None:
    status, headers, body = get(daemon.http + "/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert b'src="/static/app.js"' in body and b"__ASSET_QUERY__" not in body
    assert "connect-src 'self'" in headers["Content-Security-Policy"]
    status, headers, body = get(daemon.http + "/static/app.js")
    assert (status, headers["Content-Type"]) == (200, "text/javascript; charset=utf-8")
    assert b"subscribe" in body
    status, headers, _ = get(daemon.http + "/static/app.css")
    assert (status, headers["Content-Type"]) == (200, "text/css; charset=utf-8")


def test_an_unknown_or_escaping_static_path_is_not_found(daemon: DaemonProcess) -> None:
    for path in (
        "/static/nope.js",
        "/static/../http.py",
        "/static/%2e%2e/http.py",
        "/static/",
        "/static/.x.js",
    ):
        status, _, body = get(daemon.http + path)
        assert status == 404, path
        assert json.loads(body)["error"] == "not_found"


def test_with_tokens_the_console_takes_the_token_from_the_url_and_passes_it_to_its_assets(
    db_path: Path,
) -> None:
    proc = DaemonProcess(db_path, "--token", "s3cret").start()
    try:
        assert get(proc.http + "/")[0] == 401
        assert get(proc.http + "/?token=wrong")[0] == 401
        assert get(proc.http + "/static/app.js")[0] == 401
        status, _, body = get(proc.http + "/?token=s3cret")
        assert status == 200
        assert b'src="/static/app.js?token=s3cret"' in body
        assert get(proc.http + "/static/app.js?token=s3cret")[0] == 200
        assert get(proc.http + "/", {"Authorization": "Bearer s3cret"})[0] == 200
        # Only the console's own paths take the token from the URL.
        assert get(proc.http + "/api/runs?token=s3cret")[0] == 401
    finally:
        proc.stop()


# -- in a browser ---------------------------------------------------------------------------


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert async_playwright is not None
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


async def open_console(browser: Browser, url: str) -> Page:
    page = await browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(DEADLINE_MS)
    await page.goto(url)
    await page.wait_for_selector('#conn[data-state="live"]')
    page.errors = errors  # type: ignore[attr-defined]
    return page


def metrics(run: str, start: int, count: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "metrics",
            "run": run,
            "data": {"values": {"loss": 1.0 / (1 + i), "acc": i / (i + 5)}, "step": i},
        }
        for i in range(start, start + count)
    ]


async def points(page: Page, metric: str) -> int:
    return int(await page.get_attribute(f'.chart[data-metric="{metric}"]', "data-points") or 0)


async def wait_points(page: Page, metric: str, count: int) -> None:
    await page.wait_for_selector(f'.chart[data-metric="{metric}"][data-points="{count}"]')


async def non_blank(browser: Browser, png: bytes) -> tuple[int, int]:
    """(distinct colours, pixels not the background) of a PNG, decoded by the browser itself."""
    page = await browser.new_page()
    try:
        return tuple(  # type: ignore[return-value]
            await page.evaluate(
                """async (src) => {
                    const img = new Image(); img.src = src; await img.decode();
                    const c = document.createElement("canvas"); c.width = img.width; c.height = img.height;
                    const g = c.getContext("2d"); g.drawImage(img, 0, 0);
                    const d = g.getImageData(0, 0, c.width, c.height).data;
                    const colours = new Set(); let other = 0;
                    for (let i = 0; i < d.length; i += 4) {
                        const rgb = (d[i] << 16) | (d[i + 1] << 8) | d[i + 2];
                        colours.add(rgb);
                        if (rgb !== ((d[0] << 16) | (d[1] << 8) | d[2])) other++;
                    }
                    return [colours.size, other];
                }""",
                "data:image/png;base64," + base64.b64encode(png).decode(),
            )
        )
    finally:
        await page.close()


@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_browser, id="chromium")])
async def test_the_page_shows_a_run_as_it_starts_and_its_chart_grows_as_metrics_arrive(
    _: None, daemon: DaemonProcess, client: Client, browser: Browser
) -> None:
    page = await open_console(browser, daemon.http + "/")
    await client.append(
        [
            {
                "type": "run.started",
                "run": "r-web",
                "data": {"name": "web-run", "pipeline": "pipe", "config": {"lr": 0.01, "layers": 4}},
            }
        ]
    )
    row = await page.wait_for_selector('#runs tr[data-run="r-web"]')
    assert row is not None and "web-run" in await row.inner_text()

    await client.append(metrics("r-web", 0, 5))
    await page.wait_for_selector('#runs tr[data-run="r-web"] .metric')
    await page.click('#runs tr[data-run="r-web"]')  # rows are redrawn: click by selector
    await wait_points(page, "loss", 5)
    for start, count in ((5, 10), (15, 25)):
        await client.append(metrics("r-web", start, count))
        await wait_points(page, "loss", start + count)
    assert await points(page, "acc") == 40
    assert await page.get_attribute('.chart[data-metric="loss"]', "data-drawn") == "40"

    await client.append(
        [
            {"type": "item", "run": "r-web", "data": {"item": "ok-1"}},
            {"type": "item", "run": "r-web", "data": {"item": "bad-1", "status": "failed", "error": "boom"}},
            {"type": "artifact", "run": "r-web", "data": {"kind": "checkpoint", "path": "/ckpt/40.pt"}},
            {"type": "run.finished", "run": "r-web", "data": {"status": "failed", "error": "diverged"}},
        ]
    )
    await page.wait_for_selector('#run-status[data-status="failed"]')
    await page.wait_for_selector("#items tbody tr:nth-child(2)")
    assert await page.get_attribute("#items tbody tr:first-child", "data-status") == "failed"
    assert "/ckpt/40.pt" in await page.inner_text("#artifacts")
    assert '"lr": 0.01' in await page.inner_text("#config")

    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    png = await page.screenshot(path=str(SCREENSHOT_DIR / "web-console-run.png"), full_page=True)
    colours, other = await non_blank(browser, png)
    assert colours > 20 and other > 10_000, (colours, other)

    await page.click("#back")
    bad = await page.wait_for_selector('#runs tr.bad[data-run="r-web"]')
    assert bad is not None
    await page.screenshot(path=str(SCREENSHOT_DIR / "web-console-runs.png"), full_page=True)
    assert page.errors == []  # type: ignore[attr-defined]
    await page.close()


@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_browser, id="chromium")])
async def test_the_page_resumes_from_the_last_seq_it_saw_after_the_daemon_restarts(
    _: None, db_path: Path, browser: Browser
) -> None:
    proc = DaemonProcess(db_path).start()
    port = proc.port
    try:
        c, _welcome = await open_client(proc.url)
        await c.append(
            [{"type": "run.started", "run": "r-re", "data": {"name": "restart-run"}}, *metrics("r-re", 0, 10)]
        )
        page = await open_console(browser, proc.http + "/#run/r-re")
        await wait_points(page, "loss", 10)
        await c.ws.close()
        proc.stop()

        await page.wait_for_selector('#conn[data-state="reconnecting"]')
        proc = DaemonProcess(db_path, "--port", str(port)).start()
        c, _welcome = await open_client(proc.url)
        await c.append(metrics("r-re", 10, 7))
        await page.wait_for_selector('#conn[data-state="live"]')
        await wait_points(page, "loss", 17)
        await c.append(metrics("r-re", 17, 3))
        await wait_points(page, "loss", 20)
        assert await page.get_attribute("#head", "data-seq") == "21"
        assert page.errors == []  # type: ignore[attr-defined]
        await page.close()
        await c.ws.close()
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.stop()


@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_browser, id="chromium")])
async def test_with_tokens_the_page_from_a_token_url_says_hello_with_it_and_follows_runs(
    _: None, db_path: Path, browser: Browser
) -> None:
    proc = DaemonProcess(db_path, "--token", "s3cret").start()
    try:
        page = await open_console(browser, proc.http + "/?token=s3cret")
        c, welcome = await open_client(proc.url, token="s3cret")
        assert welcome["op"] == "welcome"
        await c.append([{"type": "run.started", "run": "r-tok", "data": {"name": "with-token"}}])
        await page.wait_for_selector('#runs tr[data-run="r-tok"]')
        assert page.errors == []  # type: ignore[attr-defined]
        await page.close()
        await c.ws.close()
    finally:
        proc.stop()
