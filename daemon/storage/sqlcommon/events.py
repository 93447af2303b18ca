"""The event log read back: a query's page of stored events, and a subscription's catch-up
scan through a bounded window of seqs."""

from __future__ import annotations

from typing import Any, Final

from tracklog.protocol import errors
from tracklog.protocol.limits import MAX_QUERY_LIMIT
from tracklog.protocol.messages import Query, StoredEvent

from .dialect import Connection
from .eventlog import read_events
from .rows import marks, msgpack_decode

#: Seqs a catch-up read looks through at most, so a narrow filter over a long log still
#: answers in bounded time (and reports how far it looked).
SCAN_WINDOW: Final = 20_000


def query_events(conn: Connection, q: Query) -> tuple[list[Any], int | None]:
    """Stored events from `from_seq` on (1,000 by default), of a run and of some types."""
    from_seq = q.from_seq or 0
    if from_seq < 0:
        raise errors.BadQuery("from_seq: expected 0 or more", q.ref)
    limit = 1000 if q.limit is None else q.limit
    if limit < 0 or limit > MAX_QUERY_LIMIT:
        raise errors.BadQuery(f"limit: expected 0 to {MAX_QUERY_LIMIT}", q.ref)
    rows = read_events(conn, from_seq, limit, q.run, q.types)
    return rows, None


def scan_events(
    conn: Connection,
    after: int,
    limit: int,
    runs: frozenset[str] | None,
    types: frozenset[str] | None,
    pipelines: frozenset[str] | None,
) -> tuple[list[Any], int, int]:
    """Matching events after `after`: (events, the seq read up to, the log's head). The
    caller reads inside one snapshot, so the head and the rows agree."""
    head = conn.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
    end = min(head, after + SCAN_WINDOW)
    where = ["seq > ?", "seq <= ?"]
    args: list[Any] = [after, end]
    if runs is not None:
        where.append(f"run IN ({marks(runs)})")
        args.extend(runs)
    if types is not None:
        where.append(f"type IN ({marks(types)})")
        args.extend(types)
    if pipelines is not None:
        where.append(f"run IN (SELECT run FROM runs WHERE pipeline IN ({marks(pipelines)}))")
        args.extend(pipelines)
    args.append(limit)
    rows = conn.execute(
        f"SELECT seq, id, type, run, ts, recorded, data FROM events WHERE {' AND '.join(where)}"
        " ORDER BY seq LIMIT ?",
        args,
    ).fetchall()
    events = [
        StoredEvent(seq, type_, msgpack_decode(blob), recorded, ts, id_, run)
        for seq, id_, type_, run, ts, recorded, blob in rows
    ]
    scanned_to = events[-1].seq if len(events) >= limit else end
    return events, scanned_to, head
