"""Read helpers for the read modules not yet moved into `storage/`.

The event log itself is `storage.eventlog.EventLog` (SQLite: `storage/sqlite/eventlog.py`);
this name stays until the read side moves behind the read model.
"""

from __future__ import annotations

from .storage.sqlite.connect import connect
from .storage.sqlite.eventlog import read_events

__all__ = ["connect", "read_events"]
