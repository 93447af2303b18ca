"""The PostgreSQL read model: one connection per reader answering every question of `ReadModel`.

The questions' SQL is the one SQLite runs (`sqlcommon.readmodel.SqlReadModel`), spelled
by the PostgreSQL dialect; what is PostgreSQL's own lives in `queries.py` beside this
module (full-text search over the GIN index, the `sql` and `schema` questions) or here:

- `snapshot()` is a REPEATABLE READ READ ONLY transaction, so `applied_seq` and every
  row read inside it come from one state of the database, whichever daemon wrote it;
- a connection lost (PostgreSQL restarted) fails the question it was answering with
  StorageError (`internal`, which clients retry) and is opened again for the next;
- numeric values (the sums of BIGINT columns) come back as int or float, as SQLite gives
  them, not as Decimal;
- psycopg's exceptions stay here: a statement cancelled by the statement timeout, a
  program limit (54xxx) or a data exception (22xxx: a value the query itself holds) is
  `errors.BadQuery`; anything else `errors.StorageError`.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import psycopg
from psycopg import adapt

from tracklog.protocol import errors
from tracklog.protocol.messages import Query

from ..readmodel import Rows
from ..sqlcommon.dialect import POSTGRES, Connection
from ..sqlcommon.readmodel import SqlReadModel
from . import queries
from .connect import PgConnection, PgSettings, connect, redact

_T = TypeVar("_T")
_DATABASE_SIZE = "pg_database_size(current_database())"


class _NumberLoader(adapt.Loader):
    """numeric as int when whole (a sum of integers), else float: what SQLite returns."""

    def load(self, data: Any) -> int | float:
        text = bytes(data)
        try:
            return int(text)
        except ValueError:
            return float(text)


def translate(exc: psycopg.Error | OverflowError, what: str) -> errors.TracklogError:
    """The project's exception for a driver error raised while answering `what`."""
    if isinstance(exc, OverflowError):
        return errors.BadQuery(f"{what}: a number is out of range (64-bit integers): {exc}")
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return errors.BadQuery(f"{what}: cancelled after the statement timeout: {exc}")
    state = exc.sqlstate or ""
    if state.startswith(("54", "22")) or (not state and isinstance(exc, psycopg.DataError)):
        return errors.BadQuery(f"{what}: the database refuses this query: {exc}")
    return errors.StorageError(f"query failed: {exc}")


class _Snapshot:
    """One REPEATABLE READ READ ONLY transaction. A transaction some failure left open on
    the connection is rolled back first, so one failure never spoils the next question."""

    __slots__ = ("model", "what")

    def __init__(self, model: PgReadModel, what: str) -> None:
        self.model = model
        self.what = what

    def __enter__(self) -> None:
        conn = self.model.connection()
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        except psycopg.Error as exc:
            raise translate(exc, self.what) from exc

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        conn = self.model.conn
        try:
            conn.execute("COMMIT" if exc is None else "ROLLBACK")
        except psycopg.Error as failed:
            if exc is None:
                raise translate(failed, self.what) from failed
        finally:
            self.model.after_transaction()
        if isinstance(exc, (psycopg.Error, OverflowError)):
            raise translate(exc, self.what) from exc


class PgReadModel(SqlReadModel):
    """The read model on one PostgreSQL connection of its own (not shared between threads)."""

    dialect = POSTGRES
    conn: PgConnection

    def __init__(self, settings: PgSettings) -> None:
        self.settings = settings
        self.conn = self._connect()
        #: Whether the reader role is known to be ready for `sql` (queries.prepare_reader).
        self.reader_ready = False
        #: Whether a `sql` statement ran in the transaction (its session locks are released after).
        self.ran_sql = False

    @classmethod
    def open(cls, url: str) -> PgReadModel:
        return cls(PgSettings.from_url(url))

    def __str__(self) -> str:
        return redact(self.settings.conninfo)

    def _connect(self) -> PgConnection:
        raw = connect(self.settings)
        raw.adapters.register_loader("numeric", _NumberLoader)
        return PgConnection(raw)

    def connection(self) -> PgConnection:
        """The connection, opened again if PostgreSQL dropped it (a restart, a kill)."""
        if self.conn.raw.closed:
            self.conn = self._connect()
        return self.conn

    def after_transaction(self) -> None:
        """Release session locks a `sql` statement may have taken (they outlive transactions)."""
        if self.ran_sql:
            self.ran_sql = False
            try:
                self.conn.execute("SELECT pg_advisory_unlock_all()")
            except psycopg.Error:
                self.conn.raw.close()  # a session holding unknown locks is not used again

    def close(self) -> None:
        self.conn.close()

    def _call(self, fn: Callable[..., _T], *args: Any, what: str = "query") -> _T:
        try:
            return fn(self.connection(), *args)
        except (psycopg.Error, OverflowError) as exc:
            raise translate(exc, what) from exc

    def snapshot(self, what: str = "query") -> _Snapshot:
        return _Snapshot(self, what)

    def search(self, q: Query) -> Rows:
        return self._call(queries.query_search, q, what=q.q)

    def sql(self, q: Query) -> Rows:
        if not self.reader_ready:
            queries.prepare_reader(self.settings)  # on a connection of its own: we are in a snapshot
            self.reader_ready = True
        self.ran_sql = True
        return self._call(queries.query_sql, q, what=q.q)

    def schema(self, q: Query) -> Rows:
        return self._call(queries.query_schema, q, what=q.q)

    def database_bytes(self) -> int | None:
        """pg_database_size of this database."""
        size: int = self._call(lambda conn: conn.execute(f"SELECT {_DATABASE_SIZE}").fetchone()[0])
        return size

    def sizes(self, conn: Connection, head: int) -> dict[str, Any]:
        """The database's size and the log's (table and indexes); the WAL is the server's, not
        one database's, so `wal_bytes` is 0."""
        database, log = conn.execute(f"SELECT {_DATABASE_SIZE}, pg_total_relation_size('events')").fetchone()
        return {"database_bytes": database, "wal_bytes": 0, "log_bytes": log, "log_bytes_exact": True}
