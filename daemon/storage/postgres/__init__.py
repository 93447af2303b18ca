"""The PostgreSQL backend: one log shared by several daemons.

- `connect.py`: the URL and tracklog's settings in it (`PgSettings`: statement_timeout,
  pool_size), `connect()`, and `PgConnection`, a psycopg connection with sqlite3's
  `execute` / `executemany` that spells every statement through `sqlcommon.dialect.POSTGRES`
  (`?` placeholders, `INSERT OR IGNORE` / `OR REPLACE`), with results in binary. SQL written
  for SQLite in `sqlcommon/` and `sqlite/` runs on it unchanged where it is portable.
- `eventlog.py`: `PgEventLog`, the shared `sqlcommon.eventlog.SqlEventLog` with
  PostgreSQL's transactions (the advisory lock every write takes), verify and replay.

The tables are those of `sqlcommon/schema.py` (same names and columns as SQLite), made by
`POSTGRES.ddl()`; what a query over them must mind on PostgreSQL:

- the column `runs.user` is a reserved word there: write it `"user"` (SQLite takes that too);
- there is no FTS5 table `search`: full-text search is the GIN index `search_docs_text` on
  `to_tsvector('english', title || ' ' || body)` (match with `@@ plainto_tsquery('english', ...)`
  over that same expression);
- NaN is stored as NaN (SQLite stores NULL) in REAL columns (`metric_summaries.last`, ...);
- `meta.value` is BIGINT; text compares by the database's collation (SQLite: bytewise).
"""
