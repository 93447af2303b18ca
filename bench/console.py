"""The web console in headless Chromium: first full paint of a big comparison, and frame
times while runs stream live.

    python bench/console.py [--runs 20] [--points 100000] [--rate 100] [--seconds 10] [--repeat 3]
                            [--table-runs 10000]

1. A database of `runs` runs x 3 metrics x `points` points each is written through the
   daemon's own append path (SqliteEventLog), then served by a daemon on loopback.
2. First full paint: Chromium opens the compare view of all the runs by URL; the time is
   from navigation start to the animation frame in which every chart has been drawn with
   every run (the page's own `performance.now()`, recorded by app.js). The first load is
   a first visit (nothing in the browser's cache) to a daemon that has answered the same
   queries once before; the repeats reload the page (scripts from the browser's cache).
3. Streaming: the runs stream live at `rate` points per second each (a 3-metric event
   per point, appended every 100 ms) while the compare view of the runs is open. Reported:
   the console's script time per animation frame (drawing plus message handling, as
   app.js measures it), the interval between animation frames (which includes the
   browser's own style, layout and paint), and from a Chromium trace the renderer main
   thread's CPU time and wall time per frame (all its work: script, style, layout, paint,
   commit; CPU time leaves out waits for a core, the bulk of a slow frame on a loaded machine).
4. The runs table: `table-runs` runs (their config, a tag, two metrics); the time from
   navigation to the table of every run, and to sort it by name and redraw it.
Needs /usr/bin/chromium and Playwright (the dev extra).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).parent))
from _common import Conn, LogBuilder, percentile, served_database
from _daemon import machine

from tracklog.protocol.events import (
    Metrics,
    MetricsData,
    RunFinished,
    RunFinishedData,
    RunStarted,
    RunStartedData,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
]
METRICS = ("loss", "acc", "lr")


def build(path: Path, runs: int, points: int) -> None:
    """`runs` runs, each with `points` steps of 3 metrics, written as the daemon writes appends."""
    ts = 1_700_000_000.0
    with LogBuilder(path) as log:
        for r in range(runs):
            _add_run(log.add, r, runs, points, ts)
    print(
        f"built {runs} runs x {len(METRICS)} metrics x {points:,} points"
        f" ({path.stat().st_size / 1e6:.0f} MB) in {log.seconds:.0f} s"
    )


def _add_run(add: Callable[[Any], None], r: int, runs: int, points: int, ts: float) -> None:
    """Run number `r` of `build`: its start and its `points` steps."""
    run = f"run-{r:02d}"
    add(
        RunStarted(
            run=run,
            ts=ts,
            data=RunStartedData(
                name=f"sweep-{r:02d}",
                pipeline="train",
                config={"lr": 10 ** -(1 + r % 4), "batch": 16 << (r % 3), "seed": r},
            ),
        )
    )
    base = 0.5 + r / runs
    for step in range(points):
        add(
            Metrics(
                run=run,
                ts=ts + step,
                data=MetricsData(
                    values={
                        "loss": base / (1 + step / 1000) + 0.02 * math.sin(step / 37 + r),
                        "acc": 1 - base / (2 + step / 500),
                        "lr": 0.1 / (1 + step / 10_000),
                    },
                    step=step,
                    epoch=step // 1000,
                ),
            )
        )


def build_many(path: Path, runs: int) -> None:
    """`runs` finished runs with a config, a tag and two metric values each (the runs table's load)."""
    ts = 1_700_000_000.0
    with LogBuilder(path, group=9_000) as log:  # 3 events a run: a group holds whole runs
        for r in range(runs):
            run = f"run-{r:05d}"
            log.add(
                RunStarted(
                    run=run,
                    ts=ts + r,
                    data=RunStartedData(
                        name=f"run {r}",
                        pipeline="train",
                        config={
                            "lr": 10 ** -(1 + r % 3),
                            "batch": 16 << (r % 2),
                            "model": {"depth": 2 << (r % 3)},
                        },
                        tags=["a" if r % 2 else "b"],
                    ),
                )
            )
            log.add(
                Metrics(run=run, ts=ts + r, data=MetricsData(values={"loss": 1 / (1 + r), "acc": r / runs}))
            )
            log.add(RunFinished(run=run, ts=ts + r + 1, data=RunFinishedData(status="completed")))


async def measure_table(port: int, runs: int) -> None:
    """Time to a table of every run, and to sort it by name and redraw it."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        await page.goto(f"http://127.0.0.1:{port}/")
        await page.wait_for_selector(f'#runs[data-rows="{runs}"]')
        await page.reload()
        await page.wait_for_selector(f'#runs[data-rows="{runs}"]')
        marks = await page.evaluate("() => window.__tracklogPerf.marks")
        shown = await page.evaluate("() => performance.now()")
        sort = await page.evaluate(
            """async () => { const t0 = performance.now();
                document.querySelector('#runs th[data-col="name"] button').click();
                await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
                return performance.now() - t0; }"""
        )
        print(
            f"runs table of {runs:,} runs (reloaded): every run loaded at {marks['runs']:.0f} ms,"
            f" table shown by {shown:.0f} ms; sort by name and redraw {sort:.0f} ms"
        )
        await browser.close()


def compare_url(port: int, runs: int) -> str:
    sel = ",".join(f"run-{r:02d}" for r in range(runs))
    return f"http://127.0.0.1:{port}/#compare?sel={sel}"


async def warm_daemon(port: int, runs: int) -> None:
    """Ask the daemon once what the page will ask (the runs, each run's series), as a daemon
    that has been running would have: the first visit then measures the browser, not the
    daemon's first reads after its start."""
    async with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
        await ws.send(json.dumps({"op": "hello", "protocol": 1, "client": "bench-console"}))
        await ws.recv()
        asks = [{"op": "query", "q": "runs", "limit": 1000}] + [
            {"op": "query", "q": "metrics", "run": f"run-{r:02d}", "max_points": points}
            for points in (100, 1000)
            for r in range(runs)
        ]
        for ask in asks:
            await ws.send(json.dumps(ask))
            await ws.recv()


async def first_paint(page: Any, url: str, reload: bool) -> tuple[float, float]:
    if reload:
        await page.reload()
    else:
        await page.goto(url)
    await page.wait_for_function("() => window.__tracklogPerf && window.__tracklogPerf.sharpPaint !== null")
    marks = await page.evaluate("() => window.__tracklogPerf.marks")
    draws = await page.evaluate("() => window.__tracklogPerf.drawMs")
    print(
        "    (scripts parsed "
        + ", ".join(f"{k} {v:.0f}" for k, v in marks.items())
        + f" ms; chart draws {', '.join(f'{d:.0f}' for d in draws[:12])} ms)"
    )
    return tuple(
        await page.evaluate("() => [window.__tracklogPerf.fullPaint, window.__tracklogPerf.sharpPaint]")
    )


async def stream(url: str, runs: int, rate: int, seconds: float, start_step: int) -> int:
    """Append `rate` points per second per run, in appends every 100 ms; returns events sent."""
    encode = msgspec.msgpack.encode
    sent = 0
    conn = await Conn.open(url, "bench-console")
    ws = conn.ws
    async with ws:
        per_tick = max(1, rate // 10)
        step = start_step
        began = time.perf_counter()
        tick = 0
        while time.perf_counter() - began < seconds:
            events = [
                {
                    "type": "metrics",
                    "run": f"run-{r:02d}",
                    "data": {
                        "values": {"loss": 0.3 + 0.01 * math.sin(s / 5 + r), "acc": 0.9, "lr": 0.05},
                        "step": s,
                    },
                }
                for s in range(step, step + per_tick)
                for r in range(runs)
            ]
            step += per_tick
            tick += 1
            await ws.send(encode({"op": "append", "ref": tick, "events": events}))
            await ws.recv()
            sent += len(events)
            await asyncio.sleep(max(0.0, began + tick * 0.1 - time.perf_counter()))
    return sent


def main_thread_per_frame(trace: Path) -> tuple[list[float], list[float]]:
    """From a Chromium trace: the renderer main thread's CPU time and wall time per frame.

    All of its work is counted (script, style, layout, paint, commit), from one animation
    frame to the next. CPU time (the trace's `tdur`) leaves out the time the thread waited
    for a core, which on a loaded machine is most of the wall time of a long frame.
    """
    events = json.loads(trace.read_text())
    events = events["traceEvents"] if isinstance(events, dict) else events
    frames_of = Counter((e.get("pid"), e.get("tid")) for e in events if e.get("name") == "FireAnimationFrame")
    if not frames_of:
        return [], []
    main = frames_of.most_common(1)[0][0]
    mine = [e for e in events if (e.get("pid"), e.get("tid")) == main and e.get("ph") == "X"]
    # A frame runs every animation-frame callback (the page's and this script's): the first
    # of a burst less than 4 ms apart starts the frame.
    starts: list[float] = []
    for ts in sorted(e["ts"] for e in mine if e["name"] == "FireAnimationFrame"):
        if not starts or ts - starts[-1] >= 4000:
            starts.append(ts)
    cpu = [0.0] * len(starts)
    wall = [0.0] * len(starts)
    for e in mine:
        if e["name"] != "RunTask":
            continue
        at = bisect.bisect_right(starts, e["ts"]) - 1
        if at >= 0:
            cpu[at] += e.get("tdur", 0) / 1000
            wall[at] += e.get("dur", 0) / 1000
    return cpu[:-1], wall[:-1]  # the last frame is cut by the trace's end


def quantiles(values: list[float]) -> str:
    if not values:
        return "no frames"
    return (
        f"median {statistics.median(values):.1f} ms, p95 {percentile(values, 0.95):.1f} ms,"
        f" p99 {percentile(values, 0.99):.1f} ms, max {max(values):.1f} ms ({len(values)} frames)"
    )


async def measure(port: int, runs: int, points: int, rate: int, seconds: float, repeat: int) -> None:
    from playwright.async_api import async_playwright

    url = compare_url(port, runs)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        started = time.perf_counter()
        await warm_daemon(port, runs)
        print(f"daemon warmed (each query asked once) in {time.perf_counter() - started:.1f} s")
        paints = [await first_paint(page, url, reload=False)]
        for _ in range(repeat):
            paints.append(await first_paint(page, url, reload=True))
        charts = await page.locator("#compare-charts .chart").count()
        traces = await page.eval_on_selector_all(
            "#compare-charts .chart", "bs => bs.map(b => Number(b.dataset.traces))"
        )
        print(
            f"first full paint, {runs} runs x {charts} charts ({traces} lines each),"
            f" {points:,} points a series:"
        )
        for label, which in (
            ("every chart drawn (first answers)", 0),
            ("every chart sharp (1,000 points a line)", 1),
        ):
            warm = [p[which] for p in paints[1:]]
            print(
                f"  {label}: first visit {paints[0][which]:.0f} ms;"
                f" reloads {', '.join(f'{w:.0f}' for w in warm)} ms (median {statistics.median(warm):.0f} ms)"
            )

        # Streaming: frame intervals from a rAF loop in the page, and app.js's own frame work.
        await page.evaluate(
            """() => {
                window.__intervals = []; let last = performance.now();
                window.__tracklogPerf.frameWork.length = 0;
                window.__tracklogPerf.drawMs.length = 0;
                window.__tracklogPerf.messageTotal = 0;
                const loop = (t) => { window.__intervals.push(t - last); last = t;
                                      if (!window.__stopLoop) requestAnimationFrame(loop); };
                requestAnimationFrame(loop);
            }"""
        )
        draws_before = await page.eval_on_selector_all(
            "#compare-charts .chart", "bs => bs.reduce((n, b) => n + Number(b.dataset.draws), 0)"
        )
        trace = Path(tempfile.mkdtemp()) / "trace.json"
        categories = ["devtools.timeline", "disabled-by-default-devtools.timeline"]
        await browser.start_tracing(page=page, path=str(trace), categories=categories)
        sent = await stream(f"ws://127.0.0.1:{port}/ws", runs, rate, seconds, points)
        await browser.stop_tracing()
        await page.wait_for_function(
            "() => [...document.querySelectorAll('#compare-charts .chart')].every(b => "
            "Number(b.dataset.points) > 0) && Number(document.getElementById('head').dataset.seq) > 0"
        )
        await page.evaluate("() => { window.__stopLoop = true; }")
        intervals = await page.evaluate("() => window.__intervals.slice(1)")
        work = await page.evaluate("() => window.__tracklogPerf.frameWork.slice()")
        draws = (
            await page.eval_on_selector_all(
                "#compare-charts .chart", "bs => bs.reduce((n, b) => n + Number(b.dataset.draws), 0)"
            )
            - draws_before
        )
        print(
            f"streaming {runs} runs x {rate} points/s ({sent:,} events in {seconds:.0f} s,"
            f" {draws} chart redraws, {draws / seconds:.1f}/s):"
        )
        print(f"  console script time per frame: {quantiles(work)}")
        print(f"  interval between animation frames: {quantiles(intervals)}")
        redraws = await page.evaluate("() => window.__tracklogPerf.drawMs.slice()")
        handling = await page.evaluate("() => window.__tracklogPerf.messageTotal")
        print(f"  one chart redraw ({runs} lines): {quantiles(redraws).replace('frames', 'redraws')}")
        print(f"  handling the pushed events: {handling / seconds:.0f} ms per second")
        over = sum(1 for w in work if w > 16)
        print(f"  frames whose script time exceeded 16 ms: {over} of {len(work)}")
        cpu, wall = main_thread_per_frame(trace)
        print(f"  renderer main thread per frame, CPU time (no waits for a core): {quantiles(cpu)}")
        print(f"  renderer main thread per frame, wall time: {quantiles(wall)}")
        if errors:
            print("page errors:", errors)
        await browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=100, help="points per second per run while streaming")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--repeat", type=int, default=3, help="reloads after the cold load")
    parser.add_argument("--db", type=Path, help="reuse (or build) the database here")
    parser.add_argument(
        "--table-runs", type=int, default=10_000, help="runs for the runs-table figure (0: skip)"
    )
    args = parser.parse_args()
    print(machine())
    with served_database(args.db, lambda path: build(path, args.runs, args.points), "console.db") as daemon:
        asyncio.run(measure(daemon.port, args.runs, args.points, args.rate, args.seconds, args.repeat))
    if args.table_runs:
        with served_database(None, lambda path: build_many(path, args.table_runs), "many.db") as daemon:
            asyncio.run(measure_table(daemon.port, args.table_runs))


if __name__ == "__main__":
    main()
