"""Liveness: when a run counts as `lost`, and when a lost run is running again.

One policy, used by three places: the server marks a run `lost` when no connection has
written to it for a while (`lost_event`); the event log resumes a lost run in the
transaction of the next events that come for it (`resumable_runs`, `resume_events`);
the hub tracks each run's status from what it publishes (`status_after`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from tracklog.protocol.events import (
    AnyEvent,
    Event,
    RunDeleted,
    RunFinished,
    RunFinishedData,
    RunRestored,
    RunUpdated,
    RunUpdatedData,
)
from tracklog.protocol.messages import Append

RUNNING: Final = "running"
LOST: Final = "lost"
#: Events that only mark a run deleted or not: they are not a writer coming back, so
#: they never resume a `lost` run.
MARK_EVENTS: Final = (RunDeleted, RunRestored)
#: The only event types that change the status of a run already seen.
STATUS_TYPES: Final = frozenset({"run.finished", "run.updated"})


def lost_event(run: str) -> RunFinished:
    """The event that marks a run whose writers are all gone."""
    return RunFinished(run=run, data=RunFinishedData(status=LOST))


class LostMark(Append, tag="append"):
    """The daemon's own append of `lost_event`s. A backend several daemons share appends
    each only while no other daemon still serves a writer of its run (PostgreSQL's writer
    leases, decided under the log's lock); elsewhere it is a plain append."""

    #: The daemon marking, whose own leases do not count against its mark; empty: every
    #: daemon's count (the mark of runs whose daemon is gone, found by a lease scan).
    daemon: str = ""
    #: Seconds a run may go without a writer: leases renewed within them still count.
    lost_after: float = 0.0


def resumable_runs(events: Iterable[Event]) -> set[str]:
    """The runs these events write to that would be running again, were they lost."""
    return {e.run for e in events if e.run is not None and e.__class__ not in MARK_EVENTS}


def resume_events(lost: Iterable[str]) -> list[AnyEvent]:
    """`run.updated {status: running}` for each lost run that gets events again, in run
    order: appended just before those events, in the same transaction."""
    return [RunUpdated(run=run, data=RunUpdatedData(status=RUNNING)) for run in sorted(lost)]


def status_after(status: str | None, type_: str, data: Any) -> str:
    """A run's status after one of its events (`status`: before it; None for a run not
    seen yet, which any event makes running). `run.finished` sets the status, and
    `run.updated {status: running}` brings a run back.
    """
    if type_ == "run.finished":
        finished = _field(data, "status")
        if isinstance(finished, str):
            return finished
    elif type_ == "run.updated" and _field(data, "status") == RUNNING:
        return RUNNING
    return RUNNING if status is None else status


def _field(data: Any, name: str) -> Any:
    """A field of an event's data, typed struct or the dict a subscriber sees."""
    if isinstance(data, Mapping):
        return data.get(name)
    return getattr(data, name, None)
