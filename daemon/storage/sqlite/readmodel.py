"""The SQLite read model: a read-only connection answering every question of `ReadModel`.

Each reader thread opens its own (`SqliteReadModel.open`). The questions' SQL shared with
PostgreSQL is bound in `sqlcommon.readmodel.SqlReadModel`; what is SQLite's own lives
beside this module (FTS5 search, the `sql` and `schema` questions) or here (the sizes of
`stats`). This class keeps sqlite3's exceptions inside the storage package: a statement
SQLite refuses for its size or shape, or a number beyond 64 bits, is `errors.BadQuery`;
any other database failure is `errors.StorageError`.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, TypeVar

from tracklog.protocol import errors
from tracklog.protocol.messages import Query

from ..readmodel import Rows
from ..sqlcommon.dialect import SQLITE, Connection
from ..sqlcommon.readmodel import SqlReadModel
from . import search, sql
from .connect import connect

_T = TypeVar("_T")

#: SQLite errors that a query causes by its size or shape (not a fault of the daemon).
QUERY_FAULTS: Final = (
    "expression tree is too large",
    "too many sql variables",
    "tables in a join",
    "like or glob pattern too complex",
    "parser stack overflow",
    "string or blob too big",
    "too many terms",
    "too many columns",
    "bad json path",
    "malformed json",
    "json path error",
)
#: Pages of cache (in KiB, as SQLite's negative cache_size) for a model that reads once.
SCAN_CACHE_KIB: Final = 2048
#: Databases up to this size have their log measured page by page (dbstat walks every page).
EXACT_LOG_BYTES_UNDER: Final = 64 * 1024 * 1024


def sqlite_path(url: str) -> str:
    """The file a `sqlite:///path` URL (or a plain path) names."""
    for prefix in ("sqlite:///", "sqlite://"):
        if url.startswith(prefix):
            rest = url[len(prefix) :]
            return "/" + rest if prefix == "sqlite:///" and not rest.startswith("/") else rest
    return url


def translate(exc: sqlite3.Error | OverflowError, what: str) -> errors.TracklogError:
    """The project's exception for a driver error raised while answering `what`."""
    if isinstance(exc, OverflowError):
        return errors.BadQuery(f"{what}: a number is out of range (64-bit integers): {exc}")
    text = str(exc)
    if any(fault in text.lower() for fault in QUERY_FAULTS):
        return errors.BadQuery(f"{what}: the database refuses this query as too large or complex: {text}")
    return errors.StorageError(f"query failed: {exc}")


class _Snapshot:
    """One read transaction on a connection, translating sqlite3's errors raised inside it.

    A class rather than a generator-based context manager: it is entered once per query,
    and this costs a fraction of the generator's overhead.
    """

    __slots__ = ("conn", "what")

    def __init__(self, conn: sqlite3.Connection, what: str) -> None:
        self.conn = conn
        self.what = what

    def __enter__(self) -> None:
        try:
            self.conn.execute("BEGIN")
        except sqlite3.Error as exc:
            raise translate(exc, self.what) from exc

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as failed:
            if exc is None:
                raise translate(failed, self.what) from failed
        if isinstance(exc, (sqlite3.Error, OverflowError)):
            raise translate(exc, self.what) from exc


class SqliteReadModel(SqlReadModel):
    """The read model on one read-only SQLite connection (WAL: readers never wait on the writer)."""

    dialect = SQLITE
    conn: sqlite3.Connection

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    @classmethod
    def open(cls, path: str, *, scan: bool = False) -> SqliteReadModel:
        """A read-only connection to the database at path; with `scan`, a small page cache."""
        try:
            conn = connect(path, readonly=True)
            if scan:
                conn.execute(f"PRAGMA cache_size = -{SCAN_CACHE_KIB}")
        except sqlite3.Error as exc:
            raise errors.StorageError(f"cannot open {path} for reading: {exc}") from exc
        return cls(conn)

    def close(self) -> None:
        self.conn.close()

    def _call(self, fn: Callable[..., _T], *args: Any, what: str = "query") -> _T:
        try:
            return fn(self.conn, *args)
        except (sqlite3.Error, OverflowError) as exc:
            raise translate(exc, what) from exc

    def snapshot(self, what: str = "query") -> _Snapshot:
        return _Snapshot(self.conn, what)

    def search(self, q: Query) -> Rows:
        return self._call(search.query_search, q, what=q.q)

    def sql(self, q: Query) -> Rows:
        return self._call(sql.query_sql, q, what=q.q)

    def schema(self, q: Query) -> Rows:
        return self._call(sql.query_schema, q, what=q.q)

    def sizes(self, conn: Connection, head: int) -> dict[str, Any]:
        """The file's pages, its WAL file, and the log's share of the pages."""
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        page_count = conn.execute("PRAGMA page_count").fetchone()[0]
        path = conn.execute("PRAGMA database_list").fetchone()[2]
        wal = 0
        if path:
            try:
                wal = os.path.getsize(path + "-wal")
            except OSError:
                wal = 0
        log_bytes, log_exact = _log_bytes(self.conn, head, page_size * page_count)
        return {
            "database_bytes": page_size * page_count,
            "wal_bytes": wal,
            "log_bytes": log_bytes,
            "log_bytes_exact": log_exact,
        }


def _log_bytes(conn: sqlite3.Connection, head: int, database_bytes: int) -> tuple[int | None, bool]:
    """The log's size in bytes, and whether it is exact: measured on small databases,
    estimated from the newest 1,000 events on large ones (measuring takes seconds there)."""
    if database_bytes <= EXACT_LOG_BYTES_UNDER:
        try:
            row = conn.execute(
                "SELECT coalesce(sum(pgsize), 0) FROM dbstat"
                " WHERE name IN ('events', 'events_id', 'events_run')"
            ).fetchone()
            return int(row[0]), True
        except sqlite3.Error:  # dbstat is compiled in most builds, not all
            pass
    row = conn.execute(
        "SELECT avg(length(data) + coalesce(length(id), 0) + coalesce(length(run), 0) + length(type) + 40)"
        " FROM events WHERE seq > ?",
        (head - 1000,),
    ).fetchone()
    return (int(row[0] * head) if row and row[0] is not None else 0), False
