"""An online copy of a database with SQLite's backup API, while a daemon writes to it.

The copy reads the source on a read-only connection a batch of pages at a time; SQLite
restarts a step when the writer changed a page it already copied, so the copy ends as one
consistent state of the log and its projections, at a seq between the start and the end
of the backup. The destination is written beside itself and renamed in last, so a failed
backup leaves no half database under its name.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Final

from tracklog.protocol import errors

from .connect import connect

#: Pages copied per step: small enough that the writer is never held for long.
PAGES_PER_STEP: Final = 4096


def backup(source: str | os.PathLike[str], dest: str | os.PathLike[str]) -> int:
    """Copy source to dest (which must not exist); the head seq the copy holds."""
    dest_path = Path(dest)
    if dest_path.exists():
        raise errors.StorageError(f"{dest_path} exists; remove it or choose another path")
    partial = dest_path.with_name(dest_path.name + ".partial")
    partial.unlink(missing_ok=True)
    src = connect(source, readonly=True)
    try:
        out = sqlite3.connect(os.fspath(partial), isolation_level=None)
        try:
            src.backup(out, pages=PAGES_PER_STEP)
            out.execute("PRAGMA journal_mode = WAL")
            (check,) = out.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise errors.StorageError(f"the copy failed its check: {check}")
            (head,) = out.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        finally:
            out.close()
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise errors.StorageError(f"backup of {source} failed: {exc}") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        src.close()
    for suffix in ("-wal", "-shm"):
        Path(os.fspath(partial) + suffix).unlink(missing_ok=True)
    partial.rename(dest_path)
    return int(head)
