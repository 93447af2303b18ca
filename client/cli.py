"""The `tracklog` command line. It never imports the daemon: the daemon's commands are
added through the `tracklog.commands` entry point group, and import the daemon when run."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import cli_queries
from .console import add_tail_parser, tail
from .tls import apply_ca_option
from .watch import add_watch_parser, watch

#: The entry point group through which other packages add commands (pyproject.toml):
#: each entry is a function that takes the subparsers and adds its commands, setting a
#: `handler(args) -> int` default. The daemon's serve, rebuild, verify and replay come
#: this way, so this module never imports the daemon.
COMMANDS_GROUP = "tracklog.commands"

#: Said by `tracklog --help` when no package added the daemon's commands.
DAEMON_HINT = "serve, rebuild, verify and replay come with the daemon: pip install 'tracklog[daemon]'"


class _Parser(argparse.ArgumentParser):
    """Adds the epilog (the install hint, when there is one) to a usage error, so
    `tracklog serve` without the daemon says what to install, not only "invalid choice"."""

    def error(self, message: str) -> NoReturn:
        super().error(f"{message}\n{self.epilog}" if self.epilog else message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tracklog", description="Event-sourced tracking for pipelines and training jobs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if not _add_plugin_commands(sub):
        parser.epilog = DAEMON_HINT
    add_tail_parser(sub)
    add_watch_parser(sub)
    cli_queries.add_parsers(sub)
    return parser


def _add_plugin_commands(sub: Any) -> bool:
    """Let each `tracklog.commands` entry point add its commands; True when one did.

    An entry point that cannot be loaded (its package half-installed) is reported on
    stderr and skipped, so the client's own commands keep working."""
    added = False
    seen: set[str] = set()
    for entry_point in importlib.metadata.entry_points(group=COMMANDS_GROUP):
        if entry_point.value in seen:  # the same install found twice on sys.path
            continue
        seen.add(entry_point.value)
        try:
            add_commands = entry_point.load()
        except ImportError as exc:
            print(f"tracklog: cannot load the {entry_point.name!r} commands: {exc}", file=sys.stderr)
            continue
        add_commands(sub)
        added = True
    return added


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
    apply_ca_option(getattr(args, "ca", None))
    if args.command in cli_queries.COMMANDS:
        return cli_queries.run(args)
    if args.command in CLIENT_COMMANDS:
        return CLIENT_COMMANDS[args.command](args)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is not None:
        return handler(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
