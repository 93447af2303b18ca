"""The `sql` query: one read-only SQL statement on the daemon's database, for people
(`tracklog sql`, `tracklog schema`) wherever the daemon can be reached.

It runs on a reader's read-only connection, inside the read transaction `SqliteReadModel.snapshot`
opened, under the same authorizer as `tracklog sql --db` (protocol/readonly_sql.py), with
a row limit, a byte budget for the answer, a cap on the size of any one value and a time
limit, so one statement cannot hold a reader thread or the daemon's memory for long.
The connection is shared with other queries: every setting is put back afterwards.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Final

from tracklog.protocol import errors
from tracklog.protocol.limits import MAX_QUERY_LIMIT
from tracklog.protocol.messages import Query
from tracklog.protocol.readonly_sql import read_only_authorizer

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
