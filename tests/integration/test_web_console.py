"""The web console at `GET /`: its files over HTTP, and the page itself in headless Chromium."""

from __future__ import annotations

import base64
import gzip
import hashlib
import itertools
import json
import os
import re
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
    assert b'src="/static/app.js?v=' in body and b"__ASSET_QUERY__" not in body
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
        assert re.search(rb'src="/static/app\.js\?v=[0-9a-f]{16}&token=s3cret"', body)
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


async def open_console(browser: Browser, url: str, width: int = 1200, color_scheme: str = "light") -> Page:
    page = await browser.new_page(
        viewport={"width": width, "height": 900},
        color_scheme=color_scheme,  # type: ignore[arg-type]
    )
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
    return int(await page.get_attribute(f'#charts .chart[data-metric="{metric}"]', "data-points") or 0)


async def wait_points(page: Page, metric: str, count: int) -> None:
    await page.wait_for_selector(f'#charts .chart[data-metric="{metric}"][data-points="{count}"]')


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
    # Live redraws are spread over frames (one chart a frame): wait for each chart, not one.
    await wait_points(page, "acc", 40)
    await page.wait_for_selector('.chart[data-metric="loss"][data-drawn="40"]')
    assert await points(page, "acc") == 40

    await client.append(
        [
            {"type": "item", "run": "r-web", "data": {"item": "ok-1"}},
            {"type": "item", "run": "r-web", "data": {"item": "bad-1", "status": "failed", "error": "boom"}},
            {"type": "artifact", "run": "r-web", "data": {"kind": "checkpoint", "path": "/ckpt/40.pt"}},
            {
                "type": "artifact",
                "run": "r-web",
                "data": {"kind": "plot", "path": "https://example.org/p.png"},
            },
            {
                "type": "artifact",
                "run": "r-web",
                "data": {"kind": "file", "path": "out/model.bin", "size": 3, "blob": "sha256:" + "ab" * 32},
            },
            {"type": "run.finished", "run": "r-web", "data": {"status": "failed", "error": "diverged"}},
        ]
    )
    await page.wait_for_selector('#run-status[data-status="failed"]')
    await page.wait_for_selector("#items tbody tr:nth-child(2)")
    assert await page.get_attribute("#items tbody tr:first-child", "data-status") == "failed"
    assert "/ckpt/40.pt" in await page.inner_text("#artifacts")
    # Stored at a web address: a download link; a local path is only shown.
    await page.wait_for_selector('#artifacts a[download][href="https://example.org/p.png"]')
    # Stored in the daemon's artifact store: a download from the daemon, named as the file.
    stored = '#artifacts a[download="model.bin"][href="/api/blobs/sha256%3A' + "ab" * 32 + '"]'
    await page.wait_for_selector(stored)
    assert await page.locator("#artifacts a").count() == 2
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


# -- the chart library and caching ----------------------------------------------------------


def test_the_chart_library_is_vendored_with_its_licence_and_served_from_the_daemon(
    daemon: DaemonProcess,
) -> None:
    static = Path(__file__).parents[2] / "daemon" / "static"
    assert "MIT License" in (static / "uPlot-LICENSE").read_text()
    _, _, page = get(daemon.http + "/")
    assert b'src="/static/uPlot-1.6.32.min.js?v=' in page and b"cdn" not in page.lower()
    status, headers, body = get(daemon.http + "/static/uPlot-1.6.32.min.js")
    assert (status, headers["Content-Type"]) == (200, "text/javascript; charset=utf-8")
    assert body.startswith(b"/*! https://github.com/leeoniya/uPlot (v1.6.32) */")


def test_assets_named_by_their_hash_are_immutable_others_are_revalidated_by_etag_and_gzipped(
    daemon: DaemonProcess,
) -> None:
    _, headers, page = get(daemon.http + "/")
    assert headers["Cache-Control"] == "no-store"  # the page names the current hashes
    match = re.search(rb'src="(/static/app\.js\?v=([0-9a-f]{16}))"', page)
    assert match is not None
    body = (Path(__file__).parents[2] / "daemon" / "static" / "app.js").read_bytes()
    assert match.group(2).decode() == hashlib.sha256(body).hexdigest()[:16]
    status, headers, served = get(daemon.http + match.group(1).decode())
    assert status == 200 and served == body
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    # Without the current hash: cached only with a check, which is a 304 while unchanged.
    status, headers, _ = get(daemon.http + "/static/app.js?v=0123456789abcdef")
    assert headers["Cache-Control"] == "no-cache"
    etag = headers["ETag"]
    status, headers, again = get(daemon.http + "/static/app.js", {"If-None-Match": etag})
    assert (status, again) == (304, b"")
    assert get(daemon.http + "/static/app.js", {"If-None-Match": '"other"'})[0] == 200
    # Compressed for a browser that takes gzip, with an ETag of its own.
    status, headers, packed = get(daemon.http + match.group(1).decode(), {"Accept-Encoding": "gzip, br"})
    assert status == 200 and headers["Content-Encoding"] == "gzip" and headers["Vary"] == "Accept-Encoding"
    assert gzip.decompress(packed) == body and len(packed) < len(body) / 2
    assert headers["ETag"] != etag
    status, headers, _ = get(daemon.http + "/static/app.js", {"Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in headers


# -- compare, filter, zoom, layout -------------------------------------------------------------


def run_events(
    run: str, name: str, config: dict[str, Any], points: int, scale: float = 1.0
) -> list[dict[str, Any]]:
    """A finished run with `points` steps of loss and acc (one epoch per 10 steps)."""
    return [
        {
            "type": "run.started",
            "run": run,
            "data": {"name": name, "pipeline": "train", "config": config, "tags": ["sweep"]},
        },
        *(
            {
                "type": "metrics",
                "run": run,
                "data": {
                    "values": {
                        "loss": scale / (1 + i) + 0.01 * ((i * 7919) % 13),
                        "acc": i / (i + 5 * scale),
                    },
                    "step": i,
                    "epoch": i // 10,
                },
            }
            for i in range(points)
        ),
        {"type": "run.finished", "run": run, "data": {"status": "completed"}},
    ]


async def plot_data(page: Page, pane: str, metric: str) -> list[dict[str, Any]]:
    """The traces a chart draws: name, opacity, meta, x and y of each."""
    return await page.evaluate(  # type: ignore[no-any-return]
        """([pane, metric]) => {
            const plot = document.querySelector(`#${pane} .chart[data-metric="${metric}"] .plot`);
            return (plot.traces || []).map((t) => ({name: t.name, meta: t.meta, opacity: t.opacity,
                                                     colour: t.colour, y: Array.from(t.y), x: Array.from(t.x),
                                                     ytype: plot.axes.y}));
        }""",
        [pane, metric],
    )


@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_browser, id="chromium")])
async def test_three_selected_runs_are_overlaid_smoothed_on_a_log_axis_and_the_view_survives_a_reload(
    _: None, daemon: DaemonProcess, client: Client, browser: Browser
) -> None:
    for i, lr in enumerate((0.1, 0.01, 0.001, 0.0001)):
        await client.append(
            run_events(f"r-{i}", f"lr-{lr}", {"lr": lr, "layers": 4, "opt": {"name": "adam"}}, 200, 1 + i)
        )
    page = await open_console(browser, daemon.http + "/")
    await page.wait_for_selector('#runs tr[data-run="r-3"]')
    for i in range(3):  # by keyboard for one, by click for the others
        if i == 0:
            await page.focus('#runs tr[data-run="r-0"]')
            await page.keyboard.press(" ")
        else:
            await page.click(f'#runs tr[data-run="r-{i}"] td.pick input')
        await page.wait_for_selector(f'#runs tr.selected[data-run="r-{i}"]')
    await page.click("#compare-selected")
    for metric in ("loss", "acc"):
        await page.wait_for_selector(
            f'#compare-charts .chart[data-metric="{metric}"][data-traces="3"][data-sharp="1"]'
        )
        traces = await plot_data(page, "compare-pane", metric)
        assert [t["name"] for t in traces] == ["lr-0.1", "lr-0.01", "lr-0.001"]
        assert len({t["colour"] for t in traces}) == 3 and all(len(t["y"]) == 200 for t in traces)
    assert await page.locator("#legend tbody tr").count() == 3
    # Hovering reads out every run's value at that x.
    area = await page.wait_for_selector('#compare-charts .chart[data-metric="loss"] .u-over')
    assert area is not None
    box = await area.bounding_box()
    assert box is not None
    await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    await page.wait_for_function(
        """() => { const r = document.querySelector('#compare-charts .chart[data-metric="loss"] .readout');
                   const t = r && !r.hidden ? r.textContent : '';
                   return ['lr-0.1', 'lr-0.01', 'lr-0.001'].every((n) => t.includes(n)); }"""
    )
    # The config diff holds only the key that differs.
    assert await page.get_attribute("#config-diff", "data-keys") == "1"
    assert "lr" in await page.inner_text("#config-diff tr.differs")
    assert await page.get_attribute("#parcoords", "data-axes") == "2"
    raw = (await plot_data(page, "compare-pane", "loss"))[0]["y"]

    # Smoothing: a smoothed line over a faint raw one, and the drawn values change.
    await page.locator("#smooth").fill("0.9")
    await page.wait_for_selector('#compare-charts .chart[data-metric="loss"][data-smooth="0.9"]')
    traces = await plot_data(page, "compare-pane", "loss")
    assert [t["meta"] for t in traces[:2]] == ["raw", "smoothed"] and len(traces) == 6
    assert traces[0]["opacity"] < 0.5 and traces[0]["y"] == raw
    assert traces[1]["y"] != raw and traces[1]["y"][0] == pytest.approx(raw[0])
    # A smoothed line varies less than the raw one.
    jumps = lambda ys: sum(abs(b - a) for a, b in itertools.pairwise(ys))  # noqa: E731
    assert jumps(traces[1]["y"]) < jumps(raw) / 2

    await page.click("#log")
    await page.wait_for_selector('#compare-charts .chart[data-metric="loss"][data-ytype="log"]')
    assert (await plot_data(page, "compare-pane", "loss"))[0]["ytype"] == "log"
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    png = await page.screenshot(path=str(SCREENSHOT_DIR / "web-console-compare.png"), full_page=True)
    colours, other = await non_blank(browser, png)
    assert colours > 50 and other > 50_000, (colours, other)

    # The URL holds the view: a reload shows the same comparison.
    assert "sel=" in page.url and "smooth=0.9" in page.url and "log=1" in page.url
    await page.reload()
    await page.wait_for_selector(
        '#compare-charts .chart[data-metric="loss"][data-traces="3"][data-sharp="1"]'
    )
    assert await page.is_checked("#log")
    assert await page.input_value("#smooth") == "0.9"
    traces = await plot_data(page, "compare-pane", "loss")
    assert len(traces) == 6 and traces[0]["ytype"] == "log"

    # Live: points logged to a compared run extend its line.
    await client.append(
        [
            {"type": "metrics", "run": "r-0", "data": {"values": {"loss": 0.5}, "step": 200 + i}}
            for i in range(10)
        ]
    )
    await page.wait_for_function(
        """() => document.querySelector('#compare-charts .chart[data-metric="loss"] .plot').traces
                   .some((t) => t.name === 'lr-0.1' && t.x.length === 210)"""
    )
    # x by wall time: a date axis.
    await page.select_option("#xaxis", "time")
    await page.wait_for_selector('#compare-charts .chart[data-metric="loss"][data-xaxis="time"]')
    assert (
        await page.evaluate(
            """() => document.querySelector('#compare-charts .chart[data-metric="loss"] .plot')
                       .axes.x"""
        )
        == "date"
    )
    # Grouped by a config key: each group's mean with a min-max band (by step: the runs ran
    # one after another, so their times do not overlap).
    await page.select_option("#xaxis", "step")
    await page.wait_for_selector('#compare-charts .chart[data-metric="loss"][data-xaxis="step"]')
    await page.goto(page.url + "&group=c%3Alayers")
    await page.wait_for_function(
        """() => (document.querySelector('#compare-charts .chart[data-metric="acc"] .plot').traces || [])
                   .some((t) => t.meta === 'mean' && t.name.includes('(mean of 3)'))"""
    )
    traces = await plot_data(page, "compare-pane", "acc")
    assert len(traces) == 3 and traces[2]["meta"] == "mean"
    band_low, band_high, mean = traces[0]["y"], traces[1]["y"], traces[2]["y"]
    assert all(lo <= m <= hi for lo, m, hi in zip(band_low, mean, band_high, strict=True))
    assert any(hi - lo > 0.01 for lo, hi in zip(band_low, band_high, strict=True))
    await page.screenshot(path=str(SCREENSHOT_DIR / "web-console-compare-groups.png"), full_page=True)
    assert page.errors == []  # type: ignore[attr-defined]
    await page.close()


@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_browser, id="chromium")])
async def test_the_filter_box_narrows_the_table_and_shows_where_a_bad_filter_goes_wrong(
    _: None, daemon: DaemonProcess, client: Client, browser: Browser
) -> None:
    for i, (lr, name) in enumerate(((0.1, "delta"), (0.01, "alpha"), (0.001, "charlie"), (0.0001, "bravo"))):
        await client.append(
            run_events(f"r-{i}", name, {"lr": lr, "size": "big" if i % 2 else "small"}, 20, 1 + i)
        )
    await client.append([{"type": "run.updated", "run": "r-2", "data": {"notes": "the zebra run"}}])
    page = await open_console(browser, daemon.http + "/")
    await page.wait_for_selector('#runs[data-rows="4"]')

    await page.fill("#filter", "config.lr < 0.005 and status = 'completed'")
    await page.press("#filter", "Enter")
    await page.wait_for_selector('#runs[data-rows="2"]')
    shown = await page.eval_on_selector_all(
        "#runs tbody tr[data-run]", "rows => rows.map(r => r.dataset.run)"
    )
    assert sorted(shown) == ["r-2", "r-3"]
    assert "filter=" in page.url

    bad = "config.lr < 0.005 and statuz = 'x'"
    await page.fill("#filter", bad)
    await page.press("#filter", "Enter")
    box = await page.wait_for_selector("#filter-error:not([hidden])")
    assert box is not None
    position = int(await box.get_attribute("data-position") or -1)
    assert position == bad.index("statuz")
    assert await page.inner_text("#filter-error mark") == "s"
    assert await page.get_attribute("#filter", "aria-invalid") == "true"

    # Full-text search, then sorting and grouping.
    await page.fill("#filter", "")
    await page.press("#filter", "Enter")
    await page.wait_for_selector("#filter-error", state="hidden")
    await page.fill("#search", "zebra")
    await page.press("#search", "Enter")
    await page.wait_for_selector('#runs[data-rows="1"] tr[data-run="r-2"]')
    await page.fill("#search", "")
    await page.press("#search", "Enter")
    await page.wait_for_selector('#runs[data-rows="4"]')
    await page.click('#runs th[data-col="name"] button')
    await page.wait_for_function(
        "() => [...document.querySelectorAll('#runs tbody tr[data-run]')].map(r => r.dataset.run).join()"
        " === 'r-1,r-3,r-2,r-0'"
    )
    await page.select_option("#group", "c:size")
    await page.wait_for_selector('#runs tr.group[data-group="big"]')
    assert await page.locator("#runs tr.group").count() == 2
    # A column of a config key, chosen by the user, and kept by a reload.
    await page.click("#columns-box summary")
    await page.check('#columns input[data-col="c:lr"]')
    await page.wait_for_selector('#runs td[data-col="c:lr"]')
    await page.reload()
    await page.wait_for_selector('#runs td[data-col="c:lr"]')
    assert await page.locator("#runs tr.group").count() == 2
    assert page.errors == []  # type: ignore[attr-defined]
    await page.close()


@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_browser, id="chromium")])
async def test_the_runs_table_sorts_by_a_metric_minimum_and_a_config_key_and_keeps_the_minimum_live(
    _: None, daemon: DaemonProcess, client: Client, browser: Browser
) -> None:
    lowest = {}
    for i, lr in enumerate((0.1, 0.001, 0.01)):
        events = run_events(f"r-{i}", f"run-{i}", {"lr": lr}, 30, 1 + i)
        await client.append(events)
        lowest[f"r-{i}"] = min(e["data"]["values"]["loss"] for e in events if e["type"] == "metrics")
    by_min = sorted(lowest, key=lowest.__getitem__)
    rows = "() => [...document.querySelectorAll('#runs tbody tr[data-run]')].map(r => r.dataset.run).join()"
    page = await open_console(browser, daemon.http + "/#runs?cols=name,mn:loss,mx:acc,c:lr&sort=mn:loss:asc")
    await page.wait_for_function(f"{rows} === {','.join(by_min)!r}")
    cell = f'#runs tr[data-run="{by_min[0]}"] td[data-col="mn:loss"]'
    # The rows may be in order before the metric summaries fill their cells: wait for the text.
    await page.wait_for_function(f"() => document.querySelector({cell!r})?.textContent.trim() !== ''")
    assert float(await page.inner_text(cell)) == pytest.approx(lowest[by_min[0]], rel=1e-3)
    assert await page.inner_text('#runs th[data-col="mn:loss"]') == "loss min \u25b2"
    # A new lowest value of the last run moves it to the top, pushed live.
    last = by_min[-1]
    await client.append([{"type": "metrics", "run": last, "data": {"values": {"loss": -1.0}, "step": 99}}])
    await page.wait_for_function(f"{rows} === {','.join([last, *by_min[:-1]])!r}")
    assert await page.inner_text(f'#runs tr[data-run="{last}"] td[data-col="mn:loss"]') == "-1"
    # Sorting by a config key (a column id with a colon in it), highest first on a second click.
    await page.click('#runs th[data-col="c:lr"] button')
    await page.wait_for_function(f"{rows} === 'r-1,r-2,r-0'")
    await page.click('#runs th[data-col="c:lr"] button')
    await page.wait_for_function(f"{rows} === 'r-0,r-2,r-1'")
    assert "sort=c%3Alr%3Adesc" in page.url
    await page.close()


@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_browser, id="chromium")])
async def test_zooming_in_fetches_the_finer_points_of_that_range(
    _: None, daemon: DaemonProcess, client: Client, browser: Browser
) -> None:
    total = 50_000
    await client.append([{"type": "run.started", "run": "r-long", "data": {"name": "long"}}])
    for start in range(0, total, 10_000):
        await client.append(
            [
                {
                    "type": "metrics",
                    "run": "r-long",
                    "data": {"values": {"loss": ((i * 7919) % 1000) / 1000}, "step": i},
                }
                for i in range(start, start + 10_000)
            ]
        )
    page = await open_console(browser, daemon.http + "/#run/r-long?gc=1")
    chart = '#charts .chart[data-metric="loss"]'
    await page.wait_for_selector(chart + '[data-sharp="1"]')
    held = int(await page.get_attribute(chart, "data-points") or 0)
    assert held <= 1000

    def in_range(traces: list[dict[str, Any]], lo: int, hi: int) -> int:
        return sum(1 for x in traces[0]["x"] if lo <= x <= hi)

    assert in_range(await plot_data(page, "run-pane", "loss"), 20_000, 20_400) < 20
    # A drag across a sliver of the plot zooms in on it, as a person would.
    area = await page.wait_for_selector(chart + " .u-over")
    assert area is not None
    b = await area.bounding_box()
    assert b is not None
    await page.mouse.move(b["x"] + b["width"] * 0.40, b["y"] + b["height"] / 2)
    await page.mouse.down()
    await page.mouse.move(b["x"] + b["width"] * 0.405, b["y"] + b["height"] / 2, steps=4)
    await page.mouse.move(b["x"] + b["width"] * 0.41, b["y"] + b["height"] / 2, steps=4)
    await page.mouse.up()
    await page.wait_for_selector(chart + '[data-fetches="1"]')
    lo, hi = await page.evaluate(f"() => document.querySelector('{chart} .plot').axes.range.map(Math.round)")
    assert 0 < lo < hi < total and hi - lo < 2000
    traces = await plot_data(page, "run-pane", "loss")
    # The zoomed range is drawn from the daemon's finer points (every step, or a 1,000-point
    # reduction of them), where the overview held a few of them.
    drawn = in_range(traces, lo + 1, hi - 1)
    assert drawn == hi - lo - 1 or drawn >= 900, (drawn, lo, hi)
    # The arrow keys pan the zoomed chart (a fifth of its range), fetching the finer points there.
    await page.focus(chart + " .plot")
    await page.keyboard.press("ArrowRight")
    await page.wait_for_selector(chart + '[data-fetches="2"]')
    lo2, hi2 = await page.evaluate(
        f"() => document.querySelector('{chart} .plot').axes.range.map(Math.round)"
    )
    assert abs((lo2 - lo) - (hi - lo) / 5) <= 2 and abs((hi2 - lo2) - (hi - lo)) <= 2
    drawn = in_range(await plot_data(page, "run-pane", "loss"), lo2 + 1, hi2 - 1)
    assert drawn == hi2 - lo2 - 1 or drawn >= 900, (drawn, lo2, hi2)
    # A double click shows the whole series again; + zooms in by keyboard; the button resets.
    await page.mouse.dblclick(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2)
    await page.wait_for_selector(chart + '[data-zoomed="0"]')
    lo3, hi3 = await page.evaluate(f"() => document.querySelector('{chart} .plot').axes.range")
    assert lo3 <= 0 and hi3 >= total - 1
    await page.focus(chart + " .plot")
    await page.keyboard.press("+")
    await page.wait_for_selector(chart + '[data-fetches="3"][data-zoomed="1"]')
    await page.click("#reset-zoom")
    await page.wait_for_selector(chart + '[data-zoomed="0"]')
    # The grid: two columns halve the chart, and the plot follows its box.
    wide = await page.evaluate(
        f"() => document.querySelector('{chart} .uplot').getBoundingClientRect().width"
    )
    await page.select_option("#grid-cols", "2")
    await page.wait_for_function(
        f"() => document.querySelector('{chart} .uplot').getBoundingClientRect().width < {wide} * 0.6"
    )
    assert "gc=2" not in page.url and "gc=1" not in page.url  # two columns is the default
    assert page.errors == []  # type: ignore[attr-defined]
    await page.close()


@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_browser, id="chromium")])
async def test_at_420_pixels_in_the_dark_nothing_is_clipped_and_a_new_run_appears_live(
    _: None, daemon: DaemonProcess, client: Client, browser: Browser
) -> None:
    await client.append(run_events("r-a", "a-run-with-a-rather-long-name", {"lr": 0.1}, 30))
    page = await open_console(browser, daemon.http + "/", width=420, color_scheme="dark")
    await page.wait_for_selector('#runs tr[data-run="r-a"]')
    assert await page.evaluate("() => document.documentElement.scrollWidth") <= 420
    background = await page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(20, 24, 29)"
    await page.click("#theme")  # auto -> light, whatever the system says
    await page.wait_for_function(
        "() => getComputedStyle(document.body).backgroundColor === 'rgb(246, 247, 249)'"
    )
    await page.click("#theme")  # light -> dark
    await page.wait_for_function(
        "() => getComputedStyle(document.body).backgroundColor === 'rgb(20, 24, 29)'"
    )
    # A run started while the page is open appears, and its chart grows.
    await client.append([{"type": "run.started", "run": "r-b", "data": {"name": "b"}}, *metrics("r-b", 0, 5)])
    await page.wait_for_selector('#runs tr[data-run="r-b"]')
    await page.focus('#runs tr[data-run="r-b"]')
    await page.keyboard.press("Enter")
    await wait_points(page, "loss", 5)
    await client.append(metrics("r-b", 5, 20))
    await wait_points(page, "loss", 25)
    await client.append([{"type": "run.finished", "run": "r-b", "data": {"status": "lost"}}])
    await page.wait_for_selector('#run-status[data-status="lost"]')
    assert await page.evaluate("() => document.documentElement.scrollWidth") <= 420
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOT_DIR / "web-console-420-dark.png"), full_page=True)
    await page.click("#back")
    await page.wait_for_selector('#runs tr.bad[data-run="r-b"]')
    await page.screenshot(path=str(SCREENSHOT_DIR / "web-console-420-dark-runs.png"), full_page=True)
    assert page.errors == []  # type: ignore[attr-defined]
    await page.close()


# -- the item queries the run view uses ---------------------------------------------------


def items_of(run: str) -> list[dict[str, Any]]:
    return [
        {"type": "run.started", "run": run, "data": {"name": "items"}},
        *(
            {
                "type": "item",
                "run": run,
                "data": {
                    "item": f"i-{i}",
                    "stage": "translate" if i % 2 else "score",
                    "model": "small" if i % 3 else "big",
                    "backend": "ollama",
                    "status": "failed" if i % 5 == 0 else "ok",
                    "duration": 0.5 + i,
                    **({"error": "timeout"} if i % 5 == 0 else {}),
                },
            }
            for i in range(10)
        ),
    ]


async def test_items_are_filtered_by_model_and_backend_and_counted_by_facet(client: Client) -> None:
    await client.append(items_of("r-it"))
    reply = await client.query("items", run="r-it", model="big", backend="ollama")
    assert reply["total"] == 4 and {r["model"] for r in reply["rows"]} == {"big"}
    assert (await client.query("items", run="r-it", backend="nope"))["total"] == 0
    facets = (await client.query("item_facets", run="r-it"))["rows"]
    stage = {f["value"]: f for f in facets if f["field"] == "stage"}
    assert stage["translate"]["count"] == 5 and stage["translate"]["failed"] == 1  # i = 5
    assert stage["score"]["failed"] == 1 and stage["score"]["mean"] == pytest.approx(4.5)  # 0, 2, .. 8
    assert {f["value"]: f["count"] for f in facets if f["field"] == "model"} == {"big": 4, "small": 6}
    missing = await client.query("item_facets", run="r-none")
    assert missing["op"] == "error" and missing["code"] == "not_found"


@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_browser, id="chromium")])
async def test_the_run_view_filters_items_by_stage_and_model_with_a_per_stage_summary(
    _: None, daemon: DaemonProcess, client: Client, browser: Browser
) -> None:
    await client.append(items_of("r-it"))
    page = await open_console(browser, daemon.http + "/#run/r-it")
    await page.wait_for_selector("#items tbody tr:nth-child(10)")
    statuses = await page.eval_on_selector_all("#items tbody tr", "rows => rows.map(r => r.dataset.status)")
    assert statuses[:2] == ["failed", "failed"] and set(statuses[2:]) == {"ok"}  # failures first
    await page.wait_for_selector("#stage-summary tbody tr:nth-child(2)")
    summary = await page.inner_text("#stage-summary")
    assert "translate" in summary and "score" in summary
    await page.wait_for_selector('#item-model option[value="big"]', state="attached")
    await page.select_option("#item-model", "big")
    await page.wait_for_function("() => document.querySelectorAll('#items tbody tr').length === 4")
    await page.select_option("#item-stage", "translate")
    await page.wait_for_function("() => document.querySelectorAll('#items tbody tr').length === 2")
    # A new item that matches the filters appears live; one that does not, does not.
    await client.append(
        [
            {
                "type": "item",
                "run": "r-it",
                "data": {"item": "new-big", "stage": "translate", "model": "big"},
            },
            {
                "type": "item",
                "run": "r-it",
                "data": {"item": "new-small", "stage": "translate", "model": "small"},
            },
        ]
    )
    await page.wait_for_function("() => document.querySelectorAll('#items tbody tr').length === 3")
    assert "new-big" in await page.inner_text("#items") and "new-small" not in await page.inner_text("#items")
    assert page.errors == []  # type: ignore[attr-defined]
    await page.close()


@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_browser, id="chromium")])
async def test_a_chart_out_of_sight_skips_live_redraws_and_catches_up_when_scrolled_to(
    _: None, daemon: DaemonProcess, client: Client, browser: Browser
) -> None:
    names = [f"m{i:02d}" for i in range(10)]

    def points(start: int, count: int) -> list[dict[str, Any]]:
        return [
            {"type": "metrics", "run": "r-many", "data": {"values": dict.fromkeys(names, i * 0.5), "step": i}}
            for i in range(start, start + count)
        ]

    await client.append([{"type": "run.started", "run": "r-many", "data": {"name": "many"}}, *points(0, 5)])
    page = await open_console(browser, daemon.http + "/#run/r-many?gc=1")
    first, last = '#charts .chart[data-metric="m00"]', '#charts .chart[data-metric="m09"]'
    await page.wait_for_selector(first + '[data-points="5"][data-draws]')
    await page.wait_for_function(f"() => document.querySelector('{last}').hiddenFromView === true")
    draws = await page.get_attribute(last, "data-draws")
    await client.append(points(5, 10))
    await page.wait_for_selector(first + '[data-points="15"]')
    await page.wait_for_function(f"() => document.querySelector('{last}').stale === true")
    assert await page.get_attribute(last, "data-draws") == draws  # not redrawn while out of sight
    await page.locator(last).scroll_into_view_if_needed()
    await page.wait_for_selector(last + '[data-points="15"]')
    assert page.errors == []  # type: ignore[attr-defined]
    await page.close()
