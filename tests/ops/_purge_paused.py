"""A `tracklog purge` that stops at a given stage and waits there to be killed (for the
crash tests): `python -m tests.ops._purge_paused DB copy|swap`. Prints `paused` when there."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from tracklog.daemon import ops_commands
from tracklog.daemon.storage.sqlite import generations
from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog
from tracklog.protocol.messages import StoredEvent


def pause() -> None:
    print("paused", flush=True)
    sys.stdin.read()  # until killed
    raise SystemExit("not killed")


def main(db: str, stage: str) -> int:
    if stage == "copy":
        real = SqliteEventLog.append_stored

        def append_then_pause(self: SqliteEventLog, events: Sequence[StoredEvent]) -> int:
            appended = real(self, events)
            if self.path.name.endswith(".next"):
                pause()  # the new generation half written
            return appended

        SqliteEventLog.append_stored = append_then_pause  # type: ignore[method-assign]
    elif stage == "swap":

        def replace_paused(*args: Any) -> None:
            pause()  # the old generation linked aside, the new one not yet renamed in

        generations.os.replace = replace_paused  # type: ignore[assignment]
    return ops_commands.purge(db, 0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1], sys.argv[2]))
