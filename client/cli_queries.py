"""The command line for people: runs, show, metrics, compare, best, items, search, stats,
export, sql and schema. Each prints an aligned table, or JSON with --json.

Every command asks the daemon at --url (default $TRACKLOG_URL); sql and schema can also
read a database file with --db (read-only, offline), through the daemon's offline reader
found by its entry point: this module holds no SQL and never imports the daemon.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Final, TextIO

from tracklog.protocol import errors
from tracklog.protocol.limits import DEFAULT_HOST, DEFAULT_PORT

from .queries import QueryClient
from .tls import add_ca_option, ssl_context

DEFAULT_URL: Final = f"ws://{DEFAULT_HOST}:{DEFAULT_PORT}/ws"
SPARK: Final = "▁▂▃▄▅▆▇█"
MAX_CELL: Final = 60


# -- output -----------------------------------------------------------------------------


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False)
    text = str(value).replace("\n", " ")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    """Print rows under headers in columns padded to their widest cell."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), file=out)
    for row in cells:
        print("  ".join(t.ljust(w) for t, w in zip(row, widths, strict=True)).rstrip(), file=out)


def pairs(items: Sequence[tuple[str, Any]], out: TextIO) -> None:
    width = max((len(k) for k, _ in items), default=0)
    for key, value in items:
        print(f"{key.ljust(width)}  {cell(value)}", file=out)


def as_json(value: Any, out: TextIO) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str, allow_nan=True), file=out)


def when(ts: float | None) -> str:
    """A Unix time for people: ISO 8601 in local time, with its offset
    (`2026-01-31 14:05:09+01:00`)."""
    if ts is None:
        return ""
    try:
        return dt.datetime.fromtimestamp(ts).astimezone().isoformat(sep=" ", timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return str(ts)


def is_time_field(key: str) -> bool:
    """Fields that hold a Unix time in the daemon's answers (`time`, `started`, `last_ts`, ...)."""
    return key in ("time", "ts", "started", "finished", "recorded") or key.endswith(("_ts", "_at", "_time"))


def for_people(key: str, value: Any) -> Any:
    """A field's value as a table shows it: times as `when`, the rest as they are."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and is_time_field(key):
        return when(value)
    return value


def sparkline(values: Sequence[float], width: int = 60) -> str:
    """A one-line chart of values; each column shows its bucket's most extreme value."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return ""
    low, high = min(finite), max(finite)
    n = len(values)
    columns = min(width, n)
    out = []
    for c in range(columns):
        bucket = [
            v
            for v in values[c * n // columns : (c + 1) * n // columns]
            if isinstance(v, (int, float)) and math.isfinite(v)
        ]
        if not bucket:
            out.append(" ")
            continue
        mean = sum(finite) / len(finite)
        value = max(bucket, key=lambda v: abs(v - mean))
        level = 0 if high == low else round((value - low) / (high - low) * (len(SPARK) - 1))
        out.append(SPARK[level])
    return "".join(out)


# -- commands that ask the daemon -------------------------------------------------------


def _client(args: argparse.Namespace) -> QueryClient:
    return QueryClient(args.url, args.token, "tracklog-cli")


def _resolve(args: argparse.Namespace, ref: str) -> str:
    """The id of the run `ref` names (an id, a unique id prefix or a name); when a name is
    shared by several runs, say on stderr that the latest was taken."""
    found = _client(args).resolve(ref)
    _note_resolved(found)
    return str(found["id"])


def _note_resolved(found: dict[str, Any]) -> None:
    if found.get("by") == "name" and found.get("same_name", 0) > 1:
        count, name = found["same_name"], found["ref"]
        print(f"tracklog: {count} runs are named {name!r}; using the latest, {found['id']}", file=sys.stderr)


def cmd_runs(args: argparse.Namespace, out: TextIO) -> int:
    rows = _client(args).runs(args.filter, args.order_by, args.limit, args.offset, args.deleted or None)
    if args.json:
        as_json({"seq": rows.seq, "total": rows.total, "runs": list(rows)}, out)
        return 0
    table(
        ["ID", "NAME", "STATUS", "PIPELINE", "STARTED", "METRICS"],
        [
            [
                r["id"],
                r["name"],
                r["status"],
                r["pipeline"],
                when(r["started"]),
                " ".join(f"{k}={cell(v)}" for k, v in list(r.get("metrics", {}).items())[:4]),
            ]
            for r in rows
        ],
        out,
    )
    print(f"{len(rows)} of {rows.total} runs", file=out)
    return 0


def cmd_show(args: argparse.Namespace, out: TextIO) -> int:
    run = _client(args).get_run(_resolve(args, args.run))
    if args.json:
        as_json(run, out)
        return 0
    fields = ["id", "name", "status", "error", "pipeline", "user", "host", "session", "parent", "notes"]
    pairs(
        [(f, run.get(f)) for f in fields if run.get(f) is not None]
        + ([("deleted", "yes (tracklog restore to undo)")] if run.get("deleted") else [])
        + [
            ("started", when(run["started"])),
            ("finished", when(run.get("finished"))),
            ("tags", ", ".join(run.get("tags", []))),
            ("config", run.get("config")),
            ("events", run["n_events"]),
            ("points", run["n_points"]),
            ("items", run["n_items"]),
            ("failed items", run["n_failed"]),
            ("artifacts", run["n_artifacts"]),
        ],
        out,
    )
    if run.get("metrics"):
        print(file=out)
        table(
            ["METRIC", "COUNT", "LAST", "MEAN", "MIN", "MIN STEP", "MAX", "MAX STEP"],
            [
                [name, m["count"], m["last"], m.get("mean"), m["min"], m["min_step"], m["max"], m["max_step"]]
                for name, m in run["metrics"].items()
            ],
            out,
        )
    if run.get("artifacts"):
        print(file=out)
        table(["KIND", "PATH", "SIZE"], [[a["kind"], a["path"], a["size"]] for a in run["artifacts"]], out)
    return 0


def cmd_metrics(args: argparse.Namespace, out: TextIO) -> int:
    names = args.names.split(",") if args.names else None
    histories = _client(args).metrics(_resolve(args, args.run), names, args.max_points)
    if args.json:
        as_json(dict(histories), out)
        return 0
    rows = []
    for name, h in histories.items():
        values = [v for v in h["values"] if isinstance(v, (int, float))]
        finite = [v for v in values if math.isfinite(v)]
        # The summary covers every point; the history may be downsampled (older daemons
        # send no summary: the history's own ends and extremes are the next best thing).
        summary = h.get("summary") or {
            "last_step": h["steps"][-1] if h["steps"] else None,
            "last": values[-1] if values else None,
            "min": min(finite) if finite else None,
            "max": max(finite) if finite else None,
        }
        row: list[Any] = [
            name,
            h.get("points", len(values)),
            summary["last_step"],
            summary["last"],
            summary["min"],
            summary["max"],
        ]
        if args.plot:
            row.append(sparkline(values, args.width))
        rows.append(row)
    headers = ["METRIC", "POINTS", "LAST STEP", "LAST", "MIN", "MAX"] + (["PLOT"] if args.plot else [])
    table(headers, rows, out)
    return 0


def cmd_compare(args: argparse.Namespace, out: TextIO) -> int:
    metrics = args.metrics.split(",") if args.metrics else None
    runs = [_resolve(args, ref) for ref in args.runs]
    rows = _client(args).compare(runs, metrics, args.deleted or None)
    if args.json:
        as_json(list(rows), out)
        return 0
    table(
        ["RUN", "NAME", "METRIC", "LAST", "MIN", "MIN AT", "MAX", "MAX AT", "COUNT", "EPOCHS"],
        [
            [
                r["run"],
                r.get("run_name"),
                r["metric"],
                r["last"],
                r["min"],
                _at(r["min_step"], r["min_epoch"]),
                r["max"],
                _at(r["max_step"], r["max_epoch"]),
                r["count"],
                r["epochs"],
            ]
            for r in rows
        ],
        out,
    )
    return 0


def _at(step: int | None, epoch: int | None) -> str:
    if step is None:
        return ""
    return f"step {step}" + (f" (epoch {epoch})" if epoch is not None else "")


def cmd_best(args: argparse.Namespace, out: TextIO) -> int:
    best = _client(args).best(args.metric, args.mode, args.filter, args.deleted or None)
    if args.json:
        as_json(best, out)
        return 0 if best else 1
    if best is None:
        print(f"no run has logged {args.metric}", file=sys.stderr)
        return 1
    pairs(
        [
            ("run", best["run"]),
            ("name", best["name"]),
            (args.mode + " " + args.metric, best["value"]),
            ("at", _at(best["step"], best["epoch"])),
        ],
        out,
    )
    return 0


def cmd_items(args: argparse.Namespace, out: TextIO) -> int:
    rows = _client(args).items(_resolve(args, args.run), args.stage, args.status, args.limit, args.offset)
    if args.json:
        as_json({"total": rows.total, "items": list(rows)}, out)
        return 0
    table(
        ["SEQ", "ITEM", "KIND", "STAGE", "STATUS", "DURATION", "ERROR"],
        [[i["seq"], i["item"], i["kind"], i["stage"], i["status"], i["duration"], i["error"]] for i in rows],
        out,
    )
    print(f"{len(rows)} of {rows.total} items", file=out)
    return 0


def cmd_search(args: argparse.Namespace, out: TextIO) -> int:
    rows = _client(args).search(args.text, args.limit, args.deleted or None)
    if args.json:
        as_json(list(rows), out)
        return 0
    table(
        ["KIND", "RUN", "NAME", "TITLE", "SNIPPET"],
        [[r["kind"], r["run"], r.get("run_name"), r["title"], r["snippet"]] for r in rows],
        out,
    )
    return 0


def stages_table(stages: Sequence[dict[str, Any]], out: TextIO) -> None:
    """Items by stage and kind: count, failed, and their durations (seconds)."""
    table(
        ["STAGE", "KIND", "ITEMS", "FAILED", "MEAN", "P50", "P95", "TOTAL"],
        [
            [s["stage"], s["kind"], s["count"], s["failed"], s["mean"], s["p50"], s["p95"], s["total"]]
            for s in stages
        ],
        out,
    )


def cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    stats = _client(args).stats(args.run, args.deleted or None)
    if args.json:
        as_json(stats, out)
        return 0
    pairs(
        [(k, for_people(k, v)) for k, v in stats.items() if k not in ("top_tags", "recent_runs", "stages")],
        out,
    )
    if stats.get("stages"):
        print(file=out)
        stages_table(stats["stages"], out)
    if stats.get("top_tags"):
        print(file=out)
        table(["TAG", "RUNS"], [[t["tag"], t["runs"]] for t in stats["top_tags"]], out)
    if stats.get("recent_runs"):
        print(file=out)
        table(
            ["RECENT RUN", "NAME", "STATUS", "LAST ACTIVE"],
            [[r["id"], r.get("name"), r.get("status"), when(r.get("last_ts"))] for r in stats["recent_runs"]],
            out,
        )
    return 0


def http_base(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}"


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    run = _resolve(args, args.run)
    path = f"/api/runs/{urllib.parse.quote(run, safe='')}/export/{urllib.parse.quote(args.format, safe='')}"
    request = urllib.request.Request(http_base(args.url) + path)
    if args.token:
        request.add_header("Authorization", f"Bearer {args.token}")
    try:
        with urllib.request.urlopen(request, timeout=300, context=ssl_context(args.url)) as reply:
            body = reply.read()
    except urllib.error.HTTPError as exc:
        with exc:
            try:
                message = json.loads(exc.read())["message"]
            except (ValueError, KeyError):
                message = str(exc)
        print(f"tracklog export: {message}", file=sys.stderr)
        return 1
    if args.output in (None, "-"):
        out.write(body.decode())
    else:
        Path(args.output).write_bytes(body)
        print(f"wrote {args.output} ({len(body)} bytes)", file=sys.stderr)
    return 0


def cmd_delete(args: argparse.Namespace, out: TextIO) -> int:
    return _mark(args, out, deleted=True)


def cmd_restore(args: argparse.Namespace, out: TextIO) -> int:
    return _mark(args, out, deleted=False)


def _mark(args: argparse.Namespace, out: TextIO, deleted: bool) -> int:
    """Delete or restore each run named: an event in the log, committed when this prints."""
    done = []
    for ref in args.runs:
        found = _client(args).set_deleted(ref, deleted)
        _note_resolved(found)
        done.append(found)
    if args.json:
        as_json([{"id": f["id"], "name": f["name"], "deleted": deleted} for f in done], out)
        return 0
    verb = "deleted" if deleted else "restored"
    for found in done:
        name = f" ({found['name']})" if found.get("name") else ""
        print(f"{verb} {found['id']}{name}", file=out)
    return 0


# -- sql and schema: through the daemon, or offline on a database file ----------------------

#: The entry point group the daemon registers its offline reads under (pyproject.toml).
OFFLINE_GROUP: Final = "tracklog.offline"


def offline_reads(db: Path | str) -> Any:
    """The daemon's offline reader of the database `db` (`offline_sql`, `offline_schema`):
    of a file, or of a `postgresql://` URL; found through its entry point so this client
    never imports the daemon itself."""
    found = entry_points(group=OFFLINE_GROUP, name="postgresql" if _is_url(db) else "sqlite")
    if not found:
        raise FileNotFoundError("--db needs the daemon installed (pip install 'tracklog[daemon]')")
    return next(iter(found)).load()


def _is_url(db: Path | str) -> bool:
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


def _path_or_url(text: str) -> Path | str:
    """A `--db` value: a PostgreSQL URL as written (a Path would fold its `//`), else a path."""
    return text if _is_url(text) else Path(text)


def _read_sql(args: argparse.Namespace, statement: str, limit: int) -> tuple[list[str], list[Any], bool]:
    """(columns, rows, more) of a read-only statement: through the daemon, or from the
    file itself with --db (offline; the daemon's authorizer)."""
    if args.db is None:
        [answer] = _client(args).query("sql", sql=statement, limit=limit)
        return answer["columns"], answer["rows"], answer["more"]
    columns, rows, more = offline_reads(args.db).offline_sql(args.db, statement, limit)
    return columns, rows, more


def _read_schema(args: argparse.Namespace) -> dict[str, Any]:
    """`{tables, ddl}` of the database: through the daemon, or from the file with --db."""
    if args.db is None:
        [schema] = _client(args).query("schema")
        return dict(schema)
    return dict(offline_reads(args.db).offline_schema(args.db))


def cmd_sql(args: argparse.Namespace, out: TextIO) -> int:
    try:
        headers, rows, more = _read_sql(args, args.statement, args.limit)
    except FileNotFoundError as exc:
        print(f"tracklog sql: {exc}", file=sys.stderr)
        return 2
    except errors.BadQuery as exc:
        if args.db is None:
            raise
        print(f"tracklog sql: {exc.message}", file=sys.stderr)
        return 1
    except errors.StorageError as exc:
        print(f"tracklog sql: {exc}", file=sys.stderr)
        return 1
    if args.json:
        as_json(
            [
                dict(zip(headers, (v.hex() if isinstance(v, bytes) else v for v in row), strict=True))
                for row in rows
            ],
            out,
        )
        return 0
    table(headers, [[f"<{len(v)} bytes>" if isinstance(v, bytes) else v for v in row] for row in rows], out)
    if more:
        print(f"(first {len(rows)} rows; --limit for more)", file=out)
    return 0


def cmd_schema(args: argparse.Namespace, out: TextIO) -> int:
    try:
        schema = _read_schema(args)
    except FileNotFoundError as exc:
        print(f"tracklog schema: {exc}", file=sys.stderr)
        return 2
    except errors.StorageError as exc:
        print(f"tracklog schema: {exc}", file=sys.stderr)
        return 1
    if args.ddl:
        for ddl in schema["ddl"]:
            print(ddl.rstrip(";") + ";", file=out)
        return 0
    as_json(schema["tables"], out)
    return 0


# -- the parsers ------------------------------------------------------------------------

COMMANDS: Final[dict[str, Callable[[argparse.Namespace, TextIO], int]]] = {
    "runs": cmd_runs,
    "show": cmd_show,
    "metrics": cmd_metrics,
    "compare": cmd_compare,
    "best": cmd_best,
    "items": cmd_items,
    "search": cmd_search,
    "stats": cmd_stats,
    "export": cmd_export,
    "delete": cmd_delete,
    "restore": cmd_restore,
    "sql": cmd_sql,
    "schema": cmd_schema,
}


def add_parsers(sub: Any) -> None:
    """Add the commands of this module to the `tracklog` subcommand parsers."""

    def remote(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        p.add_argument(
            "--url",
            default=os.environ.get("TRACKLOG_URL") or DEFAULT_URL,
            help="the daemon (default $TRACKLOG_URL or %(default)s)",
        )
        p.add_argument(
            "--token", default=os.environ.get("TRACKLOG_TOKEN") or None, help="bearer token ($TRACKLOG_TOKEN)"
        )
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        add_ca_option(p)
        return p

    p = remote("runs", "list runs: --filter \"metrics.loss < 0.5 and status = 'completed'\"")
    p.add_argument("--filter", default=None)
    p.add_argument("--order-by", action="append", default=None, metavar="FIELD [asc|desc]")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--offset", type=int, default=None)
    p.add_argument("--deleted", action="store_true", help="include deleted runs")

    run_help = "a run id, a unique id prefix, or a run name (the latest run with it)"
    p = remote("show", "one run: fields, config, tags, metric summaries, artifacts")
    p.add_argument("run", help=run_help)

    p = remote("metrics", "a run's metric histories")
    p.add_argument("run", help=run_help)
    p.add_argument("--names", default=None, help="comma-separated metric names")
    p.add_argument(
        "--max-points", type=int, default=1000, help="downsample to this many points (default 1000)"
    )
    p.add_argument("--plot", action="store_true", help="draw a sparkline of each metric")
    p.add_argument("--width", type=int, default=60, help="sparkline width (default 60)")

    p = remote("compare", "compare runs metric by metric")
    p.add_argument("runs", nargs="+", metavar="RUN", help=run_help)
    p.add_argument("--metrics", default=None, help="comma-separated metric names")
    p.add_argument("--deleted", action="store_true", help="allow deleted runs")

    p = remote("best", "the best run by a metric")
    p.add_argument("metric")
    p.add_argument("--mode", choices=["min", "max"], default="min")
    p.add_argument("--filter", default=None)
    p.add_argument("--deleted", action="store_true", help="include deleted runs")

    p = remote("items", "a run's items")
    p.add_argument("run", help=run_help)
    p.add_argument("--stage", default=None)
    p.add_argument("--status", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--offset", type=int, default=None)

    p = remote("search", "full-text search over runs, items and artifacts")
    p.add_argument("text")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--deleted", action="store_true", help="include deleted runs")

    p = remote("stats", "the daemon's counts, sizes, ingest rate and items by stage; or one run's")
    p.add_argument("run", nargs="?", default=None, help="a run: its items by status and by stage")
    p.add_argument("--deleted", action="store_true", help="count deleted runs too")

    p = remote("delete", "mark runs deleted (hidden from runs, compare, best, search, stats; undo: restore)")
    p.add_argument("runs", nargs="+", metavar="RUN", help=run_help)

    p = remote("restore", "bring deleted runs back (their status is kept)")
    p.add_argument("runs", nargs="+", metavar="RUN", help=run_help)

    p = remote("export", "download a run with its metrics, items and artifacts")
    p.add_argument("run", help=run_help)
    p.add_argument("--format", choices=["json", "jsonl", "csv", "xml"], default="json")
    p.add_argument("-o", "--output", default=None, help="file to write (default: standard output)")

    for name, help_text in (
        ("sql", "run a read-only SQL statement on the database (through the daemon, or --db)"),
        ("schema", "the database's tables and columns (JSON), or --ddl (through the daemon, or --db)"),
    ):
        p = remote(name, help_text)
        p.add_argument(
            "--db",
            type=_path_or_url,
            default=None,
            help="read this database file (or postgresql:// URL) itself instead of asking the daemon"
            " (offline; read-only)",
        )
        if name == "sql":
            p.add_argument("statement")
            p.add_argument("--limit", type=int, default=1000, help="rows to print at most (default 1000)")
        else:
            p.add_argument("--ddl", action="store_true", help="print the CREATE statements")


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    try:
        return COMMANDS[args.command](args, out)
    except errors.ProtocolError as exc:
        print(f"tracklog {args.command}: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        raise  # our reader went away (`| head`): not the daemon's doing; `cli.main` ends quietly
    except (OSError, TimeoutError) as exc:
        print(
            f"tracklog {args.command}: cannot reach the daemon at {getattr(args, 'url', '?')}: {exc}",
            file=sys.stderr,
        )
        return 2
