"""`tracklog sql --db postgresql://...` and `tracklog schema --db postgresql://...`: the
daemon's `sql` and `schema` questions asked of the database directly, without a daemon
(the client finds this module through the `tracklog.offline` entry point `postgresql`).
The same rules as through a daemon: a read-only transaction, the reader role, the timeout.
"""

from __future__ import annotations

from typing import Any

from tracklog.protocol import errors
from tracklog.protocol.messages import Query

from ...queries import answer
from .readmodel import PgReadModel


def _ask(db: str, q: Query) -> dict[str, Any]:
    model = PgReadModel.open(str(db))
    try:
        (row,) = answer(model, q).rows
    except errors.InternalError as exc:
        raise errors.StorageError(exc.message) from exc
    finally:
        model.close()
    return dict(row)


def offline_sql(db: str, statement: str, limit: int) -> tuple[list[str], list[list[Any]], bool]:
    """(columns, rows, more) of one read-only statement; BadQuery with PostgreSQL's message."""
    row = _ask(db, Query(q="sql", sql=statement, limit=limit))
    return row["columns"], row["rows"], row["more"]


def offline_schema(db: str) -> dict[str, Any]:
    """`{tables, ddl}` of the database."""
    return _ask(db, Query(q="schema"))
