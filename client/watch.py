"""`tracklog watch`: a live full-screen view of runs in the terminal, drawn with rich.

Fed by one `runs` query for the initial state and one subscription from the seq that
query answered, so no event falls in between; after a dropped connection it subscribes
again from the last seq it saw. The state (`WatchState`) and the drawing (`render`) are
pure: events in, state out; state in, renderable out; so both are tested without a
terminal or a daemon.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import msgspec

from tracklog.protocol.connection import (
    Answered,
    ClientConnection,
    ClientEvent,
    Delivered,
    Notice,
    Refused,
    WentLive,
)
from tracklog.protocol.errors import RateLimited, TracklogError, error_for_code
from tracklog.protocol.messages import Error, Query, Result

from .pings import SyncConnection
from .subscribe import _RETRYABLE, _backoff
from .tls import add_ca_option, connect_options

if TYPE_CHECKING:
    from rich.console import RenderableType

#: Failures after which the feed connects again: a lost connection, or a query the daemon
#: refused for a rate limit (then after its retry_after at least).
_AGAIN = (*_RETRYABLE, RateLimited)

DEFAULT_URL: Final = "ws://127.0.0.1:7717/ws"
INSTALL_HINT: Final = "tracklog watch draws with rich: pip install 'tracklog[daemon]' (or pip install rich)"
#: Values kept per metric for its sparkline.
SPARK_POINTS: Final = 32
#: Metrics shown per run: the first ones by name.
MAIN_METRICS: Final = 3
#: Seconds over which items per second is measured.
RATE_WINDOW: Final = 10.0
#: Most runs kept and shown (newest first).
MAX_RUNS: Final = 200
SPARKS: Final = "▁▂▃▄▅▆▇█"
STATUS_STYLES: Final = {
    "running": "bold cyan",
    "completed": "green",
    "failed": "bold red",
    "lost": "bold magenta",
    "killed": "yellow",
}

# -- state ----------------------------------------------------------------------------------


@dataclass
class RunView:
    """What the view knows of one run."""

    id: str
    name: str | None = None
    pipeline: str | None = None
    status: str = "running"
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    n_items: int = 0
    n_failed: int = 0
    #: Times (event ts) of recent items, for items per second.
    item_times: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    #: Metric name -> its most recent values (the last one is the current value).
    metrics: dict[str, deque[float]] = field(default_factory=dict)

    def add_value(self, name: str, value: Any) -> None:
        series = self.metrics.get(name)
        if series is None:
            series = self.metrics[name] = deque(maxlen=SPARK_POINTS)
        series.append(_number(value))

    def items_per_second(self, now: float) -> float:
        cutoff = now - RATE_WINDOW
        recent = sum(1 for t in self.item_times if t > cutoff)
        return recent / RATE_WINDOW


def _number(value: Any) -> float:
    if isinstance(value, str):
        return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(value, math.nan)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class WatchState:
    """The runs being watched, folded from a `runs` answer and the events after it."""

    def __init__(self, pipeline: str | None = None) -> None:
        self.pipeline = pipeline
        self.runs: dict[str, RunView] = {}
        self.seq = 0
        self.connected = False
        self.live = False
        self.note = ""
        #: Runs restored since the feed last asked for them: their row is fetched again
        #: (status, name, counts as the daemon has them; a restored lost run stays lost).
        self.restored: set[str] = set()

    def load_runs(self, rows: list[dict[str, Any]], seq: int) -> None:
        for row in rows:
            run = RunView(
                id=row["id"],
                name=row.get("name"),
                pipeline=row.get("pipeline"),
                status=row.get("status") or "running",
                started=row.get("started"),
                finished=row.get("finished"),
                error=row.get("error"),
                n_items=row.get("n_items") or 0,
                n_failed=row.get("n_failed") or 0,
            )
            for name, value in (row.get("metrics") or {}).items():
                run.add_value(name, value["last"] if isinstance(value, dict) else value)
            self.runs[run.id] = run
        self.seq = max(self.seq, seq)

    def apply(self, event: dict[str, Any]) -> None:
        """Fold one stored event into the state (events at or before `seq` are ignored)."""
        if event["seq"] <= self.seq:
            return
        self.seq = event["seq"]
        run_id = event.get("run")
        if run_id is None:
            return
        kind = event["type"]
        data = event.get("data") or {}
        if kind == "run.deleted":
            self.runs.pop(run_id, None)
            self.restored.discard(run_id)
            return
        if kind == "run.restored":
            self.restored.add(run_id)  # its row comes back through a `run` query
            return
        run = self.runs.get(run_id)
        if run is None:
            run = self.runs[run_id] = RunView(id=run_id, started=event.get("ts"))
            self._trim()
        if kind == "run.started":
            run.name = data.get("name", run.name)
            run.pipeline = data.get("pipeline", run.pipeline)
            run.started = event.get("ts", run.started)
        elif kind == "run.updated":
            run.name = data.get("name") or run.name
            if data.get("status"):
                run.status, run.finished, run.error = data["status"], None, None
        elif kind == "run.finished":
            run.status = data.get("status", "completed")
            run.error = data.get("error")
            run.finished = event.get("ts")
        elif kind == "metrics":
            for name, value in (data.get("values") or {}).items():
                run.add_value(name, value)
        elif kind == "item":
            run.n_items += 1
            if data.get("status") == "failed":
                run.n_failed += 1
            run.item_times.append(event.get("ts") or event.get("recorded") or 0.0)

    def _trim(self) -> None:
        if len(self.runs) > MAX_RUNS:
            oldest = min(self.runs.values(), key=lambda r: r.started or 0.0)
            del self.runs[oldest.id]

    def ordered(self) -> list[RunView]:
        """Runs to show: running first, then the newest."""
        return sorted(self.runs.values(), key=lambda r: (r.status != "running", -(r.started or 0.0)))


# -- drawing --------------------------------------------------------------------------------


def sparkline(values: deque[float] | list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = hi - lo
    out = []
    for v in values:
        if not math.isfinite(v):
            out.append(" ")
        elif span == 0:
            out.append(SPARKS[len(SPARKS) // 2])
        else:
            out.append(SPARKS[min(len(SPARKS) - 1, int((v - lo) / span * len(SPARKS)))])
    return "".join(out)


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def format_age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def render(state: WatchState, now: float, url: str = "") -> RenderableType:
    """The whole screen for `state` at time `now`: a header line and a table of runs."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    link = "live" if state.live else ("catching up" if state.connected else "connecting")
    header = Text.assemble(
        ("tracklog watch", "bold"),
        "  ",
        (url, "dim"),
        "  ",
        (link, "green" if state.live else "yellow"),
        f"  seq {state.seq}",
        f"  pipeline {state.pipeline}" if state.pipeline else "",
        f"  {len(state.runs)} runs",
        (f"  {state.note}", "red") if state.note else "",
    )
    table = Table(expand=True, header_style="bold dim", pad_edge=False)
    table.add_column("status", no_wrap=True)
    table.add_column("run", overflow="ellipsis", max_width=32)
    table.add_column("pipeline", overflow="ellipsis", max_width=20)
    table.add_column("age", justify="right", no_wrap=True)
    table.add_column("items", justify="right", no_wrap=True)
    table.add_column("items/s", justify="right", no_wrap=True)
    table.add_column("metrics", ratio=1, no_wrap=True)
    for run in state.ordered():
        bad = run.status in ("failed", "lost")
        metrics = Text()
        for i, name in enumerate(sorted(run.metrics)[:MAIN_METRICS]):
            series = run.metrics[name]
            if i:
                metrics.append("\n")
            metrics.append(f"{name} ", style="dim")
            metrics.append(f"{format_value(series[-1]):>9} ", style="bold")
            metrics.append(sparkline(series), style="red" if bad else "cyan")
        items = Text(str(run.n_items))
        if run.n_failed:
            items.append(f" ({run.n_failed} failed)", style="bold red")
        end = run.finished if run.finished is not None and run.status != "running" else now
        age = format_age(end - run.started) if run.started is not None else ""
        rate = run.items_per_second(now) if run.status == "running" else 0.0
        label = Text(run.name or run.id)
        if run.error:
            label.append(f"\n{run.error}", style="red")
        table.add_row(
            Text(run.status, style=STATUS_STYLES.get(run.status, "")),
            label,
            run.pipeline or "",
            age,
            items,
            f"{rate:.1f}" if rate else "",
            metrics,
            style="on grey19" if bad else None,
        )
    if not state.runs:
        table.add_row("", Text("no runs yet", style="dim"), "", "", "", "", "")
    return Group(header, table, Text("Ctrl-C to quit", style="dim"))


# -- the feed -------------------------------------------------------------------------------


class Feed:
    """One connection to the daemon: hello, a `runs` query (first time only), one subscription.

    `poll(timeout)` takes what has arrived into the state; a dropped connection is opened
    again (with backoff) and the subscription resumes after the last seq applied.
    """

    def __init__(self, url: str, state: WatchState, token: str | None = None) -> None:
        self.url = url
        self.state = state
        self.token = token
        self.loaded = False
        self._ws: Any = None
        self._conn: ClientConnection | None = None
        self._attempt = 0
        self._retry_at = 0.0

    def _open(self) -> None:
        from websockets.sync.client import connect

        ws = connect(
            self.url,
            open_timeout=10,
            max_size=None,
            compression=None,
            create_connection=SyncConnection,
            **connect_options(self.url),
        ).__enter__()
        try:
            conn = ClientConnection("tracklog-watch", self.token)
            ws.send(conn.hello())
            self._check(conn.receive(ws.recv(timeout=30)))
            if not self.loaded:
                runs_filter = None
                if self.state.pipeline:
                    runs_filter = "pipeline = '" + self.state.pipeline.replace("'", "''") + "'"
                ref, data = conn.request(Query(q="runs", limit=MAX_RUNS, filter=runs_filter))
                ws.send(data)
                reply = self._reply(conn, ws, ref)
                self.state.load_runs(reply.rows, reply.seq)
                self.loaded = True
            pipelines = [self.state.pipeline] if self.state.pipeline else None
            ws.send(conn.subscribe(self.state.seq, pipelines=pipelines)[1])
        except BaseException:
            ws.close()
            raise
        self._ws, self._conn = ws, conn
        self.state.connected = True
        self.state.note = ""

    def _reply(self, conn: ClientConnection, ws: Any, ref: int) -> Result:
        """Wait for the answer to query `ref` (the first frames after the hello)."""
        while True:
            for event in self._check(conn.receive(ws.recv(timeout=60))):
                if isinstance(event, Answered) and event.ref == ref and isinstance(event.reply, Result):
                    return event.reply

    @staticmethod
    def _check(events: list[ClientEvent]) -> list[ClientEvent]:
        """The events, or the daemon's error raised."""
        for event in events:
            match event:
                case Answered(reply=Error() as error) | Refused(error=error) | Notice(error=error):
                    raise error_for_code(error.code, error.message, error.ref, error.retry_after)
        return events

    def poll(self, timeout: float) -> None:
        """Apply what arrives within `timeout` seconds (returns early after a batch)."""
        if self._ws is None:
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, timeout))
                return
            try:
                self._open()
                self._attempt = 0
            except _AGAIN as exc:
                self._dropped(exc)
                return
        assert self._conn is not None
        try:
            events = self._check(self._conn.receive(self._ws.recv(timeout=timeout)))
        except TimeoutError:
            return
        except _AGAIN as exc:
            self._dropped(exc)
            return
        for event in events:
            match event:
                case Delivered():
                    for stored in event.events:
                        self.state.apply(msgspec.structs.asdict(stored))
                    self._ask_restored()
                case Answered(reply=Result(rows=rows)) if rows:
                    self.state.load_runs(rows, 0)
                case WentLive():
                    self.state.live = True

    def _ask_restored(self) -> None:
        """Ask for the rows of runs restored since last time (answered as `result`)."""
        state = self.state
        assert self._conn is not None
        while state.restored:
            run = state.restored.pop()
            self._ws.send(self._conn.request(Query(q="run", run=run))[1])

    def _dropped(self, exc: BaseException) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.close()
            self._ws = self._conn = None
        self.state.connected = self.state.live = False
        self.state.note = f"reconnecting ({type(exc).__name__})"
        wait = _backoff(self._attempt)
        if isinstance(exc, RateLimited):
            wait = max(wait, exc.retry_after)
        self._retry_at = time.monotonic() + wait
        self._attempt += 1

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = self._conn = None


# -- the command ----------------------------------------------------------------------------


def add_watch_parser(sub: Any) -> None:
    w = sub.add_parser("watch", help="a live full-screen view of runs")
    w.add_argument(
        "--url",
        default=os.environ.get("TRACKLOG_URL") or DEFAULT_URL,
        help="the daemon (default $TRACKLOG_URL or %(default)s)",
    )
    w.add_argument(
        "--token", default=os.environ.get("TRACKLOG_TOKEN") or None, help="bearer token ($TRACKLOG_TOKEN)"
    )
    add_ca_option(w)
    w.add_argument("--pipeline", default=None, metavar="P", help="only runs of this pipeline")
    w.add_argument(
        "--refresh", type=float, default=4.0, metavar="PER_SECOND", help="redraws per second (default 4)"
    )


def watch(args: argparse.Namespace) -> int:
    try:
        from rich.console import Console
        from rich.live import Live
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    url = args.url or os.environ.get("TRACKLOG_URL") or DEFAULT_URL
    token = args.token or os.environ.get("TRACKLOG_TOKEN") or None
    state = WatchState(args.pipeline)
    feed = Feed(url, state, token)
    period = 1.0 / max(0.5, args.refresh)
    console = Console()
    try:
        with Live(render(state, time.time(), url), console=console, screen=True, auto_refresh=False) as live:
            while True:
                deadline = time.monotonic() + period
                while (left := deadline - time.monotonic()) > 0:
                    feed.poll(left)
                live.update(render(state, time.time(), url), refresh=True)
    except KeyboardInterrupt:
        return 0
    except TracklogError as exc:
        print(f"tracklog watch: {exc}", file=sys.stderr)
        return 1
    finally:
        feed.close()
