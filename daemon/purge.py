"""`tracklog purge`: forget, for real, the runs deleted more than N days ago.

The log is append-only, so nothing is deleted in place: a purge writes a new generation
of the log, every event but those of the purged runs, checks it, and swaps it in.

1. Under the database's exclusive lock (a running daemon holds it for its life, so a purge
   is refused while one serves the database: stop it, purge, start it).
2. The runs to purge: those whose last `run.deleted` (not followed by a `run.restored`)
   was recorded more than N days ago, read from the log itself.
3. A new generation beside the database (`Backend.new_generation`): the kept events
   appended as they are (`EventLog.append_stored`, in batches, each with its projections),
   with their seqs and ids, and the head of the old log kept (`advance_head`).
4. Checked before it is used: its projections equal a rebuild from its log (`verify`),
   and its events are exactly the old log's without the purged runs', event for event.
5. Swapped in (`Backend.swap_in`): the old generation goes aside, the new one takes the
   database's name, atomically; then it is verified again in place, and only then the old
   generation is removed (kept with `--keep-old`).

Seqs are kept, not renumbered: a seq is an event's public position. Clients hold them
(a subscription resumes from the last seq it saw; an ack named the seq of a duplicate; a
dedup match names the seq of its entry), backups, exports and migrated copies agree with
the log seq by seq, and items and artifacts are keyed by theirs. Renumbering would shift
every position a client holds, silently. So a purged log has gaps where the purged events
were (every reader goes by `seq >`, never by counting), and its head never goes back,
even when the last events were purged: the next append never reuses a seq a subscriber
has seen.

A kill at any moment leaves the database usable: before the swap the old generation was
only read (the partial new one is removed by the next purge); the swap is one rename.
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final, TextIO

from tracklog.protocol import errors
from tracklog.protocol.messages import StoredEvent

from .logfile import BATCH, same_event
from .storage import Backend
from .storage.eventlog import EventLog

DAY: Final = 86_400.0


@dataclass(slots=True)
class Purged:
    """What a purge did: the runs it removed and how many events, the head it kept."""

    runs: list[str] = field(default_factory=list)
    events: int = 0
    kept: int = 0
    head: int = 0
    aside: str | None = None


def runs_to_purge(log: EventLog, cutoff: float) -> dict[str, float]:
    """Runs deleted (and not restored since) at a `recorded` time before cutoff, with it."""
    deleted: dict[str, float] = {}
    for event in log.stream(types=["run.deleted", "run.restored"]):
        if event.run is None:
            continue
        if event.type == "run.deleted":
            deleted[event.run] = event.recorded
        else:
            deleted.pop(event.run, None)
    return {run: at for run, at in deleted.items() if at < cutoff}


def _kept(events: Iterator[StoredEvent], runs: set[str], result: Purged) -> Iterator[list[StoredEvent]]:
    """The events of the runs not purged, in batches; counts the purged ones in result."""
    batch: list[StoredEvent] = []
    for event in events:
        if event.run in runs:
            result.events += 1
        else:
            batch.append(event)
            if len(batch) >= BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def _check_generation(old: EventLog, new: EventLog, runs: set[str], head: int, out: TextIO) -> int:
    """The new generation's problems (0: none): its projections against a rebuild, its
    events against the old log's without the purged runs, its head."""
    report = io.StringIO()
    problems = new.verify(report)
    if problems:
        out.write(report.getvalue())
    expected = (e for e in old.stream(to_seq=head) if e.run not in runs)
    for mine in new.stream():
        want = next(expected, None)
        if want is None or not same_event(mine, want):
            print(f"purge: the new generation's event at seq {mine.seq} is not the old log's", file=out)
            return problems + 1
    missing = next(expected, None)
    if missing is not None:
        print(f"purge: the new generation lacks the event at seq {missing.seq}", file=out)
        problems += 1
    if new.head != head:
        print(f"purge: the new generation's head is {new.head}, the old log's {head}", file=out)
        problems += 1
    return problems


def purge(
    backend: Backend,
    older_than_days: float,
    now: float | None = None,
    out: TextIO = sys.stdout,
    keep_old: bool = False,
    dry_run: bool = False,
) -> Purged:
    """Remove the events of runs deleted more than `older_than_days` ago (see the module).

    Raises DatabaseLocked while a daemon serves the database, StorageError when the new
    generation does not check out (the database is then as it was), or before anything
    is read or written on a backend without generations (PostgreSQL, for now: see
    docs/operations.md)."""
    if not backend.has_generations:
        raise errors.StorageError(
            f"{backend}: purge is not supported on this backend yet (it writes a new generation of"
            " the log and swaps it in, which only SQLite databases can do for now); nothing was"
            " read or changed. To purge a PostgreSQL log: `tracklog migrate` it to SQLite, purge"
            " that, and migrate it back into an empty database"
        )
    cutoff = (time.time() if now is None else now) - older_than_days * DAY
    with backend.exclusive():
        stale = backend.aside()
        if stale is not None:
            _verify_live(backend, out)
            backend.drop_aside()
            print(f"removed {stale}: the old generation an earlier purge left aside", file=out)
        log = backend.open_log()
        try:
            log.catch_up()
            found = runs_to_purge(log, cutoff)
            result = Purged(sorted(found), head=log.head)
            if not found or dry_run:
                return result
            runs = set(found)
            generation = backend.new_generation()
            new = generation.open_log()
            try:
                new.catch_up()
                for batch in _kept(log.stream(to_seq=result.head), runs, result):
                    result.kept += new.append_stored(batch)
                new.advance_head(result.head)
                problems = _check_generation(log, new, runs, result.head, out)
            finally:
                new.close()
            if problems:
                raise errors.StorageError(
                    f"the new generation at {generation} did not check out ({problems} problems);"
                    f" {backend} is as it was"
                )
        finally:
            log.close()
        result.aside = backend.swap_in(generation)
        _verify_live(backend, out, runs)
        if not keep_old:
            backend.drop_aside()
            result.aside = None
    return result


def _verify_live(backend: Backend, out: TextIO, runs: set[str] | None = None) -> None:
    """The live generation verifies (and holds no event of the purged runs), or
    StorageError, leaving what is aside in place."""
    log = backend.open_log()
    try:
        report = io.StringIO()
        problems = log.verify(report)
        if runs:
            problems += sum(1 for e in log.stream() if e.run in runs)
    finally:
        log.close()
    if problems:
        out.write(report.getvalue())
        raise errors.StorageError(
            f"{backend} does not verify after the swap; the old generation is kept at {backend.aside()}"
        )
