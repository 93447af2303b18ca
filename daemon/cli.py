"""The daemon's commands on the `tracklog` command line: serve, rebuild, verify, replay, backup,
log export|import, migrate, purge.

The client's command line (client/cli.py) never imports the daemon. It finds this module
through the `tracklog.commands` entry point group (pyproject.toml) and calls
`add_commands` with its subparsers. This module imports only the standard library and
`tracklog.protocol`, so `tracklog --help` and the client's own commands stay fast; a
command imports the rest of the daemon when it runs.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import sys
from pathlib import Path
from typing import Any

from tracklog.protocol.limits import DEFAULT_HOST, DEFAULT_PORT

INSTALL_HINT = "pip install 'tracklog[daemon]'"


def add_commands(sub: Any) -> None:
    """Add serve, rebuild, verify and replay to the `tracklog` subparsers `sub`.

    When the daemon's extra is not installed, the commands are still added (so running
    one says what to install instead of "invalid choice"), and their help says so."""
    missing = missing_dependencies()
    needs = f" [not installed: {INSTALL_HINT}]" if missing else ""

    s = sub.add_parser("serve", help="run the daemon" + needs)
    s.add_argument(
        "--db",
        default=None,
        help="database: a path, sqlite:///PATH or postgresql://... (several daemons may share one"
        " PostgreSQL database; default: $TRACKLOG_HOME/tracklog.db or ~/.local/share/tracklog/tracklog.db)",
    )
    s.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    s.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)"
    )
    s.add_argument(
        "--durability",
        choices=["normal", "full"],
        default="normal",
        help="normal: survives a daemon crash; full: survives power loss (slower)",
    )
    s.add_argument(
        "--token",
        action="append",
        default=[],
        help="accepted bearer token (repeatable; also $TRACKLOG_TOKENS, comma-separated)",
    )
    s.add_argument("--insecure", action="store_true", help="allow a non-loopback address without tokens")
    s.add_argument(
        "--lost-after",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="mark a running run `lost` when no writer has been connected for this long (default 300)",
    )
    s.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin (http://host:port) whose pages may use the daemon (repeatable)",
    )
    s.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name accepted in Host besides localhost, 127.0.0.1, ::1 (repeatable)",
    )
    s.add_argument(
        "--tokens",
        "--tokens-file",
        dest="tokens_file",
        type=Path,
        default=os.environ.get("TRACKLOG_TOKENS_FILE") or None,
        metavar="PATH",
        help="accepted tokens, one a line with its scopes (append, read, admin; none: all), # comments;"
        " re-read on SIGHUP (also $TRACKLOG_TOKENS_FILE)",
    )
    _add_security_options(s)
    s.add_argument(
        "--artifacts-dir",
        type=Path,
        default=os.environ.get("TRACKLOG_ARTIFACTS_DIR") or None,
        metavar="PATH",
        help="the artifact store's folder (default: DB.artifacts beside an SQLite database; a PostgreSQL"
        " database has none unless this is set, and artifact uploads are refused; also"
        " $TRACKLOG_ARTIFACTS_DIR)",
    )
    s.add_argument(
        "--env-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="KEY=VALUE file whose TRACKLOG_TOKENS and TRACKLOG_LOG_LEVEL are read at start and on SIGHUP"
        " (then $TRACKLOG_TOKENS of the environment is not used)",
    )
    s.add_argument(
        "--log-level",
        default=os.environ.get("TRACKLOG_LOG_LEVEL", "info").lower(),
        choices=["debug", "info", "warning", "error"],
        help="default $TRACKLOG_LOG_LEVEL or info",
    )
    s.add_argument(
        "--log-format",
        default="auto",
        choices=["auto", "json", "console"],
        help="auto: readable lines on a terminal, JSON lines otherwise",
    )
    s.add_argument(
        "--slow-ms",
        type=float,
        default=1000.0,
        metavar="MS",
        help="log an append acked, or a query answered, after this many milliseconds (default 1000)",
    )
    s.set_defaults(handler=_serve)

    r = sub.add_parser("rebuild", help="rebuild every table from the log (daemon stopped)" + needs)
    r.add_argument("--db", default=None, help="database: a path, sqlite:///PATH or postgresql://...")
    r.set_defaults(handler=_rebuild)

    v = sub.add_parser(
        "verify", help="compare the live tables with a rebuild from the log; exit 1 on a difference" + needs
    )
    v.add_argument("--db", default=None, help="database: a path, sqlite:///PATH or postgresql://...")
    v.set_defaults(handler=_verify)

    p = sub.add_parser("replay", help="write the state as of a seq into a new database" + needs)
    p.add_argument("--db", default=None, help="database: a path, sqlite:///PATH or postgresql://...")
    p.add_argument("--to", type=int, required=True, metavar="SEQ", help="last seq to include")
    p.add_argument("--out", required=True, help="the new database: a path or sqlite:///PATH")
    p.set_defaults(handler=_replay)

    b = sub.add_parser(
        "backup", help="copy the database while the daemon runs (SQLite's online backup)" + needs
    )
    b.add_argument("dest", help="path of the copy (must not exist)")
    b.add_argument("--db", default=None, help="database: a path, sqlite:///PATH or postgresql://...")
    b.set_defaults(handler=_backup)

    add_ops_commands(sub, needs)


#: serve's limits: option, Limits field, and what it bounds (each also $TRACKLOG_<FIELD>).
LIMIT_OPTIONS = (
    ("--max-frame-bytes", "max_frame_bytes", "bytes in one WebSocket frame (default 16 MiB)"),
    ("--max-events-per-append", "max_events_per_append", "events in one append (default 10000)"),
    (
        "--max-connections",
        "max_connections",
        "WebSocket connections served at once (default 1000; 0: no limit)",
    ),
    (
        "--max-http-connections",
        "max_http_connections",
        "connections still speaking HTTP at once; one more is answered 503 (default 256; 0: no limit)",
    ),
    ("--max-subscriptions", "max_subscriptions", "subscriptions open on one connection (default 100)"),
    ("--max-query-rows", "max_query_rows", "rows one query may ask for or answer with (default 10000)"),
    ("--max-depth", "max_depth", "nesting levels of free-form values (default 64)"),
    (
        "--max-field-chars",
        "max_field_chars",
        "characters of any string in an event's data (default: no limit)",
    ),
    (
        "--http-head-timeout",
        "http_head_timeout",
        "seconds an HTTP connection has to send a whole request head, then it is closed (default 10)",
    ),
)
#: The limits that are seconds (the others are counts).
SECONDS_LIMITS = frozenset({"http_head_timeout"})
#: The limits that 0, none or off turn off.
OPTIONAL_LIMITS = frozenset({"max_connections", "max_http_connections", "max_field_chars"})
#: serve's rate limits: option, RatePolicy field, what is counted (each also $TRACKLOG_<FIELD>).
RATE_OPTIONS = (
    ("--rate-conn-events", "conn_events", "events per second appended on one connection"),
    ("--rate-conn-queries", "conn_queries", "queries (and checks) per second on one connection"),
    ("--rate-token-events", "token_events", "events per second appended with one token, all connections"),
    ("--rate-token-queries", "token_queries", "queries (and checks) per second with one token"),
)


def _add_security_options(s: argparse.ArgumentParser) -> None:
    """TLS, limits and rate limits of `serve`; each option's default comes from the environment."""
    env = os.environ.get
    s.add_argument(
        "--tls-cert",
        type=Path,
        default=env("TRACKLOG_TLS_CERT") or None,
        metavar="PEM",
        help="certificate chain: serve wss:// and https:// (with --tls-key; also $TRACKLOG_TLS_CERT)",
    )
    s.add_argument(
        "--tls-key",
        type=Path,
        default=env("TRACKLOG_TLS_KEY") or None,
        metavar="PEM",
        help="the certificate's private key (also $TRACKLOG_TLS_KEY)",
    )
    for option, name, what in LIMIT_OPTIONS:
        variable = "TRACKLOG_" + name.upper()
        metavar = "SECONDS" if name in SECONDS_LIMITS else "N"
        s.add_argument(option, dest=name, default=env(variable), metavar=metavar, help=f"{what}; ${variable}")
    for option, name, what in RATE_OPTIONS:
        variable = "TRACKLOG_RATE_" + name.upper()
        s.add_argument(
            option,
            dest="rate_" + name,
            default=env(variable),
            metavar="RATE[:BURST]",
            help=f"limit {what} (default off; burst: one second's worth); ${variable}",
        )


def _security_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The Settings fields of the security options; ValueError naming the option when one is bad."""
    from tracklog.daemon.guard import Limits
    from tracklog.daemon.ratelimit import RatePolicy, parse_rate

    limits: dict[str, float | None] = {}
    for option, name, _ in LIMIT_OPTIONS:
        value = getattr(args, name)
        if value is None or value == "":
            continue
        if str(value).strip().lower() in ("none", "off", "0") and name in OPTIONAL_LIMITS:
            limits[name] = None
            continue
        try:
            limits[name] = float(value) if name in SECONDS_LIMITS else int(value)
        except ValueError:
            kind = "a number of seconds" if name in SECONDS_LIMITS else "an integer"
            raise ValueError(f"{option}: expected {kind}, got {value!r}") from None
    rates = {}
    for option, name, _ in RATE_OPTIONS:
        value = getattr(args, "rate_" + name)
        if value is None or value == "" or str(value).strip().lower() == "off":
            continue
        try:
            rates[name] = parse_rate(str(value))
        except ValueError as exc:
            raise ValueError(f"{option}: {exc}") from None
    try:
        built_limits = Limits(**limits)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"limits: {exc}") from None
    return {
        "limits": built_limits,
        "rates": RatePolicy(**rates),
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
    }


def missing_dependencies() -> list[str]:
    """The distributions of the `daemon` extra that are not installed, read from the
    package's own metadata so the list cannot drift from pyproject.toml."""
    try:
        requirements = importlib.metadata.requires("tracklog") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    missing = []
    for requirement in requirements:
        if not re.search(r"""extra\s*==\s*["']daemon["']""", requirement):
            continue
        name = re.match(r"[A-Za-z0-9._-]+", requirement)
        if name is None:
            continue
        try:
            importlib.metadata.distribution(name.group())
        except importlib.metadata.PackageNotFoundError:
            missing.append(name.group())
    return missing


def _default_db() -> Path:
    home = os.environ.get("TRACKLOG_HOME")
    if home:
        return Path(home) / "tracklog.db"
    return Path.home() / ".local" / "share" / "tracklog" / "tracklog.db"


def _db(args: argparse.Namespace) -> Path | str:
    """The --db value (a path, or a URL for the offline commands), or the default path."""
    db: Path | str | None = args.db
    return db if db is not None else _default_db()


def _serve_db(args: argparse.Namespace) -> Path | str:
    """serve's --db: a URL as given, a path as a Path, or the default path."""
    db: str | None = args.db
    if db is None:
        return _default_db()
    return db if "://" in db else Path(db)


def _not_installed(command: str, exc: ImportError) -> int:
    print(f"tracklog {command}: the daemon is not installed ({exc}); {INSTALL_HINT}", file=sys.stderr)
    return 2


def _serve(args: argparse.Namespace) -> int:
    try:
        from tracklog.daemon import commands
        from tracklog.daemon.server import Settings
    except ImportError as exc:
        return _not_installed("serve", exc)
    # An empty --token is passed on as given, so that serve refuses it. With --env-file,
    # TRACKLOG_TOKENS comes from that file (re-read on SIGHUP), not from the environment.
    tokens = tuple(args.token)
    if args.env_file is None:
        tokens += tuple(t for t in os.environ.get("TRACKLOG_TOKENS", "").split(",") if t)
    try:
        security = _security_settings(args)
    except ValueError as exc:
        print(f"tracklog serve: {exc}", file=sys.stderr)
        return 2
    settings = Settings(
        db=_serve_db(args),
        host=args.host,
        port=args.port,
        durability=args.durability,
        tokens=tokens,
        insecure=args.insecure,
        lost_after=args.lost_after,
        allow_origins=tuple(args.allow_origin),
        allow_hosts=tuple(args.allow_host),
        tokens_file=args.tokens_file,
        env_file=args.env_file,
        log_level=args.log_level,
        log_format=args.log_format,
        slow_request_seconds=args.slow_ms / 1000,
        artifacts_dir=args.artifacts_dir,
        **security,
    )
    return commands.serve(settings)


def _rebuild(args: argparse.Namespace) -> int:
    try:
        from tracklog.daemon import commands
    except ImportError as exc:
        return _not_installed("rebuild", exc)
    return commands.rebuild(_db(args))


def _verify(args: argparse.Namespace) -> int:
    try:
        from tracklog.daemon import commands
    except ImportError as exc:
        return _not_installed("verify", exc)
    return commands.verify(_db(args))


def _backup(args: argparse.Namespace) -> int:
    try:
        from tracklog.daemon import commands
    except ImportError as exc:
        return _not_installed("backup", exc)
    return commands.backup(_db(args), args.dest)


def _replay(args: argparse.Namespace) -> int:
    try:
        from tracklog.daemon import commands
    except ImportError as exc:
        return _not_installed("replay", exc)
    return commands.replay(_db(args), args.to, args.out)


# -- operations: log export|import, migrate, purge (docs/operations.md) ----------------

OPS_DB_HELP = "database: a path, sqlite:///PATH or memory:"


def add_ops_commands(sub: Any, needs: str) -> None:
    """Add `log export|import`, `migrate` and `purge` to the `tracklog` subparsers `sub`."""
    lg = sub.add_parser("log", help="the event log as JSON Lines: export, import" + needs)
    log_sub = lg.add_subparsers(dest="log_command", required=True, metavar="{export,import}")
    e = log_sub.add_parser(
        "export",
        help="write the event log as JSON Lines to stdout (safe while the daemon runs)",
        description="Write the event log as JSON Lines, one stored event per line (seq, id, type,"
        " run, ts, recorded, data), to stdout. Read-only: a running daemon goes on writing;"
        " the export holds the log up to the head it had when it began.",
    )
    e.add_argument("db", nargs="?", default=None, help=OPS_DB_HELP + " (default: the daemon's)")
    e.add_argument("--from-seq", type=int, default=0, metavar="N", help="only events after seq N")
    e.add_argument("--to-seq", type=int, default=None, metavar="N", help="only events up to seq N")
    e.add_argument("--run", default=None, metavar="R", help="only the events of run R (a full id)")
    e.set_defaults(handler=_log_export)
    i = log_sub.add_parser(
        "import",
        help="append the events of a JSON Lines export from stdin (daemon stopped)",
        description="Append the events of a `tracklog log export` read from stdin, with their seqs"
        " and ids. Idempotent: events the log holds already are checked, not appended again; a"
        " file that disagrees with the log is refused naming the first seq that differs."
        " Needs the daemon stopped.",
    )
    i.add_argument("db", nargs="?", default=None, help=OPS_DB_HELP + " (default: the daemon's)")
    i.set_defaults(handler=_log_import)

    m = sub.add_parser(
        "migrate",
        help="copy the log from one database to another, seqs and ids kept, then verify" + needs,
        description="Copy the event log of SRC into DST (any two backends) with seqs and ids kept,"
        " from where DST's head is, after checking that what DST holds agrees with SRC; then"
        " verify DST. Run it again to resume. SRC may be served by a running daemon, DST not.",
    )
    m.add_argument("src", help=OPS_DB_HELP)
    m.add_argument("dst", help=OPS_DB_HELP)
    m.set_defaults(handler=_migrate)

    p = sub.add_parser(
        "purge",
        help="remove for good the runs deleted more than DAYS days ago (daemon stopped)" + needs,
        description="Remove the events and rows of runs deleted (tracklog delete) more than DAYS"
        " days ago and not restored: a new generation of the log is written without them (seqs"
        " and ids of the other events kept), verified, and swapped in; the old generation is"
        " removed once the new one verifies in place. Needs the daemon stopped.",
    )
    p.add_argument(
        "--older-than", type=float, required=True, metavar="DAYS", help="deleted more than DAYS ago"
    )
    p.add_argument("--db", default=None, help=OPS_DB_HELP)
    p.add_argument(
        "--dry-run", action="store_true", help="list the runs a purge would remove, remove nothing"
    )
    p.add_argument("--keep-old", action="store_true", help="keep the old generation aside (DB.previous)")
    p.set_defaults(handler=_purge)


def _log_export(args: argparse.Namespace) -> int:
    try:
        from tracklog.daemon import ops_commands
    except ImportError as exc:
        return _not_installed("log export", exc)

    db = _db(args)
    return ops_commands.log_export(db, sys.stdout.buffer, args.from_seq, args.to_seq, args.run)


def _log_import(args: argparse.Namespace) -> int:
    try:
        from tracklog.daemon import ops_commands
    except ImportError as exc:
        return _not_installed("log import", exc)

    db = _db(args)
    return ops_commands.log_import(db, sys.stdin.buffer)


def _migrate(args: argparse.Namespace) -> int:
    try:
        from tracklog.daemon import ops_commands
    except ImportError as exc:
        return _not_installed("migrate", exc)

    return ops_commands.migrate(args.src, args.dst)


def _purge(args: argparse.Namespace) -> int:
    try:
        from tracklog.daemon import ops_commands
    except ImportError as exc:
        return _not_installed("purge", exc)
    if args.older_than < 0:
        print("tracklog purge: --older-than: expected 0 or more days", file=sys.stderr)
        return 2
    db = _db(args)
    return ops_commands.purge(db, args.older_than, keep_old=args.keep_old, dry_run=args.dry_run)
