"""The daemon's commands: serve, rebuild, verify, replay, backup.

Each names its database by a `--db` value (a path, `sqlite:///PATH`, `postgresql://...`) and gets the event
log from `storage.open_backend`; none of them touches a database itself.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import replace
from typing import TextIO

from tracklog.protocol import errors

from . import logs
from .artifacts import ArtifactStore, artifacts_dir_for, check_blobs, copy_blobs
from .dblock import DatabaseLocked
from .server import Daemon, Settings
from .storage import Backend, Durability, PgBackend, open_backend
from .storage.readmodel import open_read_model
from .storage.sqlcommon.schema import PROJECTION_TABLES

Database = str | os.PathLike[str]


def serve(settings: Settings, log_level: str | None = None) -> int:
    """Run the daemon, holding the database's lock for its whole life."""
    if log_level is not None:
        settings = replace(settings, log_level=log_level)
    try:
        backend = open_backend(settings.db, settings.durability)
        daemon = Daemon(settings)
    except errors.TracklogError as exc:
        print(f"tracklog serve: {exc}", file=sys.stderr)
        return 2
    # After the daemon read its environment file, which may set the level.
    logs.configure(daemon.settings.log_level, daemon.settings.log_format)
    try:
        with backend.exclusive():
            asyncio.run(daemon.run())
    except DatabaseLocked as exc:
        print(f"tracklog serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tracklog serve: {exc}", file=sys.stderr)
        return 1
    return 0


def rebuild(db: Database, durability: Durability = "normal") -> int:
    """Rebuild every projection table of db from its log; refused while a daemon serves it."""
    try:
        backend = open_backend(db, durability)
        if not backend.exists():
            print(f"tracklog rebuild: no database at {backend}", file=sys.stderr)
            return 2
        with backend.exclusive():
            log = backend.open_log()
            try:
                applied = log.rebuild()
            finally:
                log.close()
    except (DatabaseLocked, errors.StorageError) as exc:
        print(f"tracklog rebuild: {exc}", file=sys.stderr)
        return 2
    print(f"rebuilt {len(PROJECTION_TABLES)} tables from {applied} events")
    return 0


def verify(db: Database, out: TextIO | None = None) -> int:
    """Rebuild a snapshot of db into scratch tables and compare them with its live tables.

    Read-only, so a running daemon's database can be verified.
    """
    try:
        backend = open_backend(db)
        if not backend.exists():
            print(f"tracklog verify: no database at {backend}", file=sys.stderr)
            return 2
        log = backend.open_log()
        try:
            diffs = log.verify(out or sys.stdout)  # looked up now: tests replace sys.stdout
        finally:
            log.close()
        diffs += _check_artifacts(backend, out or sys.stdout)
    except errors.StorageError as exc:
        print(f"tracklog verify: {exc}", file=sys.stderr)
        return 2
    return 1 if diffs else 0


def _stored_blobs(url: str) -> list[dict[str, object]]:
    """The artifacts whose bytes are in the artifact store, as the database at url names them."""
    model = open_read_model(url)
    try:
        with model.snapshot("verify"):
            return model.stored_blobs()
    finally:
        model.close()


def _check_artifacts(backend: Backend, out: TextIO) -> int:
    """Every blob the tables name is in the artifact store, whole: one line per one that is not."""
    root = backend.artifacts_dir
    if root is None:
        return 0
    return check_blobs(ArtifactStore(root), _stored_blobs(backend.url), out)


def backup(db: Database, dest: Database) -> int:
    """Copy db to dest online (a running daemon goes on writing); dest must not exist.

    Then the artifact blobs the copy names go to `DEST.artifacts/`, each checked against its
    digest as it is copied: a missing or corrupt one is reported and the exit status is 1.
    """
    try:
        backend = open_backend(db)
        if not backend.exists():
            print(f"tracklog backup: no database at {backend}", file=sys.stderr)
            return 2
        blobs_dest = artifacts_dir_for(dest)
        if blobs_dest.exists():
            print(f"tracklog backup: {blobs_dest} exists; choose another destination", file=sys.stderr)
            return 2
        head = backend.backup(dest)
        problems = 0
        copied = 0
        if backend.artifacts_dir is not None:
            rows = _stored_blobs(os.fspath(dest))
            copied = len({row["blob"] for row in rows})
            if rows:
                problems = copy_blobs(ArtifactStore(backend.artifacts_dir), blobs_dest, rows, sys.stderr)
    except (errors.StorageError, OSError) as exc:
        print(f"tracklog backup: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {dest}: the log up to seq {head} with its tables, and {copied - problems} artifact blobs")
    if problems:
        print(
            f"tracklog backup: {problems} artifact blobs missing or corrupt (listed above)", file=sys.stderr
        )
        return 1
    return 0


def replay(db: Database, to_seq: int, out_path: Database) -> int:
    """Write a new database holding the log up to to_seq and the state as of that seq."""
    try:
        backend = open_backend(db)
        target = open_backend(out_path)
        if not backend.exists():
            print(f"tracklog replay: no database at {backend}", file=sys.stderr)
            return 2
        with target.exclusive():
            if target.exists():
                print(f"tracklog replay: {target} exists; remove it or choose another path", file=sys.stderr)
                return 2
            log = backend.open_log()
            try:
                # A PostgreSQL URL as given (its str() hides the password); a file as its path.
                applied = log.replay(
                    to_seq, os.fspath(out_path) if isinstance(target, PgBackend) else str(target)
                )
            finally:
                log.close()
    except (DatabaseLocked, errors.StorageError) as exc:
        print(f"tracklog replay: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {target}: {applied} events, state as of seq {min(to_seq, applied)}")
    return 0
