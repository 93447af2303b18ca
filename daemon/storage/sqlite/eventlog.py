"""The event log in SQLite: appends with their projections in one transaction, and reads.

`SqliteEventLog` is used from one thread only (the writer's, or a command's): it owns the
write connection. What it shares with the other SQL backends is in
`sqlcommon.eventlog.SqlEventLog`; here are SQLite's connection, transactions, disk-full
errors, verify/replay through snapshot files, and the dedup loader's own connection.
sqlite3 errors are turned into StorageError and go no further.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import ClassVar, Final, TextIO

import msgspec

from tracklog.protocol import errors

from ... import dedup as dd
from ... import ingest
from ...dedup_persist import DedupRuntime
from ..sqlcommon.dedup_entries import SqlDedupEntries
from ..sqlcommon.dialect import SQLITE
from ..sqlcommon.eventlog import HEAD_FLOOR, SqlEventLog, decode_data, read_events
from ..sqlcommon.schema import LOG_DDL
from . import verify as verification
from .connect import Durability, connect, is_disk_full

_encode = msgspec.msgpack.Encoder().encode
#: The page cache of a log opened read-only, in KiB.
_READER_CACHE_KIB: Final = 8192

__all__ = ["SqliteEventLog", "decode_data", "read_events"]


class SqliteEventLog(SqlEventLog):
    """The log and its projections in one SQLite database (tables in `sqlcommon/schema.py`)."""

    db_errors: ClassVar[tuple[type[Exception], ...]] = (sqlite3.Error,)
    conn: sqlite3.Connection

    def __init__(
        self,
        path: str | os.PathLike[str],
        durability: Durability = "normal",
        clock: Callable[[], float] = time.time,
        readonly: bool = False,
    ) -> None:
        self.path = Path(path)
        #: Opened read-only (`open_reader`): reads while a daemon writes, never a write.
        self.readonly = readonly
        super().__init__(connect(path, durability, readonly=readonly), SQLITE, clock)
        #: The near-duplicate indexes, in memory; loaded by `load_dedup` (or the first check).
        self.dedup = dd.DedupIndexes(None if str(path) == ":memory:" else Path(os.fspath(path) + ".dedup"))
        try:
            if readonly:
                # A reader streams the log once (exports, a migration's source): a small
                # page cache, so its memory does not grow with the log up to the writer's.
                self.conn.execute(f"PRAGMA cache_size = -{_READER_CACHE_KIB}")
            else:
                self.conn.executescript(LOG_DDL)
            self.head = self._read_head()
        except sqlite3.Error as exc:
            raise errors.StorageError(f"cannot prepare {path}: {exc}") from exc

    def __str__(self) -> str:
        return str(self.path)

    def close(self) -> None:
        if self.readonly:
            self.conn.close()
            return
        with contextlib.suppress(sqlite3.Error):  # a log that cannot checkpoint still closes
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.close()

    def _abort(self) -> None:
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _present_tables(self) -> set[str]:
        # The FTS5 index `search` is not compared by verify, but it is a projection too:
        # reported missing (so rebuilt) under the name of the table it indexes.
        names = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return names if "search" in names else names - {"search_docs"}

    def _is_disk_full(self, exc: Exception) -> bool:
        return is_disk_full(exc)

    def verify(self, out: TextIO) -> int:
        """Rebuild a snapshot of this database into scratch tables and compare them with a
        second snapshot's live tables (a running daemon may be writing: both come from one
        consistent copy)."""
        try:
            return verification.verify(self.path, out)
        except sqlite3.Error as exc:
            raise errors.StorageError(f"verify failed: {exc}") from exc

    def replay(self, to_seq: int, target: str) -> int:
        try:
            verification.snapshot(self.path, Path(target))
            with closing(sqlite3.connect(target)) as conn:
                conn.execute("DELETE FROM events WHERE seq > ?", (to_seq,))
                # A head a purge kept past the last event holds only up to to_seq too.
                conn.execute("UPDATE meta SET value = min(value, ?) WHERE key = ?", (to_seq, HEAD_FLOOR))
                conn.commit()
            replayed = SqliteEventLog(target)
            try:
                applied = replayed.rebuild()
                replayed.conn.execute("VACUUM")
            finally:
                replayed.close()
        except sqlite3.Error as exc:
            raise errors.StorageError(f"replay failed: {exc}") from exc
        return applied

    @contextlib.contextmanager
    def dedup_snapshot(self) -> Iterator[SqlDedupEntries]:
        """The dedup projection as of now, on a read-only connection of its own (for the
        loader thread: one read transaction, so one consistent state)."""
        conn = connect(self.path, readonly=True)
        try:
            conn.execute("BEGIN")
            yield SqlDedupEntries(conn, self.db_errors)
        except sqlite3.Error as exc:
            raise errors.StorageError(f"cannot read dedup_entries: {exc}") from exc
        finally:
            conn.close()

    def dedup_loader(
        self, executor: ThreadPoolExecutor, loop: asyncio.AbstractEventLoop, files: Path | None
    ) -> DedupRuntime:
        return DedupRuntime(self, executor, loop, files)

    def _insert_new(self, rows: list[ingest.Row]) -> bool:
        """Insert rows whose ids are presumed new; False (with nothing left inserted) if the
        log held one of them already. The unique index finds them: no lookup of every id."""
        encode = _encode
        encoded = [
            (seq, id_, type_, run, ts, rec, encode(data)) for seq, id_, type_, run, ts, rec, data in rows
        ]
        conn = self.conn
        before = conn.total_changes
        conn.executemany(
            "INSERT OR IGNORE INTO events(seq, id, type, run, ts, recorded, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            encoded,
        )
        if conn.total_changes - before != len(rows):
            conn.execute("DELETE FROM events WHERE seq >= ?", (rows[0][0],))
            return False
        self.head = rows[-1][0]
        return True
