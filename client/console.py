"""Terminal views of the live log: `tracklog tail` (one line per event)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, TextIO

from tracklog.protocol import errors

from .queries import QueryClient
from .subscribe import Subscription, SubscriptionState
from .tls import add_ca_option

DEFAULT_URL = "ws://127.0.0.1:7717/ws"


def add_tail_parser(sub: Any) -> None:
    t = sub.add_parser("tail", help="print events as they are committed, one line each")
    t.add_argument(
        "--url",
        default=os.environ.get("TRACKLOG_URL") or DEFAULT_URL,
        help="the daemon (default $TRACKLOG_URL or %(default)s)",
    )
    t.add_argument(
        "--token", default=os.environ.get("TRACKLOG_TOKEN") or None, help="bearer token ($TRACKLOG_TOKEN)"
    )
    add_ca_option(t)
    t.add_argument("--run", action="append", default=None, metavar="RUN", help="only this run (repeatable)")
    t.add_argument(
        "--type", action="append", default=None, metavar="TYPE", help="only this event type (repeatable)"
    )
    t.add_argument(
        "--pipeline",
        action="append",
        default=None,
        metavar="P",
        help="only runs of this pipeline (repeatable)",
    )
    t.add_argument(
        "--from",
        dest="from_seq",
        type=int,
        default=None,
        metavar="SEQ",
        help="start after this seq (0: the whole log; default: from now on)",
    )
    t.add_argument("--json", action="store_true", help="one JSON object per line")
    t.add_argument(
        "--idle-exit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="exit after this many seconds without an event",
    )


def _number(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return f"{value:.6g}"
    return str(value)


def summary(event: dict[str, Any]) -> str:
    """The interesting part of an event's data, short."""
    data = event.get("data") or {}
    kind = event.get("type")
    if kind == "metrics":
        parts = [f"{k}={_number(v)}" for k, v in data.get("values", {}).items()]
        if data.get("step") is not None:
            parts.append(f"step={data['step']}")
        if data.get("epoch") is not None:
            parts.append(f"epoch={data['epoch']}")
        return " ".join(parts)
    if kind == "item":
        keys = ("stage", "kind", "status", "item", "model", "duration", "error")
        return " ".join(f"{k}={_number(data[k])}" for k in keys if data.get(k) is not None) or "status=ok"
    if kind == "run.finished":
        return f"status={data.get('status')}" + (f" error={data['error']!r}" if data.get("error") else "")
    if kind == "artifact":
        return f"{data.get('kind')} {data.get('path')}"
    if kind in ("cache.put", "cache.invalidated"):
        return f"key={data.get('key', '*')}"
    if not data:
        return ""
    text = json.dumps(data, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def format_line(event: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(event.get("ts") or event.get("recorded") or 0))
    run = event.get("run") or "-"
    return f"{event['seq']:>8}  {stamp}  {run:<20}  {event['type']:<14}  {summary(event)}".rstrip()


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _run_id(url: str, token: str | None, ref: str) -> str:
    """The id `ref` names (a unique id prefix or a name work too). A run that does not
    exist yet, or a daemon that is not up yet, leaves `ref` as it is: tail waits for it."""
    try:
        return str(QueryClient(url, token, "tracklog-tail", timeout=5).resolve(ref)["id"])
    except (errors.NotFound, OSError, TimeoutError):
        return ref


def tail(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    url = args.url or os.environ.get("TRACKLOG_URL") or DEFAULT_URL
    token = args.token or os.environ.get("TRACKLOG_TOKEN") or None
    runs = args.run
    if runs:
        try:
            runs = [_run_id(url, token, ref) for ref in runs]
        except errors.BadQuery as exc:  # ambiguous: the message lists the candidates
            print(f"tracklog tail: {exc.message}", file=sys.stderr)
            return 1
    state = SubscriptionState(args.from_seq, runs, args.type, args.pipeline, token)
    with Subscription(url, state, idle_timeout=args.idle_exit) as events:
        try:
            for event in events:
                line = json.dumps(_json_safe(event), sort_keys=True) if args.json else format_line(event)
                out.write(line + "\n")
                out.flush()
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:
            raise  # cli.main ends quietly (and keeps the exit flush from failing again)
    return 0
