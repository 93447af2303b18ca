"""The operations commands: `log export`, `log import`, `migrate` and `purge`.

Each names its databases by `--db`-style values (a path, `sqlite:///PATH`, `memory:`) and
gets the logs from `storage.open_backend`, so each works on every backend. Those that
write hold the target's exclusive lock, which a running daemon holds for its life: they
are refused, naming it, while one serves the database.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import BinaryIO, Final, TextIO

from tracklog.protocol import errors

from . import logops
from .dblock import DatabaseLocked
from .logfile import BadLine
from .purge import purge as purge_log
from .storage import open_backend

Database = str | os.PathLike[str]

#: Batches between two progress lines of a long import or migration.
_PROGRESS_EVERY: Final = 50


def log_export(
    db: Database,
    out: BinaryIO,
    from_seq: int = 0,
    to_seq: int | None = None,
    run: str | None = None,
    err: TextIO = sys.stderr,
) -> int:
    """Write the log (or a range of it, or one run's events) to out as JSON Lines.

    Read-only, so a running daemon's database can be exported: the export holds the log
    up to the head it had when the export began."""
    try:
        backend = open_backend(db)
        if not backend.exists():
            print(f"tracklog log export: no database at {backend}", file=err)
            return 2
        log = backend.open_reader()
        try:
            done = logops.export_log(log, out, from_seq, to_seq, run)
        finally:
            log.close()
    except errors.StorageError as exc:
        print(f"tracklog log export: {exc}", file=err)
        return 2
    print(
        f"exported {done.events} events, seqs {from_seq + 1 if done.events else '-'} to {done.last_seq}"
        f" (the log's head was {done.head})",
        file=err,
    )
    return 0


def log_import(db: Database, lines: Iterable[bytes], err: TextIO = sys.stderr) -> int:
    """Append the events of a JSON Lines export that the database lacks; needs the daemon
    stopped (the import appends under the database's exclusive lock)."""
    try:
        backend = open_backend(db)
        with backend.exclusive():
            log = backend.open_log()
            try:
                log.catch_up()
                done = logops.import_log(log, lines, _progress("imported", err))
            finally:
                log.close()
    except DatabaseLocked as exc:
        print(f"tracklog log import: {exc}. An import needs the daemon stopped.", file=err)
        return 2
    except (BadLine, errors.StorageError) as exc:
        print(f"tracklog log import: refused: {exc}", file=err)
        return 1 if isinstance(exc, (BadLine, logops.Conflict)) else 2
    print(
        f"imported {done.appended} events; {done.matched} were there already; the log's head is {done.head}",
        file=err,
    )
    return 0


def migrate(src: Database, dst: Database, out: TextIO = sys.stdout) -> int:
    """Copy the log of src into dst with seqs and ids kept, from where dst's head is, then
    verify dst. src may be served by a running daemon; dst must not be."""
    try:
        source_backend = open_backend(src)
        target_backend = open_backend(dst)
        if not source_backend.exists():
            print(f"tracklog migrate: no database at {source_backend}", file=sys.stderr)
            return 2
        if os.path.realpath(str(source_backend)) == os.path.realpath(str(target_backend)):
            print("tracklog migrate: the source and the target are the same database", file=sys.stderr)
            return 2
        with target_backend.exclusive():
            source = source_backend.open_reader()
            try:
                target = target_backend.open_log()
                try:
                    target.catch_up()
                    if target.head:
                        print(
                            f"{target_backend} holds the log up to seq {target.head}: checking and resuming",
                            file=out,
                        )
                    done = logops.migrate(source, target, _progress("copied", out))
                    print(
                        f"copied {done.appended} events ({done.matched} were there already); "
                        f"{target_backend} is at seq {done.head}",
                        file=out,
                    )
                    diffs = target.verify(out)
                finally:
                    target.close()
            finally:
                source.close()
    except DatabaseLocked as exc:
        print(f"tracklog migrate: {exc}. A migration needs the target's daemon stopped.", file=sys.stderr)
        return 2
    except logops.Conflict as exc:
        print(f"tracklog migrate: refused: {exc}", file=sys.stderr)
        return 1
    except errors.StorageError as exc:
        print(f"tracklog migrate: {exc}", file=sys.stderr)
        return 2
    return 1 if diffs else 0


def _progress(verb: str, out: TextIO) -> logops.Progress:
    """A progress callback that prints a line every few batches."""
    batches = 0

    def report(head: int) -> None:
        nonlocal batches
        batches += 1
        if batches % _PROGRESS_EVERY == 0:
            print(f"{verb} up to seq {head}", file=out, flush=True)

    return report


def purge(
    db: Database,
    older_than_days: float,
    keep_old: bool = False,
    dry_run: bool = False,
    now: float | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Remove the events and rows of runs deleted more than N days ago: a new generation
    of the log without them, checked, swapped in; needs the daemon stopped."""
    try:
        backend = open_backend(db)
        if not backend.exists():
            print(f"tracklog purge: no database at {backend}", file=sys.stderr)
            return 2
        done = purge_log(backend, older_than_days, now=now, out=out, keep_old=keep_old, dry_run=dry_run)
    except DatabaseLocked as exc:
        print(f"tracklog purge: {exc}. A purge needs the daemon stopped.", file=sys.stderr)
        return 2
    except errors.StorageError as exc:
        print(f"tracklog purge: {exc}", file=sys.stderr)
        return 1
    if not done.runs:
        print(f"nothing to purge: no run was deleted more than {older_than_days:g} days ago", file=out)
    elif dry_run:
        print(f"would purge {len(done.runs)} runs: {', '.join(done.runs)}", file=out)
    else:
        print(
            f"purged {len(done.runs)} runs ({done.events} events; {done.kept} kept, head {done.head}):"
            f" {', '.join(done.runs)}",
            file=out,
        )
        if done.aside is not None:
            print(f"the old generation is kept at {done.aside}; remove it when no longer needed", file=out)
    return 0
