"""The questions PostgreSQL answers its own way: full-text search, `sql` and `schema`.

- `search` matches the documents of `search_docs` as the GIN index the schema makes reads
  them (dialect.PostgresDialect.SEARCH_DOCUMENT: English stems, punctuation between
  words, as FTS5 splits them); each word of the text must match (as a phrase of its
  tokens; `word*` as a prefix of a stored lexeme, not stemmed, as FTS5 matches prefixes),
  hits are ranked by `ts_rank` and carry a `ts_headline` snippet with the matches in
  [brackets]. Unlike FTS5, English stopwords ("the", "a") match nothing on their own.
- `sql` runs one statement for people under the rules SQLite's authorizer enforces there
  (read only, nothing but the database): inside the question's READ ONLY transaction, as a
  server-side cursor (DECLARE takes a query and nothing else: no SET, RESET, COPY or
  second statement), with `SET LOCAL ROLE tracklog_reader`, a role that may only SELECT
  this database's tables (no pg_read_file, no writes), and a statement timeout; the row
  limit and byte budget of SQLite's `sql`. Session advisory locks it takes are released
  afterwards (readmodel.py). Where the daemon connects as a superuser, `set_config` is
  revoked from PUBLIC, so the statement cannot switch the role or the timeout back.
- `schema` is read from information_schema and pg_indexes.
"""

from __future__ import annotations

import contextlib
from typing import Any, Final

import msgspec
import psycopg

from tracklog.protocol import errors
from tracklog.protocol.limits import MAX_QUERY_LIMIT
from tracklog.protocol.messages import Query

from ..sqlcommon.dialect import POSTGRES
from ..sqlcommon.rows import search_page, search_row, search_words
from ..sqlite.sql import DEFAULT_SQL_ROWS, SQL_ANSWER_BYTES, SQL_TIME_LIMIT
from .connect import PgConnection, PgSettings, connect

#: The role `sql` statements run as: SELECT on this database's tables, nothing else.
READER_ROLE: Final = "tracklog_reader"
#: The advisory lock (transaction level) serialising the reader role's grants in one database.
READER_LOCK: Final = 0x7472616B6C6F6772  # "traklogr"
#: What `search` matches: the GIN index's expression over search_docs (`d`).
_DOCUMENT: Final = POSTGRES.SEARCH_DOCUMENT
#: A word of the search text as the documents are read: punctuation as spaces.
_WORD: Final = "regexp_replace(?, '[[:punct:]]+', ' ', 'g')"
_HEADLINE_OPTIONS: Final = (
    "StartSel=[, StopSel=], MaxFragments=1, MaxWords=12, MinWords=3, FragmentDelimiter=..."
)
#: Rows a `sql` answer fetches from its cursor at a time.
_SQL_BATCH: Final = 200


def ts_query(text: str) -> tuple[str, list[str]]:
    """The words of text as a tsquery expression (all must match; `word*` is a prefix) and
    its parameters. Every word is a bound value, so no input is a syntax error."""
    words = search_words(text)
    terms = [
        f"to_tsquery('simple', quote_literal({_WORD}) || ':*')"
        if prefix
        else f"phraseto_tsquery('english', {_WORD})"
        for _, prefix in words
    ]
    return " && ".join(terms), [word for word, _ in words]


def query_search(conn: PgConnection, q: Query) -> tuple[list[Any], int | None]:
    """Runs, items and artifacts whose text matches, best first (ts_rank), each with a snippet."""
    limit, offset = search_page(q)
    assert q.text is not None  # checked by search_page
    match, params = ts_query(q.text)
    if not match:
        return [], 0
    rows = conn.execute(
        f"SELECT d.doc, d.kind, d.run, r.name, d.title,"
        f" ts_headline('english', d.body, s.query, '{_HEADLINE_OPTIONS}'),"
        f" ts_rank({_DOCUMENT}, s.query) AS score"
        f" FROM search_docs d JOIN runs r ON r.run = d.run CROSS JOIN (SELECT {match} AS query) AS s"
        f" WHERE {_DOCUMENT} @@ s.query{'' if q.deleted else ' AND r.deleted = 0'}"
        " ORDER BY score DESC, d.doc LIMIT ? OFFSET ?",
        [*params, limit, offset],
    ).fetchall()
    return [search_row(*row) for row in rows], None


# -- sql ------------------------------------------------------------------------------------


def prepare_reader(settings: PgSettings) -> None:
    """Make the reader role and give it SELECT on this database's tables, now and as they
    are made again (a rebuild), on a connection of its own. BadQuery saying why when the
    daemon's role may not (it needs CREATEROLE, or the role made by an administrator)."""
    conn = connect(settings)
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (READER_LOCK,))
            ready = conn.execute(
                "SELECT to_regrole(%s) IS NOT NULL AND pg_has_role(%s, 'USAGE')"
                " AND has_schema_privilege(%s, current_schema(), 'USAGE')",
                (READER_ROLE, READER_ROLE, READER_ROLE),
            ).fetchone()
            superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
            if not (ready and ready[0]):
                conn.execute(
                    "DO $$ BEGIN CREATE ROLE tracklog_reader NOLOGIN;"
                    " EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
                )
                if not (superuser and superuser[0]):
                    conn.execute(f"GRANT {READER_ROLE} TO CURRENT_USER")
            conn.execute(
                "DO $$ BEGIN"
                " EXECUTE format('GRANT USAGE ON SCHEMA %I TO tracklog_reader', current_schema());"
                " EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO tracklog_reader',"
                " current_schema());"
                " EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES"
                " TO tracklog_reader', current_schema());"
                " END $$"
            )
            if superuser and superuser[0]:
                conn.execute("REVOKE EXECUTE ON FUNCTION set_config(text, text, boolean) FROM PUBLIC")
    except psycopg.Error as exc:
        raise errors.BadQuery(
            f"sql: cannot prepare the role {READER_ROLE} that statements run as ({exc});"
            f" create it (NOLOGIN), grant it to the daemon's role and SELECT on the tables"
        ) from exc
    finally:
        conn.close()


def _plain(value: Any) -> Any:
    """A value the wire carries: JSON as its text (as SQLite gives it), times, numerics and
    other PostgreSQL types as text."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, (dict, list)):
        return msgspec.json.encode(value).decode()
    return str(value)


def query_sql(conn: PgConnection, q: Query) -> tuple[list[Any], int | None]:
    """One row: `{columns, rows, more}`, as SQLite's `sql` answers; a refused or bad
    statement is bad_query with PostgreSQL's message."""
    if not q.sql or not q.sql.strip():
        raise errors.BadQuery("sql: required for q 'sql' (one SELECT statement)", q.ref)
    limit = DEFAULT_SQL_ROWS if q.limit is None else q.limit
    if not 0 <= limit <= MAX_QUERY_LIMIT:
        raise errors.BadQuery(f"limit: expected 0 to {MAX_QUERY_LIMIT}", q.ref)
    raw = conn.raw
    raw.execute("SAVEPOINT tracklog_sql")
    try:
        raw.execute(f"SET LOCAL ROLE {READER_ROLE}")
        raw.execute(f"SET LOCAL statement_timeout = '{int(SQL_TIME_LIMIT * 1000)}ms'")
        rows: list[list[Any]] = []
        budget = SQL_ANSWER_BYTES
        more = False
        with raw.cursor(name="tracklog_sql") as cursor:
            cursor.execute(q.sql.strip().removesuffix(";"))
            columns = [d.name for d in cursor.description or []]
            while not more:
                batch = cursor.fetchmany(_SQL_BATCH)
                if not batch:
                    break
                for row in batch:
                    if len(rows) >= limit or budget < 0:
                        more = True
                        break
                    values = [_plain(v) for v in row]
                    budget -= sum(len(v) for v in values if isinstance(v, (str, bytes)))
                    rows.append(values)
        if budget < 0 and rows:
            rows.pop()  # the row that went over the budget
            more = True
    except psycopg.Error as exc:
        text = str(exc).strip()
        if isinstance(exc, psycopg.errors.QueryCanceled):
            text = f"interrupted after {SQL_TIME_LIMIT:g} s"
        raise errors.BadQuery(f"sql: {text}", q.ref) from None
    finally:
        with contextlib.suppress(psycopg.Error):  # the role and timeout end with the savepoint
            raw.execute("ROLLBACK TO SAVEPOINT tracklog_sql")
            raw.execute("RELEASE SAVEPOINT tracklog_sql")
    return [{"columns": columns, "rows": rows, "more": more}], len(rows)


# -- schema ---------------------------------------------------------------------------------

#: Each table's columns, with their place in the primary key (0: not in it).
SCHEMA_COLUMNS_SQL: Final = """
SELECT c.table_name, c.column_name, upper(c.data_type), c.is_nullable = 'NO',
       coalesce(k.ordinal_position, 0)
FROM information_schema.columns c
JOIN information_schema.tables t
  ON t.table_schema = c.table_schema AND t.table_name = c.table_name AND t.table_type = 'BASE TABLE'
LEFT JOIN information_schema.table_constraints p
  ON p.table_schema = c.table_schema AND p.table_name = c.table_name AND p.constraint_type = 'PRIMARY KEY'
LEFT JOIN information_schema.key_column_usage k
  ON k.constraint_schema = p.constraint_schema AND k.constraint_name = p.constraint_name
 AND k.table_name = c.table_name AND k.column_name = c.column_name
WHERE c.table_schema = current_schema()
ORDER BY c.table_name, c.ordinal_position
"""


def read_schema(conn: PgConnection) -> dict[str, Any]:
    """`{tables: {table: [{name, type, notnull, pk}]}, ddl: [CREATE ...]}`: the tables as
    information_schema describes them, a CREATE TABLE written from that, and each index's
    definition."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for table, name, kind, notnull, pk in conn.raw.execute(SCHEMA_COLUMNS_SQL):
        tables.setdefault(table, []).append({"name": name, "type": kind, "notnull": notnull, "pk": pk})
    ddl = []
    for table, columns in tables.items():
        parts = [f"{c['name']} {c['type']}{' NOT NULL' if c['notnull'] else ''}" for c in columns]
        key = [c["name"] for c in sorted(columns, key=lambda c: c["pk"]) if c["pk"]]
        if key:
            parts.append(f"PRIMARY KEY ({', '.join(key)})")
        ddl.append(f"CREATE TABLE {table} ({', '.join(parts)})")
    ddl += [
        definition
        for (definition,) in conn.raw.execute(
            "SELECT indexdef FROM pg_indexes i WHERE schemaname = current_schema() AND NOT EXISTS"
            " (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname AND c.contype = 'p')"
            " ORDER BY indexname"
        )
    ]
    return {"tables": tables, "ddl": ddl}


def query_schema(conn: PgConnection, q: Query) -> tuple[list[Any], int | None]:
    """One row: the database's tables with their columns, and its DDL (what `tracklog schema` prints)."""
    return [read_schema(conn)], 1
