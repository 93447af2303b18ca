"""Generations of an SQLite database: a purge writes the log without some runs into a new
file beside the database, checks it, then swaps it in.

    PATH                 the live generation
    PATH.next            the new generation while it is written and checked (a purge that
                         did not finish leaves it; the next purge removes it first)
    PATH.previous        the old generation, kept aside by the swap until the new one has
                         verified in place (then removed, unless the operator keeps it)
    PATH.previous.dedup  the old generation's saved dedup indexes (they index entries the
                         purge removed, so they go aside with it)

The swap takes both databases out of WAL mode first. SQLite allows that only when no other
connection has the file open, so a reader still on the live database (an export, a
`verify`, `sql --db`) makes the swap fail rather than be left reading a `-wal` and `-shm`
that would then belong to another file; and neither database has a `-wal` to carry. Then
the old file is hard-linked aside and the new one renamed over PATH with one rename(2): at
every moment PATH is one whole generation, the old or the new, whatever is killed when.
The next connection puts PATH back in WAL mode.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from pathlib import Path

from tracklog.protocol import errors


def next_path(db: Path) -> Path:
    return db.with_name(db.name + ".next")


def aside_path(db: Path) -> Path:
    return db.with_name(db.name + ".previous")


def _dedup_dir(db: Path) -> Path:
    return Path(os.fspath(db) + ".dedup")


def _remove(db: Path) -> None:
    """A database file and everything SQLite and the dedup indexes keep beside it."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(os.fspath(db) + suffix).unlink(missing_ok=True)
    shutil.rmtree(_dedup_dir(db), ignore_errors=True)


def new_generation(db: Path) -> Path:
    """The path of a new, empty generation beside db (a stale one removed)."""
    path = next_path(db)
    _remove(path)
    return path


def _leave_wal(path: Path) -> None:
    """Switch a database to a rollback journal: checkpoints and removes its -wal and -shm.
    Refused by SQLite while another connection has it open."""
    try:
        conn = sqlite3.connect(os.fspath(path), isolation_level=None, timeout=5)
        try:
            (mode,) = conn.execute("PRAGMA journal_mode = DELETE").fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        raise errors.StorageError(
            f"{path} is open in another process (an export, a verify, `sql --db`?): the swap needs it"
            f" closed; nothing was changed, try again when it ends ({exc})"
        ) from exc
    if str(mode).lower() != "delete":
        raise errors.StorageError(f"{path}: cannot leave WAL mode for the swap (journal mode {mode})")


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_in(db: Path, new: Path) -> Path:
    """Make the closed generation `new` the database at db; the old one is kept aside at
    the returned path. db and new must have no open connection."""
    if not new.exists():
        raise errors.StorageError(f"{new}: no new generation to swap in")
    _leave_wal(new)
    _leave_wal(db)
    aside = aside_path(db)
    _remove(aside)
    os.link(db, aside)
    if _dedup_dir(db).exists():
        os.replace(_dedup_dir(db), _dedup_dir(aside))
    os.replace(new, db)
    with contextlib.suppress(OSError):  # a directory that cannot be synced still holds the rename
        _sync_dir(db.parent)
    return aside


def drop_aside(db: Path) -> None:
    """Remove the old generation kept aside by a swap, with its dedup indexes."""
    _remove(aside_path(db))
