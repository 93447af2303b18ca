"""The dedup_entries table, read for the in-memory dedup indexes (`storage.eventlog.DedupEntries`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Final

from tracklog.protocol import errors

from ..eventlog import DedupEntries, DedupRow

_MAX_SEQ: Final = (1 << 63) - 1


class SqliteDedupEntries(DedupEntries):
    """dedup_entries through one connection (the writer's, or a loader's read-only one)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def units(self) -> list[tuple[str, str]]:
        """One index probe per unit: fast at any size."""
        units: list[tuple[str, str]] = []
        try:
            row = self.conn.execute(
                "SELECT namespace, kind FROM dedup_entries ORDER BY namespace, kind LIMIT 1"
            ).fetchone()
            while row is not None:
                units.append((row[0], row[1]))
                row = self.conn.execute(
                    "SELECT namespace, kind FROM dedup_entries WHERE (namespace, kind) > (?, ?)"
                    " ORDER BY namespace, kind LIMIT 1",
                    row,
                ).fetchone()
        except sqlite3.Error as exc:
            raise errors.StorageError(f"cannot read dedup_entries: {exc}") from exc
        return units

    def rows(self, namespace: str, kind: str, after: int = 0, upto: int | None = None) -> Iterator[DedupRow]:
        try:
            yield from self.conn.execute(
                "SELECT seq, space, value, run, item FROM dedup_entries WHERE namespace = ? AND kind = ?"
                " AND seq > ? AND seq <= ? ORDER BY seq",
                (namespace, kind, after, _MAX_SEQ if upto is None else upto),
            )
        except sqlite3.Error as exc:
            raise errors.StorageError(f"cannot read dedup_entries: {exc}") from exc

    def seqs(self, namespace: str, kind: str, upto: int) -> list[int]:
        try:
            return [
                seq
                for (seq,) in self.conn.execute(
                    "SELECT seq FROM dedup_entries WHERE namespace = ? AND kind = ? AND seq <= ?"
                    " ORDER BY seq",
                    (namespace, kind, upto),
                )
            ]
        except sqlite3.Error as exc:
            raise errors.StorageError(f"cannot read dedup_entries: {exc}") from exc

    def entry(self, seq: int) -> tuple[str | None, bytes] | None:
        try:
            row = self.conn.execute("SELECT space, value FROM dedup_entries WHERE seq = ?", (seq,)).fetchone()
        except sqlite3.Error as exc:
            raise errors.StorageError(f"cannot read dedup_entries: {exc}") from exc
        return None if row is None else (row[0], row[1])
