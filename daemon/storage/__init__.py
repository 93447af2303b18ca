"""Storage: the event log and the read model behind one interface, chosen by URL.

`open_backend(url)` is the one place a database is named: a plain path or
`sqlite:///PATH` is SQLite, `memory:` a log held in memory (tests), and
`postgresql://...` is refused until that backend is built. The writer, the commands and
the dedup loader get their `EventLog` from the backend, never from a path.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from tracklog.protocol import errors

from .eventlog import EventLog
from .sqlite.connect import Durability

__all__ = ["Backend", "Durability", "EventLog", "MemoryBackend", "SqliteBackend", "open_backend"]

MEMORY_URL: Final = "memory:"


class Backend(ABC):
    """Where the log lives: opens it, locks it against other daemons, names it."""

    #: The URL the backend was chosen by (for messages and logs).
    url: str

    @abstractmethod
    def open_log(self) -> EventLog:
        """The event log, opened for writing (the caller closes it)."""

    def open_reader(self) -> EventLog:
        """The event log opened for reading only, beside a daemon that writes to it (exports,
        a migration's source); appends through it are refused. By default `open_log`."""
        return self.open_log()

    @abstractmethod
    def exists(self) -> bool:
        """Whether there is a database there already (offline commands refuse to make one)."""

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the database against other daemons and offline commands (a no-op where
        nothing else can open it)."""
        yield

    @property
    def files_dir(self) -> Path | None:
        """Where derived indexes are saved beside the database (None: nowhere)."""
        return None

    def backup(self, dest: str | os.PathLike[str]) -> int:
        """Copy the database to dest while a daemon may write to it; the seq the copy holds."""
        raise errors.StorageError(f"{self.url}: backup is not supported by this backend")

    def new_generation(self) -> Backend:
        """An empty database beside this one, for a new generation of its log (a purge
        writes it); one left by a purge that did not finish is removed first."""
        raise errors.StorageError(f"{self.url}: a new log generation is not supported by this backend")

    def swap_in(self, generation: Backend) -> str:
        """Make `generation` (from `new_generation`, closed, verified) this database, the
        old one kept aside under the name returned until `drop_aside`. Atomic: at every
        moment this database is one whole generation or the other. Held under `exclusive`."""
        raise errors.StorageError(f"{self.url}: a new log generation is not supported by this backend")

    def aside(self) -> str | None:
        """The old generation a swap kept aside, if one is there."""
        return None

    def drop_aside(self) -> None:
        """Remove the old generation a swap kept aside (and its derived files)."""
        return None

    def __str__(self) -> str:
        return self.url


class SqliteBackend(Backend):
    """One SQLite database file, in WAL mode."""

    def __init__(self, path: str | os.PathLike[str], durability: Durability = "normal") -> None:
        self.path = Path(path)
        self.durability: Durability = durability
        self.url = str(self.path)

    def open_log(self) -> EventLog:
        from .sqlite.eventlog import SqliteEventLog

        return SqliteEventLog(self.path, self.durability)

    def open_reader(self) -> EventLog:
        from .sqlite.eventlog import SqliteEventLog

        return SqliteEventLog(self.path, readonly=True)

    def exists(self) -> bool:
        return self.path.exists()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        from ..dblock import exclusive

        with exclusive(self.path):
            yield

    @property
    def files_dir(self) -> Path | None:
        return Path(os.fspath(self.path) + ".dedup")

    def backup(self, dest: str | os.PathLike[str]) -> int:
        from .sqlite.backup import backup

        return backup(self.path, dest)

    def new_generation(self) -> Backend:
        from .sqlite.generations import new_generation

        return SqliteBackend(new_generation(self.path), self.durability)

    def swap_in(self, generation: Backend) -> str:
        from .sqlite.generations import swap_in

        if not isinstance(generation, SqliteBackend):
            raise errors.StorageError(f"{generation}: not an SQLite generation")
        return str(swap_in(self.path, generation.path))

    def aside(self) -> str | None:
        from .sqlite.generations import aside_path

        path = aside_path(self.path)
        return str(path) if path.exists() else None

    def drop_aside(self) -> None:
        from .sqlite.generations import drop_aside

        drop_aside(self.path)


class MemoryBackend(Backend):
    """A log held in memory: gone when the process ends. For tests and trials."""

    def __init__(self) -> None:
        self.url = MEMORY_URL

    def open_log(self) -> EventLog:
        from .memory import MemoryEventLog

        return MemoryEventLog()

    def exists(self) -> bool:
        return False


def open_backend(url: str | os.PathLike[str], durability: Durability = "normal") -> Backend:
    """The backend a `--db` value names: a path or `sqlite:///PATH` (SQLite), `memory:`.

    Raises StorageError for a scheme that is not built (`postgresql://` is the next one).
    """
    text = os.fspath(url)
    if text == MEMORY_URL:
        return MemoryBackend()
    if text.startswith("sqlite://"):
        path = text.removeprefix("sqlite://")
        if not path.startswith("/"):
            raise errors.StorageError(f"{text}: expected sqlite:///PATH (three slashes, then the path)")
        return SqliteBackend(path, durability)
    if text.startswith(("postgresql://", "postgres://")):
        raise errors.StorageError(
            f"{text}: the PostgreSQL backend is not built yet; use a path or sqlite:///PATH"
        )
    scheme, sep, _ = text.partition("://")
    if sep and scheme.isidentifier():
        raise errors.StorageError(f"{text}: unknown database scheme {scheme!r}; use a path or sqlite:///PATH")
    return SqliteBackend(text, durability)
