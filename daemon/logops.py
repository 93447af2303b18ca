"""Moving an event log in and out of a database, whatever the backend: export to JSON
Lines, import from them, and migrate from one backend to another.

All three keep every event's seq and id, so each can be run again: an import or a
migration appends only what the target lacks, after checking that what it has agrees
event for event, and refuses (naming the first seq that does not) a target that holds
different events. They stream, a batch at a time, so a log of any size goes through in
constant memory; the target appends each batch in one transaction with its projections.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final

from tracklog.protocol import errors
from tracklog.protocol.messages import StoredEvent

from .logfile import BATCH, describe_difference, encode_line, read_lines, same_event
from .storage.eventlog import EventLog

#: Called after each batch a migration or an import committed, with the target's head.
Progress = Callable[[int], None]
NO_PROGRESS: Final[Progress] = lambda head: None  # noqa: E731


class Conflict(errors.StorageError):
    """The target holds an event that differs from the source's at the same seq."""


@dataclass(slots=True)
class Exported:
    """What an export wrote: how many events, and the head the log had when it began."""

    events: int
    head: int
    last_seq: int


def export_log(
    log: EventLog,
    out: BinaryIO,
    from_seq: int = 0,
    to_seq: int | None = None,
    run: str | None = None,
) -> Exported:
    """Write events with from_seq < seq <= to_seq (of one run) as JSON Lines to out.

    `to_seq` is fixed at the log's head when the export begins, so a daemon that goes on
    appending changes nothing of what is written: one consistent log, up to that seq.
    """
    head = log.head
    upto = head if to_seq is None else min(to_seq, head)
    count = 0
    last = from_seq
    for batch in _batched(log.stream(after=from_seq, to_seq=upto, run=run)):
        out.write(b"".join(encode_line(event) for event in batch))
        count += len(batch)
        last = batch[-1].seq
    out.flush()
    return Exported(count, head, last)


@dataclass(slots=True)
class Copied:
    """What an import or a migration did: events found already there, events appended."""

    matched: int
    appended: int
    head: int


def import_log(log: EventLog, lines: Iterable[bytes], progress: Progress = NO_PROGRESS) -> Copied:
    """Append the events of a JSON Lines stream that the log lacks, with their seqs and ids.

    Events at or below the log's head must be in it, equal; the first that is not stops
    the import with Conflict naming its seq, before anything of its batch is appended.
    Raises logfile.BadLine for a line that is not an event.
    """
    return _copy(log, read_lines(lines), progress)


def migrate(
    source: EventLog,
    target: EventLog,
    progress: Progress = NO_PROGRESS,
    batch: int = BATCH,
) -> Copied:
    """Copy the source's log into the target, from where the target's head is.

    The part both hold (up to the target's head) is compared event for event first, so a
    target that is a prefix of the source is resumed and any other is refused (Conflict).
    The head a purge kept past the last event is carried over too.
    """
    head = source.head
    if target.head > head:
        raise Conflict(
            f"the target's head ({target.head}) is past the source's ({head}): it holds another log"
        )
    result = _copy(target, _batched(source.stream(to_seq=head, batch=batch), batch), progress, whole=True)
    target.advance_head(head)
    result.head = target.head
    return result


def _copy(
    target: EventLog, batches: Iterable[list[StoredEvent]], progress: Progress, whole: bool = False
) -> Copied:
    """Check the batches' events the target holds, append the rest. With `whole`, the
    batches are the whole source, so the target may hold nothing they lack (an import
    may be of one run's events: a part of the log)."""
    matched = appended = 0
    previous = 0
    for batch in batches:
        head = target.head
        old = [e for e in batch if e.seq <= head]
        if old:
            _check_overlap(target, old, previous if whole else None)
            matched += len(old)
        previous = batch[-1].seq
        new = [e for e in batch if e.seq > head]
        if new:
            appended += target.append_stored(new)
            progress(target.head)
    return Copied(matched, appended, target.head)


def _check_overlap(target: EventLog, events: list[StoredEvent], after: int | None) -> None:
    """Every event must be in the target at its seq, equal; else Conflict naming the first.
    With `after`, neither may the target hold an event after it that is not among them."""
    start = events[0].seq - 1 if after is None else after
    held = {e.seq: e for e in target.stream(after=start, to_seq=events[-1].seq, batch=max(len(events), 1000))}
    if after is not None:
        wanted = {e.seq for e in events}
        extra = sorted(seq for seq in held if seq not in wanted)
        if extra:
            raise Conflict(
                f"seq {extra[0]}: the target holds an event the source does not: it holds another log"
            )
    for event in events:
        mine = held.get(event.seq)
        if mine is None:
            raise Conflict(
                f"seq {event.seq}: the target has no event there (its head is {target.head}): "
                "it holds another log, or a purged copy"
            )
        if not same_event(mine, event):
            raise Conflict(
                f"seq {event.seq}: the target holds a different event there "
                f"({describe_difference(mine, event)} differ): it holds another log"
            )


def _batched(events: Iterable[StoredEvent], size: int = BATCH) -> Iterator[list[StoredEvent]]:
    batch: list[StoredEvent] = []
    for event in events:
        batch.append(event)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
