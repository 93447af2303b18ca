"""Writer leases: which daemon has a connected writer for which run, so that no daemon
marks a run `lost` while another one still serves its writer.

One row per (run, daemon), renewed by the daemon while a connection of its own writes to
the run: in the group commit that writes to it (at once), and every `renew_interval`
while the writer stays connected (an idle writer keeps its run). Times are the
database's clock (`clock_timestamp()`), so daemons on hosts whose clocks differ agree.

A daemon's lost mark (`liveness.LostMark`) is decided under the log's lock, in the
transaction that would append it: a run is marked only while it is running and no other
daemon holds a lease renewed within the marking daemon's `lost_after`. SQLite has one
daemon and no leases: there the mark is appended as it always was.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from .connect import PgConnection

LEASES_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS writer_leases ("
    ' run TEXT COLLATE "C" NOT NULL, daemon TEXT NOT NULL, renewed DOUBLE PRECISION NOT NULL,'
    " PRIMARY KEY (run, daemon))"
)
_NOW: Final = "extract(epoch from clock_timestamp())"
_RENEW: Final = (
    f"INSERT INTO writer_leases(run, daemon, renewed) SELECT r, %s, {_NOW} FROM unnest(%s::text[]) AS r"
    " ON CONFLICT (run, daemon) DO UPDATE SET renewed = excluded.renewed"
)


def renew(conn: PgConnection, daemon: str, runs: Iterable[str]) -> None:
    """Renew (or take) this daemon's leases on `runs`, in the caller's transaction if any."""
    names = sorted(set(runs))
    if names:
        conn.raw.execute(_RENEW, (daemon, names))


def release_stale(conn: PgConnection, older_than: float) -> None:
    """Forget leases not renewed for `older_than` seconds (kept small; never needed for
    correctness: a stale lease counts for nothing)."""
    conn.raw.execute(f"DELETE FROM writer_leases WHERE renewed < {_NOW} - %s", (older_than,))


def markable(conn: PgConnection, runs: Iterable[str], daemon: str, lost_after: float) -> set[str]:
    """Of `runs`, those that may be marked lost now: running, and with no lease of another
    daemon renewed within `lost_after` seconds. Call under the log's lock."""
    names = sorted(set(runs))
    if not names:
        return set()
    rows = conn.raw.execute(
        "SELECT r.run FROM runs r WHERE r.run = ANY(%s::text[]) AND r.status = 'running'"
        " AND NOT EXISTS (SELECT 1 FROM writer_leases w WHERE w.run = r.run AND w.daemon <> %s"
        f" AND w.renewed > {_NOW} - %s)",
        (names, daemon, lost_after),
    )
    return {run for (run,) in rows}
