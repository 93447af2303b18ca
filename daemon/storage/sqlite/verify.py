"""Checking an SQLite database's projections against a rebuild from its log.

`verify` snapshots the database (the daemon may be writing), rebuilds a second copy's
tables from its log and compares the two table by table in key order, printing the
differences.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path
from typing import TextIO

from ..sqlcommon.verify import compare_tables, iter_table
from .connect import connect

__all__ = ["compare_tables", "iter_table", "snapshot", "verify"]


def snapshot(db: Path, out: Path) -> None:
    """A consistent copy of db (the daemon may be writing), through SQLite's backup API.

    Read-only, and in one read transaction: every page is copied in a single backup step,
    so a running daemon is neither blocked nor disturbed and the copy is one state of it.
    """
    source = connect(db, readonly=True)
    target = sqlite3.connect(out)
    try:
        source.backup(target, pages=-1)
    finally:
        target.close()
        source.close()


def verify(db: Path, out: TextIO) -> int:
    """Rebuild a snapshot of db into scratch tables and compare them with its live tables;
    prints what differs (or that the live tables are behind the log) and returns the count."""
    from .eventlog import SqliteEventLog  # the log rebuilds; this module only compares

    with tempfile.TemporaryDirectory(prefix="tracklog-verify-") as tmp:
        live_path = Path(tmp) / "live.db"
        rebuilt_path = Path(tmp) / "rebuilt.db"
        snapshot(db, live_path)
        shutil.copyfile(live_path, rebuilt_path)
        rebuilt_log = SqliteEventLog(rebuilt_path)
        try:
            head = rebuilt_log.head
            rebuilt_log.rebuild()
        finally:
            rebuilt_log.close()
        with closing(sqlite3.connect(live_path)) as live, closing(sqlite3.connect(rebuilt_path)) as rebuilt:
            applied = live.execute("SELECT value FROM meta WHERE key = 'applied_seq'").fetchone()
            if applied is None or int(applied[0] or 0) != head:
                print(f"live tables are at seq {applied and applied[0]}, the log at {head}", file=out)
                return 1
            diffs = compare_tables(live, rebuilt, out)
    if diffs:
        print(f"verify: {diffs} differences between the live tables and a rebuild from the log", file=out)
    else:
        print(f"verify: the live tables equal a rebuild from the log ({head} events)", file=out)
    return diffs
