"""Checking an SQLite database's projections against a rebuild from its log.

`verify` snapshots the database (the daemon may be writing), rebuilds a second copy's
tables from its log and compares the two table by table in key order, printing the
differences.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, TextIO

from ..sqlcommon.schema import PROJECTION_TABLES
from .connect import connect


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


def iter_table(conn: sqlite3.Connection, table: str, schema: str = "main") -> Iterator[tuple[Any, ...]]:
    """A projection table's rows in key order."""
    order = PROJECTION_TABLES[table]
    yield from conn.execute(f"SELECT * FROM {schema}.{table} ORDER BY {order}")


def compare_tables(
    live: sqlite3.Connection, rebuilt: sqlite3.Connection, out: TextIO, max_diffs: int = 20
) -> int:
    """Print the differences between two databases' projection tables; returns their count."""
    diffs = 0
    for table in PROJECTION_TABLES:
        columns = [r[1] for r in live.execute(f"PRAGMA table_info({table})")]
        key_columns = [c.strip() for c in PROJECTION_TABLES[table].split(",")]
        key_at = [columns.index(c) for c in key_columns]
        a_rows = iter_table(live, table)
        b_rows = iter_table(rebuilt, table)
        a = next(a_rows, None)
        b = next(b_rows, None)
        while a is not None or b is not None:
            ka = tuple(a[i] for i in key_at) if a is not None else None
            kb = tuple(b[i] for i in key_at) if b is not None else None
            if a is not None and b is not None and ka == kb:
                if a != b:
                    changed = [
                        f"{col}: live={x!r:.80} rebuilt={y!r:.80}"
                        for col, x, y in zip(columns, a, b, strict=True)
                        if x != y and not (x != x and y != y)  # NaN equals NaN here
                    ]
                    if changed:
                        diffs += 1
                        if diffs <= max_diffs:
                            print(
                                f"{table} {dict(zip(key_columns, ka or (), strict=True))}: "
                                + "; ".join(changed),
                                file=out,
                            )
                a, b = next(a_rows, None), next(b_rows, None)
            elif b is None or (a is not None and ka is not None and kb is not None and _lt(ka, kb)):
                diffs += 1
                if diffs <= max_diffs:
                    print(
                        f"{table} {dict(zip(key_columns, ka or (), strict=False))}: only in the live table",
                        file=out,
                    )
                a = next(a_rows, None)
            else:
                diffs += 1
                if diffs <= max_diffs:
                    print(
                        f"{table} {dict(zip(key_columns, kb or (), strict=False))}: only in the rebuilt"
                        " table",
                        file=out,
                    )
                b = next(b_rows, None)
    if diffs > max_diffs:
        print(f"... and {diffs - max_diffs} more differences", file=out)
    return diffs


def _lt(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    # SQLite orders NULL first, then numbers, then text, then blobs.
    def rank(v: Any) -> tuple[int, Any]:
        if v is None:
            return (0, 0)
        if isinstance(v, (int, float)):
            return (1, v)
        if isinstance(v, str):
            return (2, v.encode())
        return (3, bytes(v))

    return tuple(map(rank, a)) < tuple(map(rank, b))


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
