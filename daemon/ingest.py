"""The ingest core: what a write request becomes, decided without I/O.

Like a sans-I/O protocol, this takes a request and the known state (the next seq, the
ids the log already holds, the dedup indexes in memory) and gives back the rows to
append and the reply to send; the event log only writes the rows and applies their
projections. `plan_fresh` is the common case, an append whose ids are all new (the log
checks that with its unique index while inserting); `plan_append` decides duplicates
against the known ids; `plan_check` answers a near-duplicate check and records it.

The writer's requests are a tagged union (`WriteRequest`), dispatched with `match`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, assert_never

import msgspec

from tracklog.protocol import errors
from tracklog.protocol.events import Data, DedupRecordedData, Metrics, event_type
from tracklog.protocol.messages import (
    Ack,
    Append,
    Check,
    Checked,
    CheckOutcome,
    Duplicate,
    Match,
    StoredEvent,
)

from . import dedup as dd

# -- the writer's requests ------------------------------------------------------------


@dataclass(slots=True)
class AppendRequest:
    """An append decoded by the connection (the daemon's own appends, tests)."""

    append: Append


@dataclass(slots=True)
class RawAppendRequest:
    """An `append` frame still undecoded: the writer's thread decodes it with its group."""

    frame: bytes | str


@dataclass(slots=True)
class CheckRequest:
    """A near-duplicate check, answered (and recorded) in queue order."""

    check: Check


WriteRequest = AppendRequest | RawAppendRequest | CheckRequest

#: Bytes of frame counted as one event when sizing a group (a metrics event in a frame
#: takes 60 to 120 bytes).
BYTES_PER_EVENT = 80


def weight(request: WriteRequest) -> int:
    """How much of a group's event budget a request takes (a check: one per input)."""
    match request:
        case AppendRequest(append):
            return len(append.events)
        case RawAppendRequest(frame):
            return len(frame) // BYTES_PER_EVENT + 1
        case CheckRequest(check):
            return len(check.inputs or ()) + 1
        case _:
            assert_never(request)


# -- appends --------------------------------------------------------------------------

#: An event to append: (seq, id, type, run, ts, recorded, data). A tuple, not a struct:
#: an append of 50,000 events makes 50,000 of them.
Row = tuple[int, str | None, str, str | None, float, float, Data]


@dataclass(slots=True)
class AppendPlan:
    """What an append becomes: rows to append (seqs from the head on), its ack, and its
    events in stored form (only when asked to publish)."""

    rows: list[Row]
    ack: Ack
    events: list[StoredEvent] = field(default_factory=list)


def _stored(rows: list[Row]) -> list[StoredEvent]:
    return [
        StoredEvent(seq, type_, data, recorded, ts, id_, run)
        for seq, id_, type_, run, ts, recorded, data in rows
    ]


def plan_fresh(append: Append, first_seq: int, now: float, publish: bool) -> AppendPlan:
    """An append presumed to hold only new ids: every event gets the next seq.

    The caller must make sure no id was known (the SQLite log lets its unique index say
    so while inserting) and otherwise use `plan_append`.
    """
    rows: list[Row] = [
        (
            first_seq + position,
            event.id,
            "metrics" if event.__class__ is Metrics else event_type(event),
            event.run,
            now if event.ts is None else event.ts,
            now,
            event.data,
        )
        for position, event in enumerate(append.events)
    ]
    ack = Ack(
        accepted=len(rows),
        first_seq=first_seq if rows else None,
        last_seq=first_seq + len(rows) - 1 if rows else None,
        rejected=append.rejected,
        ref=append.ref,
    )
    return AppendPlan(rows, ack, _stored(rows) if publish else [])


def plan_append(
    append: Append, first_seq: int, now: float, known: Mapping[str, int], publish: bool
) -> AppendPlan:
    """An append some of whose ids may be known: a known id (or one seen earlier in this
    append) is acked as a duplicate naming the original seq and takes no seq."""
    indexes = append.indexes
    seen = dict(known)
    rows: list[Row] = []
    duplicates: list[Duplicate] = []
    seq = first_seq - 1
    for position, event in enumerate(append.events):
        event_id = event.id
        if event_id is not None:
            original = seen.get(event_id)
            if original is not None:
                duplicates.append(Duplicate(position if indexes is None else indexes[position], original))
                continue
        seq += 1
        if event_id is not None:
            seen[event_id] = seq
        type_ = "metrics" if event.__class__ is Metrics else event_type(event)
        rows.append((seq, event_id, type_, event.run, now if event.ts is None else event.ts, now, event.data))
    accepted = len(rows)
    ack = Ack(
        accepted=accepted,
        first_seq=first_seq if accepted else None,
        last_seq=seq if accepted else None,
        duplicates=duplicates,
        rejected=append.rejected,
        ref=append.ref,
    )
    return AppendPlan(rows, ack, _stored(rows) if publish else [])


# -- near-duplicate checks ------------------------------------------------------------


@dataclass(slots=True)
class CheckPlan:
    """A check's answer, the `dedup.recorded` rows it appends, and those in stored form."""

    checked: Checked
    rows: list[Row]
    events: list[StoredEvent]


def plan_check(
    check: Check, indexes: dd.DedupIndexes, first_seq: int, now: float, publish: bool
) -> CheckPlan | errors.ProtocolError:
    """Look each input up in the indexes and, when asked and new, record it there.

    A later input of the same check (or a later check in the same group) sees what an
    earlier one recorded, so of two racing checks of one text exactly one records. The
    indexes are memory: the caller rolls them back if the rows are not committed.
    """
    kind = check.kind
    namespace = check.namespace
    space = check.space if kind == "embedding" else None
    if check.inputs is None:
        inputs = [(check.text, check.value, check.vector, check.item)]
    else:
        inputs = [(i.text, i.value, i.vector, i.item) for i in check.inputs]
    keys: list[Any] = []
    dim = indexes.dimension(namespace, space) if space is not None else None
    for position, (text, value, vector, _) in enumerate(inputs):
        where = "check" if check.inputs is None else f"check.inputs[{position}]"
        try:
            if kind == "hash":
                keys.append(dd.sha256_key(text, value, has_value=value is not msgspec.UNSET))
            elif kind == "simhash":
                if value is not msgspec.UNSET:
                    keys.append(dd.simhash(dd.canonical_json(value).decode()))
                elif text is not None:
                    keys.append(dd.simhash(text))
                else:  # the codec lets no such check through
                    raise dd.InvalidCheck("text: required for kind 'simhash' (or value)")
            else:
                arr = dd.as_unit_vector([] if vector is None else vector)
                if dim is None:
                    dim = arr.shape[0]
                elif arr.shape[0] != dim:
                    raise dd.InvalidCheck(
                        f"vector: expected {dim} dimensions for space '{space}', got {arr.shape[0]}"
                    )
                keys.append(arr)
        except dd.InvalidCheck as exc:
            return errors.BadMessage(f"{where}.{exc}", check.ref)
    run = check.run
    outcomes: list[CheckOutcome] = []
    rows: list[Row] = []
    seq = first_seq - 1
    for key, (_, _, vector, item) in zip(keys, inputs, strict=True):
        found = indexes.find(namespace, kind, key, check.threshold, space)
        if found is not None:
            outcomes.append(CheckOutcome(True, Match(found.item, found.run, found.distance, found.seq)))
            continue
        if not check.record:
            outcomes.append(CheckOutcome(False, None))
            continue
        seq += 1
        value = vector if kind == "embedding" else key
        data = DedupRecordedData(namespace=namespace, kind=kind, value=value, item=item, space=space)
        indexes.record(namespace, kind, key, space, (seq, run, item))
        rows.append((seq, None, "dedup.recorded", run, now, now, data))
        outcomes.append(CheckOutcome(False, None, seq))
    if check.inputs is None:
        one = outcomes[0]
        checked = Checked(
            duplicate=one.duplicate, match=one.match, seq=seq, recorded=one.recorded, ref=check.ref
        )
    else:
        checked = Checked(
            duplicate=any(o.duplicate for o in outcomes), match=None, seq=seq, results=outcomes, ref=check.ref
        )
    return CheckPlan(checked, rows, _stored(rows) if publish else [])
