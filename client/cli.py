"""The `tracklog` command line. Daemon commands import the daemon only when run."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tracklog.protocol.limits import DEFAULT_HOST, DEFAULT_PORT

from . import cli_queries
from .console import add_tail_parser, tail
from .watch import add_watch_parser, watch


def _default_db() -> Path:
    home = os.environ.get("TRACKLOG_HOME")
    if home:
        return Path(home) / "tracklog.db"
    return Path.home() / ".local" / "share" / "tracklog" / "tracklog.db"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracklog", description="Event-sourced tracking for pipelines and training jobs."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the daemon")
    s.add_argument(
        "--db",
        type=Path,
        default=None,
        help="database path (default: $TRACKLOG_HOME/tracklog.db or ~/.local/share/tracklog/tracklog.db)",
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
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    r = sub.add_parser("rebuild", help="rebuild every table from the log (daemon stopped)")
    r.add_argument("--db", default=None, help="database: a path or sqlite:///PATH")

    v = sub.add_parser(
        "verify", help="compare the live tables with a rebuild from the log; exit 1 on a difference"
    )
    v.add_argument("--db", default=None, help="database: a path or sqlite:///PATH")

    add_tail_parser(sub)
    add_watch_parser(sub)

    p = sub.add_parser("replay", help="write the state as of a seq into a new database")
    p.add_argument("--db", default=None, help="database: a path or sqlite:///PATH")
    p.add_argument("--to", type=int, required=True, metavar="SEQ", help="last seq to include")
    p.add_argument("--out", required=True, help="the new database: a path or sqlite:///PATH")

    cli_queries.add_parsers(sub)
    return parser


#: Commands that talk to a daemon over the wire: they never import the daemon.
CLIENT_COMMANDS = {"tail": tail, "watch": watch}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a reader that closes the pipe early (`| head`) ends it quietly, exit 0."""
    try:
        return _main(argv)
    except BrokenPipeError:
        _quiet_stdout()
        return 0


def _quiet_stdout() -> None:
    """stdout's reader is gone: point the descriptor at /dev/null, so the flush at exit
    does not fail again and print a traceback (the recipe of Python's signal docs)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in cli_queries.COMMANDS:
        return cli_queries.run(args)
    if args.command in CLIENT_COMMANDS:
        return CLIENT_COMMANDS[args.command](args)
    db = args.db if getattr(args, "db", None) is not None else _default_db()
    try:
        from tracklog.daemon import commands
    except ImportError as exc:
        print(
            f"tracklog {args.command}: the daemon is not installed ({exc}); pip install 'tracklog[daemon]'",
            file=sys.stderr,
        )
        return 2
    if args.command == "serve":
        from tracklog.daemon.server import Settings

        # An empty --token is passed on as given, so that serve refuses it.
        tokens = tuple(args.token) + tuple(t for t in os.environ.get("TRACKLOG_TOKENS", "").split(",") if t)
        settings = Settings(
            db=db,
            host=args.host,
            port=args.port,
            durability=args.durability,
            tokens=tokens,
            insecure=args.insecure,
            lost_after=args.lost_after,
            allow_origins=tuple(args.allow_origin),
            allow_hosts=tuple(args.allow_host),
        )
        return commands.serve(settings, args.log_level)
    if args.command == "rebuild":
        return commands.rebuild(db)
    if args.command == "verify":
        return commands.verify(db)
    if args.command == "replay":
        return commands.replay(db, args.to, args.out)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
