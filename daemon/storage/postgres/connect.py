"""Connecting to PostgreSQL the way tracklog uses it, and telling its errors apart.

Only the storage package imports this: psycopg and its exceptions go no further.

A `--db` URL is libpq's (`postgresql://user:password@host:port/database?sslmode=...`),
with tracklog's own settings as query parameters, taken out before libpq sees the URL:

- `statement_timeout`: how long one statement may run (or wait for the log's lock), in
  milliseconds or with a unit (`30s`, `2min`); default 60s;
- `pool_size`: connections a daemon keeps for reading (for the read model; default 4).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
import psycopg
from psycopg import pq

from tracklog.protocol import errors

from ..sqlcommon.dialect import POSTGRES, Dialect

DEFAULT_STATEMENT_TIMEOUT: Final = "60s"
DEFAULT_POOL_SIZE: Final = 4
#: SQLSTATE of "disk full" (class 53: insufficient resources).
DISK_FULL: Final = "53100"


class PgSettings(msgspec.Struct, frozen=True):
    """A PostgreSQL URL split into what libpq reads and tracklog's own settings."""

    #: The URL without tracklog's parameters (what libpq connects with).
    conninfo: str
    statement_timeout: str = DEFAULT_STATEMENT_TIMEOUT
    pool_size: int = DEFAULT_POOL_SIZE

    @classmethod
    def from_url(cls, url: str) -> PgSettings:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        ours = {k: v for k, v in query if k in ("statement_timeout", "pool_size")}
        rest = [(k, v) for k, v in query if k not in ours]
        conninfo = urlunsplit(parts._replace(query=urlencode(rest)))
        try:
            pool_size = int(ours.get("pool_size", DEFAULT_POOL_SIZE))
        except ValueError:
            raise errors.StorageError(f"{redact(url)}: pool_size: expected a whole number") from None
        if pool_size < 1:
            raise errors.StorageError(f"{redact(url)}: pool_size: expected 1 or more")
        return cls(conninfo, ours.get("statement_timeout", DEFAULT_STATEMENT_TIMEOUT), pool_size)


def redact(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def connect(settings: PgSettings) -> psycopg.Connection[Any]:
    """A connection in autocommit mode (transactions are opened by hand, as with SQLite)."""
    try:
        return psycopg.connect(
            settings.conninfo,
            autocommit=True,
            options=f"-c statement_timeout={settings.statement_timeout}",
            application_name="tracklog",
        )
    except psycopg.Error as exc:
        raise errors.StorageError(f"cannot connect to {redact(settings.conninfo)}: {exc}") from exc


def is_disk_full(exc: BaseException) -> bool:
    """Whether PostgreSQL failed because its disk is full."""
    return isinstance(exc, psycopg.Error) and exc.sqlstate == DISK_FULL


class PgConnection:
    """A psycopg connection with sqlite3's `execute` / `executemany`, statements spelled by
    the dialect: the shared SQL (sqlcommon) runs on it unchanged."""

    def __init__(self, raw: psycopg.Connection[Any], dialect: Dialect = POSTGRES) -> None:
        self.raw = raw
        self.dialect = dialect

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        # Results in binary: the log's data (bytea) arrives as it is stored, not hex-encoded
        # (range reads 1.5x faster in bench/pg_drivers.py, as fast as asyncpg's).
        return self.raw.execute(self.dialect.sql(sql), parameters, binary=True)

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> None:
        with self.raw.cursor() as cursor:
            cursor.executemany(self.dialect.sql(sql), parameters)

    def copy_rows(
        self, table: str, columns: Sequence[str], types: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> None:
        """Insert many rows through COPY FROM STDIN in binary (the fastest way in: see
        bench/pg_drivers.py). Names come from our own code, never from a request."""
        statement = f"COPY {table}({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
        with self.raw.cursor() as cursor, cursor.copy(statement) as copy:
            copy.set_types(list(types))
            for row in rows:
                copy.write_row(row)

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != pq.TransactionStatus.IDLE

    def close(self) -> None:
        self.raw.close()
