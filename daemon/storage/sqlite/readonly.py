"""The rules for read-only SQL on a tracklog database, shared by the daemon's `sql` query
and its offline reader behind `tracklog sql --db` (sql.py beside this module).

An SQLite authorizer lets a statement read and refuses everything else: writes, schema
changes, ATTACH (which could open any file), transactions, and PRAGMAs other than the
few that only describe the schema. It is a pure function of the action SQLite reports;
nothing here opens a database.
"""

from __future__ import annotations

import sqlite3
from typing import Final

#: PRAGMAs that only describe the schema; any other PRAGMA with a value is refused.
READ_PRAGMAS: Final = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "function_list",
        "module_list",
        "pragma_list",
        "collation_list",
        "database_list",
        "compile_options",
    }
)
#: PRAGMAs that act even without a value (checkpoint, analyze, free memory): refused.
ACTING_PRAGMAS: Final = frozenset({"optimize", "wal_checkpoint", "incremental_vacuum", "shrink_memory"})
_SCHEMA_COLUMNS: Final = frozenset({"type", "name", "tbl_name", "rootpage", "sql"})
_ALLOWED: Final = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)


def read_only_authorizer(
    action: int, arg1: str | None, arg2: str | None, db: str | None, source: str | None
) -> int:
    """Let statements read; refuse writes, schema changes, ATTACH and PRAGMAs that change things."""
    if action in _ALLOWED:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA:
        pragma = (arg1 or "").lower()
        if pragma in READ_PRAGMAS or (arg2 is None and pragma not in ACTING_PRAGMAS):
            return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY
    if (
        action == sqlite3.SQLITE_UPDATE
        and arg1 == "sqlite_master"
        and source is None
        and arg2 in _SCHEMA_COLUMNS
    ):
        # SQLite asks this while it loads the schema for a pragma function such as
        # pragma_table_info(); the connection is opened read-only, so nothing is written.
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY
