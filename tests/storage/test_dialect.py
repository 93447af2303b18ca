"""The PostgreSQL dialect spells the SQL written for SQLite: placeholders, OR IGNORE and
OR REPLACE as ON CONFLICT on each table's primary key, the schema's types."""

from __future__ import annotations

from tracklog.daemon.storage.sqlcommon.dialect import POSTGRES, SQLITE
from tracklog.daemon.storage.sqlcommon.schema import LOG_DDL, PORTABLE_PROJECTION_DDL


def test_sqlite_runs_statements_as_written() -> None:
    statement = "INSERT OR IGNORE INTO run_tags(run, tag) VALUES (?, ?)"
    assert SQLITE.sql(statement) == statement


def test_placeholders_become_psycopg_ones_and_a_percent_sign_stays_one() -> None:
    assert POSTGRES.sql("SELECT seq FROM events WHERE id LIKE '50%' AND seq > ?") == (
        "SELECT seq FROM events WHERE id LIKE '50%%' AND seq > %s"
    )


def test_or_ignore_and_or_replace_are_on_conflict_on_the_primary_key() -> None:
    assert POSTGRES.sql("INSERT OR IGNORE INTO run_tags(run, tag) VALUES (?, ?)") == (
        "INSERT INTO run_tags(run, tag) VALUES (%s, %s) ON CONFLICT DO NOTHING"
    )
    assert POSTGRES.sql("INSERT OR REPLACE INTO cache(key, value, expires_at, seq) VALUES (?, ?, ?, ?)") == (
        "INSERT INTO cache(key, value, expires_at, seq) VALUES (%s, %s, %s, %s) ON CONFLICT (key)"
        " DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at, seq = EXCLUDED.seq"
    )
    assert POSTGRES.keys["metric_chunks"] == ("run", "name", "chunk")
    assert POSTGRES.keys["events"] == ("seq",)


def test_the_schema_is_spelled_in_postgresql_types_without_rowid_clauses() -> None:
    script = "\n".join(POSTGRES.ddl(LOG_DDL) + POSTGRES.projection_ddl())
    assert "WITHOUT ROWID" not in script and "fts5" not in script and "BLOB" not in script
    assert "seq      BIGINT PRIMARY KEY" in script and "data     BYTEA NOT NULL" in script
    assert '"user"         TEXT' in script and "value BIGINT" in script
    assert "USING GIN (to_tsvector('english', regexp_replace(title || ' ' || body," in script
    tables = [s for s in POSTGRES.ddl(PORTABLE_PROJECTION_DDL) if s.startswith("CREATE TABLE")]
    assert len(tables) == 12
