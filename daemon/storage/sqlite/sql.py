"""The `sql` and `schema` queries: one read-only SQL statement on the daemon's database,
and the database's tables and DDL, for people (`tracklog sql`, `tracklog schema`) wherever
the daemon can be reached; and the same two offline on a database file
(`tracklog sql --db`, `tracklog schema --db`), which the client finds through the
`tracklog.offline` entry point rather than importing the daemon.

It runs on a reader's read-only connection, inside the read transaction `SqliteReadModel.snapshot`
opened, under the same authorizer as `tracklog sql --db` (readonly.py), with
a row limit, a byte budget for the answer, a cap on the size of any one value and a time
limit, so one statement cannot hold a reader thread or the daemon's memory for long.
The connection is shared with other queries: every setting is put back afterwards.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Final

from tracklog.protocol import errors
from tracklog.protocol.limits import MAX_QUERY_LIMIT
from tracklog.protocol.messages import Query

from .readonly import read_only_authorizer

DEFAULT_SQL_ROWS: Final = 1000
#: Seconds a statement may run before it is interrupted.
SQL_TIME_LIMIT: Final = 10.0
#: Bytes of text and blobs an answer holds at most (it must fit in one frame).
SQL_ANSWER_BYTES: Final = 8 * 1024 * 1024
#: Longest string or blob a statement may make (SQLITE_LIMIT_LENGTH while it runs).
SQL_VALUE_BYTES: Final = 8 * 1024 * 1024
#: SQLite calls the progress handler every this many virtual machine instructions.
_PROGRESS_STEPS: Final = 10_000


def query_sql(conn: sqlite3.Connection, q: Query) -> tuple[list[Any], int | None]:
    """One row: `{columns, rows, more}`; rows are lists in column order, `more` says the
    limit (or the byte budget) cut the answer short. A refused or bad statement is bad_query."""
    if not q.sql or not q.sql.strip():
        raise errors.BadQuery("sql: required for q 'sql' (one SELECT statement)", q.ref)
    limit = DEFAULT_SQL_ROWS if q.limit is None else q.limit
    if not 0 <= limit <= MAX_QUERY_LIMIT:
        raise errors.BadQuery(f"limit: expected 0 to {MAX_QUERY_LIMIT}", q.ref)
    deadline = time.monotonic() + SQL_TIME_LIMIT
    old_length = conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, SQL_VALUE_BYTES)
    conn.set_authorizer(read_only_authorizer)
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), _PROGRESS_STEPS)
    try:
        cur = conn.execute(q.sql)
        columns = [d[0] for d in cur.description or []]
        rows: list[list[Any]] = []
        budget = SQL_ANSWER_BYTES
        more = False
        for row in cur:
            if len(rows) >= limit or budget < 0:
                more = True
                break
            budget -= sum(len(v) for v in row if isinstance(v, (str, bytes)))
            rows.append(list(row))
        if budget < 0 and rows:
            rows.pop()  # the row that went over the budget
            more = True
        cur.close()
    except (sqlite3.Error, sqlite3.Warning) as exc:
        text = str(exc)
        if text == "interrupted":
            text = f"interrupted after {SQL_TIME_LIMIT:g} s"
        raise errors.BadQuery(f"sql: {text}", q.ref) from None
    finally:
        conn.set_progress_handler(None, 0)
        conn.set_authorizer(None)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, old_length)
    return [{"columns": columns, "rows": rows, "more": more}], len(rows)


# -- schema ---------------------------------------------------------------------------------

#: The tables and their columns, in one statement.
SCHEMA_COLUMNS_SQL: Final = (
    'SELECT m.name AS tbl, p.name, p.type, p."notnull", p.pk FROM sqlite_schema AS m'
    " JOIN pragma_table_info(m.name) AS p"
    " WHERE m.type = 'table' AND m.sql IS NOT NULL AND m.name NOT LIKE 'sqlite_%'"
    " ORDER BY m.name, p.cid"
)
#: The CREATE statements, tables first.
SCHEMA_DDL_SQL: Final = (
    "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'"
    " ORDER BY CASE type WHEN 'table' THEN 0 ELSE 1 END, name"
)


def read_schema(conn: sqlite3.Connection) -> dict[str, Any]:
    """`{tables: {table: [{name, type, notnull, pk}]}, ddl: [CREATE ...]}` of the database."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for table, name, kind, notnull, pk in conn.execute(SCHEMA_COLUMNS_SQL):
        tables.setdefault(table, []).append({"name": name, "type": kind, "notnull": bool(notnull), "pk": pk})
    return {"tables": tables, "ddl": [ddl for (ddl,) in conn.execute(SCHEMA_DDL_SQL)]}


def query_schema(conn: sqlite3.Connection, q: Query) -> tuple[list[Any], int | None]:
    """One row: the database's tables with their columns, and its DDL (what `tracklog schema` prints)."""
    return [read_schema(conn)], 1


# -- offline, on a database file (`--db`) ------------------------------------------------------


def _open_offline(db: Path) -> sqlite3.Connection:
    if not db.exists():
        raise FileNotFoundError(f"no database at {db}")
    try:
        conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise errors.StorageError(f"cannot open {db}: {exc}") from exc
    conn.set_authorizer(read_only_authorizer)
    return conn


def offline_sql(db: Path, statement: str, limit: int) -> tuple[list[str], list[list[Any]], bool]:
    """(columns, rows, more) of one read-only statement on the database file `db`, under the
    daemon's authorizer; FileNotFoundError, or BadQuery with SQLite's message."""
    conn = _open_offline(db)
    try:
        cur = conn.execute(statement)
        columns = [d[0] for d in cur.description or []]
        rows = [list(row) for row in cur.fetchmany(limit + 1)]
    except (sqlite3.Error, sqlite3.Warning) as exc:
        raise errors.BadQuery(str(exc)) from exc
    finally:
        conn.close()
    return columns, rows[:limit], len(rows) > limit


def offline_schema(db: Path) -> dict[str, Any]:
    """`read_schema` of the database file `db`; FileNotFoundError, or StorageError."""
    conn = _open_offline(db)
    try:
        return read_schema(conn)
    except sqlite3.Error as exc:
        raise errors.StorageError(f"cannot read the schema of {db}: {exc}") from exc
    finally:
        conn.close()
