"""Comparing projection tables with a rebuild from the log, row by row in key order (any
SQL database: the two sides come through the shared `Connection` calls)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TextIO

from .dialect import Connection, Cursor
from .schema import PROJECTION_TABLES


def iter_table(conn: Connection, table: str, schema: str = "main") -> Iterator[tuple[Any, ...]]:
    """A projection table's rows in key order."""
    yield from _select(conn, table, schema)


def _select(conn: Connection, table: str, schema: str) -> Cursor:
    return conn.execute(f"SELECT * FROM {schema}.{table} ORDER BY {PROJECTION_TABLES[table]}")


def compare_tables(
    live: Connection,
    rebuilt: Connection,
    out: TextIO,
    max_diffs: int = 20,
    live_schema: str = "main",
    rebuilt_schema: str = "main",
) -> int:
    """Print the differences between two sets of projection tables (two databases, or two
    schemas through one connection); returns their count."""
    diffs = 0
    for table in PROJECTION_TABLES:
        live_cursor = _select(live, table, live_schema)
        columns = [d[0] for d in live_cursor.description]
        key_columns = [c.strip() for c in PROJECTION_TABLES[table].split(",")]
        key_at = [columns.index(c) for c in key_columns]
        a_rows = iter(live_cursor)
        b_rows = iter(_select(rebuilt, table, rebuilt_schema))
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
