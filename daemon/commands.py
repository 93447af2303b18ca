"""The daemon's commands: serve, rebuild, verify, replay."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from tracklog.protocol import errors

from . import logs
from .dblock import DatabaseLocked, exclusive
from .schema import PROJECTION_TABLES
from .server import Daemon, Settings
from .store import Durability, LogStore, connect, iter_table


def serve(settings: Settings, log_level: str | None = None) -> int:
    """Run the daemon, holding the database's lock for its whole life."""
    if log_level is not None:
        settings = replace(settings, log_level=log_level)
    try:
        daemon = Daemon(settings)
    except errors.TracklogError as exc:
        print(f"tracklog serve: {exc}", file=sys.stderr)
        return 2
    # After the daemon read its environment file, which may set the level.
    logs.configure(daemon.settings.log_level, daemon.settings.log_format)
    try:
        with exclusive(Path(settings.db)):
            asyncio.run(daemon.run())
    except DatabaseLocked as exc:
        print(f"tracklog serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tracklog serve: {exc}", file=sys.stderr)
        return 1
    return 0


def rebuild(db: Path, durability: Durability = "normal") -> int:
    """Rebuild every projection table of db from its log; refused while a daemon serves it."""
    if not db.exists():
        print(f"tracklog rebuild: no database at {db}", file=sys.stderr)
        return 2
    try:
        with exclusive(db):
            store = LogStore(db, durability)
            try:
                applied = store.rebuild()
            finally:
                store.close()
    except DatabaseLocked as exc:
        print(f"tracklog rebuild: {exc}", file=sys.stderr)
        return 2
    print(f"rebuilt {len(PROJECTION_TABLES)} tables from {applied} events")
    return 0


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


def _rows(conn: sqlite3.Connection, table: str) -> Iterator[tuple[Any, ...]]:
    return iter_table(conn, table)


def compare_tables(
    live: sqlite3.Connection, rebuilt: sqlite3.Connection, out: TextIO, max_diffs: int = 20
) -> int:
    """Print the differences between two databases' projection tables; returns their count."""
    diffs = 0
    for table in PROJECTION_TABLES:
        columns = [r[1] for r in live.execute(f"PRAGMA table_info({table})")]
        key_columns = [c.strip() for c in PROJECTION_TABLES[table].split(",")]
        key_at = [columns.index(c) for c in key_columns]
        a_rows = _rows(live, table)
        b_rows = _rows(rebuilt, table)
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
                                f"{table} {dict(zip(key_columns, ka, strict=True))}: " + "; ".join(changed),
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


def verify(db: Path, out: TextIO = sys.stdout) -> int:
    """Rebuild a snapshot of db into scratch tables and compare them with its live tables."""
    if not db.exists():
        print(f"tracklog verify: no database at {db}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="tracklog-verify-") as tmp:
        live_path = Path(tmp) / "live.db"
        rebuilt_path = Path(tmp) / "rebuilt.db"
        snapshot(db, live_path)
        shutil.copyfile(live_path, rebuilt_path)
        store = LogStore(rebuilt_path)
        try:
            head = store.head
            store.rebuild()
        finally:
            store.close()
        live = sqlite3.connect(live_path)
        rebuilt = sqlite3.connect(rebuilt_path)
        try:
            applied = live.execute("SELECT value FROM meta WHERE key = 'applied_seq'").fetchone()
            if applied is None or int(applied[0] or 0) != head:
                print(f"live tables are at seq {applied and applied[0]}, the log at {head}", file=out)
                return 1
            diffs = compare_tables(live, rebuilt, out)
        finally:
            live.close()
            rebuilt.close()
    if diffs:
        print(f"verify: {diffs} differences between the live tables and a rebuild from the log", file=out)
        return 1
    print(f"verify: the live tables equal a rebuild from the log ({head} events)", file=out)
    return 0


def replay(db: Path, to_seq: int, out_path: Path) -> int:
    """Write a new database holding the log up to to_seq and the state as of that seq."""
    if not db.exists():
        print(f"tracklog replay: no database at {db}", file=sys.stderr)
        return 2
    try:
        with exclusive(out_path):
            if out_path.exists():
                print(
                    f"tracklog replay: {out_path} exists; remove it or choose another path", file=sys.stderr
                )
                return 2
            return _replay(db, to_seq, out_path)
    except DatabaseLocked as exc:
        print(f"tracklog replay: {exc}", file=sys.stderr)
        return 2


def _replay(db: Path, to_seq: int, out_path: Path) -> int:
    snapshot(db, out_path)
    conn = sqlite3.connect(out_path)
    conn.execute("DELETE FROM events WHERE seq > ?", (to_seq,))
    conn.commit()
    conn.close()
    store = LogStore(out_path)
    try:
        applied = store.rebuild()
        store.conn.execute("VACUUM")
    finally:
        store.close()
    print(f"wrote {out_path}: {applied} events, state as of seq {min(to_seq, applied and store.head)}")
    return 0
