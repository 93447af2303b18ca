"""Opening SQLite the way tracklog uses it, and telling its errors apart.

Only the storage package imports this: sqlite3 and its exceptions go no further.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Final, Literal

from tracklog.protocol import errors

#: How hard a commit is made durable: `normal` survives a daemon crash, `full` power loss.
Durability = Literal["normal", "full"]
#: SQLite's result code for "database or disk is full" (SQLITE_FULL).
SQLITE_FULL: Final = 13
#: Each connection's page cache bound, in KiB (SQLite's negative `cache_size`): 64 MiB.
#: The daemon keeps the writer's and its readers' (queries.READERS) connections open for
#: its life, so up to (1 + READERS) x 64 MiB = 192 MiB of its RSS is page cache once they
#: have touched that many pages: under a steady load its RSS climbs to that and stays
#: (bench/soak.py, README "Soak"). Short-lived connections that scan once use less.
PAGE_CACHE_KIB: Final = 65536


def connect(
    path: str | os.PathLike[str], durability: Durability = "normal", readonly: bool = False
) -> sqlite3.Connection:
    """An SQLite connection set up the way tracklog uses it (WAL, autocommit off by hand)."""
    try:
        if readonly:
            uri = Path(path).resolve().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(os.fspath(path), isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {'FULL' if durability == 'full' else 'NORMAL'}")
            # Fewer, larger checkpoints: the writer commits often.
            conn.execute("PRAGMA wal_autocheckpoint = 4000")
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")
        conn.execute("PRAGMA temp_store = MEMORY")
    except sqlite3.Error as exc:
        raise errors.StorageError(f"cannot open {path}: {exc}") from exc
    return conn


def is_disk_full(exc: BaseException) -> bool:
    """Whether SQLite failed because the disk (or the database's page limit) is full."""
    if not isinstance(exc, sqlite3.Error):
        return False
    return getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL or "database or disk is full" in str(exc)


def ddl_statements(script: str) -> list[str]:
    """The statements of a DDL script, one by one, so they can run inside a transaction
    (executescript would commit first). Statements end where SQLite says they are complete,
    so a `;` inside a comment or a string does not cut one."""
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current)
            current = ""
    if current.strip() and not all(
        part.strip().startswith("--") or not part.strip() for part in current.splitlines()
    ):
        raise ValueError(f"incomplete statement at the end of the script: {current.strip()[:80]}")
    return statements
