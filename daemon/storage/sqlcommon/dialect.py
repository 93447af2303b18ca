"""What differs between the SQL databases tracklog stores in, so the rest is written once.

The storage's SQL is written in SQLite's spelling (placeholders `?`, `INSERT OR IGNORE`,
`INSERT OR REPLACE`, the types and `WITHOUT ROWID` of schema.py). A `Dialect` turns it into
another database's: `sql()` for a statement (PostgreSQL's connection wrapper applies it,
cached, to every statement it runs), `ddl()` for a schema script. SQLite's dialect changes
nothing. What cannot be translated is a flag the shared code asks: `fts5` (the writer
feeds an FTS5 table; PostgreSQL indexes `search_docs` itself).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, Protocol

from .schema import LOG_DDL, PORTABLE_PROJECTION_DDL


class Cursor(Protocol):
    """What the shared code reads from a cursor (sqlite3's and psycopg's both have it)."""

    @property
    def description(self) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """The calls the shared code makes: sqlite3.Connection's, which the PostgreSQL wrapper copies."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...


class Dialect:
    """SQLite's spelling: statements and scripts run as written."""

    name: str = "sqlite"
    #: Whether the full-text index is an FTS5 table that the writer keeps (SQLite), rather
    #: than an index the database keeps over search_docs by itself.
    fts5: bool = True

    def sql(self, statement: str) -> str:
        """A statement written for SQLite, spelled for this database."""
        return statement

    def ddl(self, script: str) -> list[str]:
        """A schema script written for SQLite, as this database's statements."""
        from ..sqlite.connect import ddl_statements

        return ddl_statements(script)

    def projection_ddl(self) -> list[str]:
        """Every projection table and index, full-text search included."""
        from .schema import PROJECTION_DDL

        return self.ddl(PROJECTION_DDL)


_TABLE_RE: Final = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\)", re.S)
_COLUMN_KEY_RE: Final = re.compile(r"^\s*(\w+)\s+\w+\s+PRIMARY KEY", re.M)
_TABLE_KEY_RE: Final = re.compile(r"PRIMARY KEY \(([^)]*)\)")
_INSERT_RE: Final = re.compile(r"^\s*INSERT OR (IGNORE|REPLACE) INTO (\w+)\s*\(([^)]*)\)(.*)$", re.S)
#: Text compares and sorts by code point, as in SQLite (`ORDER BY`, run id prefixes).
_TYPES: Final = {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION", "BLOB": "BYTEA", "TEXT": 'TEXT COLLATE "C"'}
_COLUMN_RE: Final = re.compile(r"^(\s+)(\w+)(\s+)(INTEGER|REAL|BLOB|TEXT)\b", re.M)
#: Column names PostgreSQL reserves: quoted wherever the schema names them.
RESERVED: Final = frozenset({"user"})


def primary_keys(*scripts: str) -> dict[str, tuple[str, ...]]:
    """Each table's primary key columns, read from the CREATE TABLE statements."""
    keys: dict[str, tuple[str, ...]] = {}
    for script in scripts:
        for table, body in _TABLE_RE.findall(script):
            found = _TABLE_KEY_RE.search(body)
            if found is not None:
                keys[table] = tuple(c.strip() for c in found.group(1).split(","))
            else:
                column = _COLUMN_KEY_RE.search(body)
                if column is not None:
                    keys[table] = (column.group(1),)
    return keys


class PostgresDialect(Dialect):
    """PostgreSQL: `%s` placeholders, `ON CONFLICT` for `OR IGNORE` / `OR REPLACE` (upserts on
    the table's primary key), BIGINT / DOUBLE PRECISION / BYTEA for SQLite's types, `user`
    quoted, and a GIN index over search_docs for full-text search."""

    name = "postgresql"
    fts5 = False
    #: What `search` matches: a document's title and body, punctuation read as spaces (as
    #: FTS5's unicode61 splits `/ckpt/beta-final.pt` into words, where PostgreSQL's parser
    #: would keep one path token). The GIN index is over this expression.
    SEARCH_DOCUMENT: Final = (
        "to_tsvector('english', regexp_replace(title || ' ' || body, '[[:punct:]]+', ' ', 'g'))"
    )
    SEARCH_DDL: Final = (
        f"CREATE INDEX IF NOT EXISTS search_docs_text ON search_docs USING GIN ({SEARCH_DOCUMENT})"
    )

    def __init__(self) -> None:
        self.keys = primary_keys(LOG_DDL, PORTABLE_PROJECTION_DDL)
        self._translated: dict[str, str] = {}

    def sql(self, statement: str) -> str:
        translated = self._translated.get(statement)
        if translated is None:
            if len(self._translated) > 10_000:  # queries' SQL varies with their filters
                self._translated.clear()
            translated = self._translated[statement] = self._translate(statement)
        return translated

    def _translate(self, statement: str) -> str:
        text = statement
        insert = _INSERT_RE.match(text)
        if insert is not None:
            mode, table, columns, rest = insert.groups()
            text = f"INSERT INTO {table}({columns}){rest}"
            if mode == "IGNORE":
                text += " ON CONFLICT DO NOTHING"
            else:
                key = self.keys[table]
                names = [c.strip() for c in columns.split(",")]
                updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in names if c not in key)
                text += f" ON CONFLICT ({', '.join(key)}) DO " + (
                    f"UPDATE SET {updates}" if updates else "NOTHING"
                )
        return text.replace("%", "%%").replace("?", "%s")

    def ddl(self, script: str) -> list[str]:
        def column(match: re.Match[str]) -> str:
            indent, name, space, kind = match.groups()
            if name in RESERVED:
                name = f'"{name}"'
            return f"{indent}{name}{space}{_TYPES[kind]}"

        text = _COLUMN_RE.sub(column, script)
        # meta's value has no type in SQLite (any value): every value kept there is an integer.
        text = re.sub(r"^(\s+value)\s*$", r"\1 BIGINT", text, flags=re.M)
        text = text.replace(") WITHOUT ROWID;", ");")
        lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
        return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]

    def projection_ddl(self) -> list[str]:
        return [*self.ddl(PORTABLE_PROJECTION_DDL), self.SEARCH_DDL]


SQLITE: Final = Dialect()
POSTGRES: Final = PostgresDialect()
