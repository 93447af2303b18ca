"""The dedup_entries table of any SQL database, read for the in-memory dedup indexes
(`storage.eventlog.DedupEntries`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from tracklog.protocol import errors

from ..eventlog import DedupEntries, DedupRow
from .dialect import Connection

_MAX_SEQ: Final = (1 << 63) - 1


class SqlDedupEntries(DedupEntries):
    """dedup_entries through one connection (the writer's, or a loader's read-only one);
    the driver's errors (`db_errors`) become StorageError."""

    def __init__(self, conn: Connection, db_errors: tuple[type[Exception], ...]) -> None:
        self.conn = conn
        self.db_errors = db_errors

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
        except self.db_errors as exc:
            raise errors.StorageError(f"cannot read dedup_entries: {exc}") from exc
        return units

    def rows(self, namespace: str, kind: str, after: int = 0, upto: int | None = None) -> Iterator[DedupRow]:
        try:
            yield from self.conn.execute(
                "SELECT seq, space, value, run, item FROM dedup_entries WHERE namespace = ? AND kind = ?"
                " AND seq > ? AND seq <= ? ORDER BY seq",
                (namespace, kind, after, _MAX_SEQ if upto is None else upto),
            )
        except self.db_errors as exc:
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
        except self.db_errors as exc:
            raise errors.StorageError(f"cannot read dedup_entries: {exc}") from exc

    def entry(self, seq: int) -> tuple[str | None, bytes] | None:
        try:
            row = self.conn.execute("SELECT space, value FROM dedup_entries WHERE seq = ?", (seq,)).fetchone()
        except self.db_errors as exc:
            raise errors.StorageError(f"cannot read dedup_entries: {exc}") from exc
        return None if row is None else (row[0], row[1])
