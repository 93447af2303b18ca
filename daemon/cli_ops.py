"""The operations commands on the `tracklog` command line: `log export`, `log import`,
`migrate`, `purge`. Standard library only, like cli.py: the command imports the daemon
when it runs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

DB_HELP = "database: a path, sqlite:///PATH or memory:"


def add_ops_commands(sub: Any, needs: str, default_db: Any) -> None:
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
    e.add_argument("db", nargs="?", default=None, help=DB_HELP + " (default: the daemon's)")
    e.add_argument("--from-seq", type=int, default=0, metavar="N", help="only events after seq N")
    e.add_argument("--to-seq", type=int, default=None, metavar="N", help="only events up to seq N")
    e.add_argument("--run", default=None, metavar="R", help="only the events of run R (a full id)")
    e.set_defaults(handler=lambda args: _log_export(args, default_db))
    i = log_sub.add_parser(
        "import",
        help="append the events of a JSON Lines export from stdin (daemon stopped)",
        description="Append the events of a `tracklog log export` read from stdin, with their seqs"
        " and ids. Idempotent: events the log holds already are checked, not appended again; a"
        " file that disagrees with the log is refused naming the first seq that differs."
        " Needs the daemon stopped.",
    )
    i.add_argument("db", nargs="?", default=None, help=DB_HELP + " (default: the daemon's)")
    i.set_defaults(handler=lambda args: _log_import(args, default_db))

    m = sub.add_parser(
        "migrate",
        help="copy the log from one database to another, seqs and ids kept, then verify" + needs,
        description="Copy the event log of SRC into DST (any two backends) with seqs and ids kept,"
        " from where DST's head is, after checking that what DST holds agrees with SRC; then"
        " verify DST. Run it again to resume. SRC may be served by a running daemon, DST not.",
    )
    m.add_argument("src", help=DB_HELP)
    m.add_argument("dst", help=DB_HELP)
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
    p.add_argument("--db", default=None, help=DB_HELP)
    p.add_argument(
        "--dry-run", action="store_true", help="list the runs a purge would remove, remove nothing"
    )
    p.add_argument("--keep-old", action="store_true", help="keep the old generation aside (DB.previous)")
    p.set_defaults(handler=lambda args: _purge(args, default_db))


def _not_installed(command: str, exc: ImportError) -> int:
    print(
        f"tracklog {command}: the daemon is not installed ({exc}); pip install 'tracklog[daemon]'",
        file=sys.stderr,
    )
    return 2


def _log_export(args: argparse.Namespace, default_db: Any) -> int:
    try:
        from tracklog.daemon import ops_commands
    except ImportError as exc:
        return _not_installed("log export", exc)

    db = args.db if args.db is not None else default_db()
    return ops_commands.log_export(db, sys.stdout.buffer, args.from_seq, args.to_seq, args.run)


def _log_import(args: argparse.Namespace, default_db: Any) -> int:
    try:
        from tracklog.daemon import ops_commands
    except ImportError as exc:
        return _not_installed("log import", exc)

    db = args.db if args.db is not None else default_db()
    return ops_commands.log_import(db, sys.stdin.buffer)


def _migrate(args: argparse.Namespace) -> int:
    try:
        from tracklog.daemon import ops_commands
    except ImportError as exc:
        return _not_installed("migrate", exc)

    return ops_commands.migrate(args.src, args.dst)


def _purge(args: argparse.Namespace, default_db: Any) -> int:
    try:
        from tracklog.daemon import ops_commands
    except ImportError as exc:
        return _not_installed("purge", exc)
    if args.older_than < 0:
        print("tracklog purge: --older-than: expected 0 or more days", file=sys.stderr)
        return 2
    db = args.db if args.db is not None else default_db()
    return ops_commands.purge(db, args.older_than, keep_old=args.keep_old, dry_run=args.dry_run)
