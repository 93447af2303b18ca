"""Items and artifacts: pages of items by run, stage and status; a run's artifacts; and
the item pages of an export (by seq, so no OFFSET scans)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from tracklog.protocol.messages import Query

from ..readmodel import DEFAULT_ITEMS, MAX_ITEMS
from .dialect import Connection
from .rows import ITEM_COLUMNS, artifact_rows, item_row, page, require_run
from .runref import resolve_id

#: How many of the items counted failed (a sum of booleans, spelled for every database).
FAILED: Final = "sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END)"
#: Items an export reads per page.
ITEM_PAGE: Final = 1_000


def query_items(conn: Connection, q: Query) -> tuple[list[Any], int | None]:
    """Items, oldest first, of a run or of all, by stage and status."""
    limit, offset = page(q, DEFAULT_ITEMS, MAX_ITEMS)
    where: list[str] = []
    args: list[Any] = []
    run = None if q.run is None else resolve_id(conn, q.run, "run", q.ref)
    # model and backend: the web console's item filters.
    filters = (
        ("run", run),
        ("stage", q.stage),
        ("status", q.status),
        ("model", q.model),
        ("backend", q.backend),
    )
    for column, value in filters:
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    clause = " WHERE " + " AND ".join(where) if where else ""
    total = conn.execute(f"SELECT count(*) FROM items{clause}", args).fetchone()[0]
    rows = conn.execute(
        f"SELECT {', '.join(ITEM_COLUMNS)} FROM items{clause} ORDER BY seq LIMIT ? OFFSET ?",
        [*args, limit, offset],
    ).fetchall()
    return [item_row(r) for r in rows], total


#: The item columns the console offers as filters, each with its values counted.
FACET_COLUMNS: Final = ("stage", "status", "model", "backend", "kind")


def query_item_facets(conn: Connection, q: Query) -> tuple[list[Any], int | None]:
    """The values of a run's item stages, statuses, models, backends and kinds, each with its
    item count, failures and mean duration: the console's item filters and per-stage summary."""
    run = require_run(conn, q.run, q)
    rows: list[dict[str, Any]] = []
    for column in FACET_COLUMNS:
        for value, count, failed, mean in conn.execute(
            f"SELECT {column}, count(*), {FAILED}, avg(duration) FROM items"
            f" WHERE run = ? GROUP BY {column} ORDER BY {column} NULLS FIRST",
            (run,),
        ):
            rows.append({"field": column, "value": value, "count": count, "failed": failed, "mean": mean})
    return rows, len(rows)


def query_artifacts(conn: Connection, q: Query) -> tuple[list[Any], int | None]:
    """A run's artifacts, oldest first."""
    run = require_run(conn, q.run, q)
    rows = artifact_rows(conn, run)
    return rows, len(rows)


def item_rows(conn: Connection, run: str) -> Iterator[dict[str, Any]]:
    """The run's items, oldest first, a page at a time (by seq, so no OFFSET scans)."""
    after = -1
    while True:
        rows = conn.execute(
            f"SELECT {', '.join(ITEM_COLUMNS)} FROM items WHERE run = ? AND seq > ? ORDER BY seq LIMIT ?",
            (run, after, ITEM_PAGE),
        ).fetchall()
        for row in rows:
            yield item_row(row)
        if len(rows) < ITEM_PAGE:
            return
        after = rows[-1][0]
