"""Full-text search over runs, items and artifacts (FTS5, ranked by bm25)."""

from __future__ import annotations

import sqlite3
from typing import Any

from tracklog.protocol.messages import Query

from ..sqlcommon.rows import search_page, search_row, search_words


def fts_query(text: str) -> str:
    """The words of text as an FTS5 query of quoted terms (all must match; `word*` is a prefix).

    Quoting every word means FTS5 operators and punctuation in the text are plain words,
    so no input is a syntax error.
    """
    return " ".join(
        '"' + word.replace('"', '""') + '"' + ("*" if prefix else "") for word, prefix in search_words(text)
    )


def query_search(conn: sqlite3.Connection, q: Query) -> tuple[list[Any], int | None]:
    """Runs, items and artifacts whose text matches, best first (bm25), each with a snippet."""
    limit, offset = search_page(q)
    assert q.text is not None  # checked by search_page
    match = fts_query(q.text)
    if not match:
        return [], 0
    rows = conn.execute(
        "SELECT d.doc, d.kind, d.run, r.name, d.title,"
        " snippet(search, 1, '[', ']', '...', 12), bm25(search, 5.0, 1.0) AS score"
        " FROM search JOIN search_docs d ON d.doc = search.rowid JOIN runs r ON r.run = d.run"
        f" WHERE search MATCH ?{'' if q.deleted else ' AND r.deleted = 0'}"
        " ORDER BY score, d.doc LIMIT ? OFFSET ?",
        (match, limit, offset),
    ).fetchall()
    return [
        search_row(doc, kind, run, name, title, snippet, -score)
        for doc, kind, run, name, title, snippet, score in rows
    ], None
