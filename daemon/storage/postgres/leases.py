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

A daemon that dies (`kill -9`, its host gone) leaves its leases behind, never renewed
again, and nothing of its own times its runs. Every daemon therefore scans for such runs
(`unserved`, one query each renewal interval): running runs that have leases, none of
them renewed within `lost_after`. It marks them with a `LostMark` that counts every
daemon's leases, its own too, decided under the log's lock like any other mark; so of
several daemons that find the same run, the first marks it and the others find it no
longer running. A writer that reconnected to a surviving daemon has that daemon's fresh
lease, and keeps its run.

A running run with no lease at all is not scanned: every run written through a daemon
that leases has one from its first commit, so such a run was written only by a daemon
older than the leases (still running, maybe, during an upgrade: marking its runs would be
wrong), or left running while no daemon was up; every daemon times the runs running at
its start as it always did, and that covers the latter.

Leases of runs no longer running (finished, lost, purged) count for nothing and are
deleted once stale (`release_stale`); those of running runs stay until the run ends,
since they are what the scan finds a dead daemon's runs by.
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
    """Forget the leases not renewed for `older_than` seconds of runs no longer running
    (the table stays the size of the live runs; a lease of a run that is not running
    counts for nothing). A running run's leases stay, however old: the scan for runs of
    dead daemons finds them by these, and the run's lost mark ends it."""
    conn.raw.execute(
        f"DELETE FROM writer_leases w WHERE w.renewed < {_NOW} - %s"
        " AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.run = w.run AND r.status = 'running')",
        (older_than,),
    )


def unserved(conn: PgConnection, lost_after: float) -> list[str]:
    """The running runs that have leases, none renewed within `lost_after` seconds: no
    daemon serves a writer of theirs any more (the one that did is gone, say). One query
    over the leases (one row per live run and daemon), joined to `runs` by its key."""
    rows = conn.raw.execute(
        "SELECT w.run FROM writer_leases w JOIN runs r ON r.run = w.run AND r.status = 'running'"
        f" GROUP BY w.run HAVING max(w.renewed) < {_NOW} - %s ORDER BY w.run",
        (lost_after,),
    )
    return [run for (run,) in rows]


def markable(conn: PgConnection, runs: Iterable[str], daemon: str, lost_after: float) -> set[str]:
    """Of `runs`, those that may be marked lost now: running, and with no lease of another
    daemon renewed within `lost_after` seconds (`daemon` empty: of any daemon, the marking
    one's too, as the scan for dead daemons' runs has it). Call under the log's lock."""
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
