"""An exclusive lock on a database, held by `serve` for its life and by `rebuild` and `replay`.

The lock is `fcntl.flock` on `<db>.lock` beside the database, which holds the PID of the
process that has it. The OS releases it when that process ends, even by `kill -9`, so a
crashed daemon never leaves the database locked. The file itself is left in place:
removing it could let two processes lock two different files of the same name.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from tracklog.protocol import errors


class DatabaseLocked(errors.TracklogError):
    """Another process (a running daemon, a rebuild, a replay) has the database."""


def lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


def holder_pid(db: Path) -> int | None:
    """The PID written in the lock file, if any (the holder's, when the lock is held)."""
    try:
        return int(lock_path(db).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def exclusive(db: Path) -> Iterator[None]:
    """Hold the database's lock for the block, or raise DatabaseLocked naming the holder."""
    path = lock_path(db)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = holder_pid(db)
            who = f"process {pid}" if pid is not None else "another process"
            raise DatabaseLocked(
                f"{db} is in use by {who} (a running `tracklog serve`, rebuild or replay); stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock
