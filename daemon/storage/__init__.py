"""Storage: the event log and the read model behind one interface, chosen by URL.

`open_backend(url)` is the one place a database is named: a plain path or
`sqlite:///PATH` is SQLite, `memory:` a log and read model held in memory, and
`postgresql://...` (or `postgres://...`) is PostgreSQL, which several daemons can share.
The writer, the commands and
the dedup loader get their `EventLog` from the backend, never from a path.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Final

from tracklog.protocol import errors

from .eventlog import EventLog
from .readmodel import ReadModel
from .sqlite.connect import Durability

__all__ = [
    "Backend",
    "Durability",
    "EventLog",
    "MemoryBackend",
    "PgBackend",
    "SqliteBackend",
    "is_postgres_url",
    "open_backend",
]

MEMORY_URL: Final = "memory:"


class Backend(ABC):
    """Where the log lives: opens it, locks it against other daemons, names it."""

    #: The URL the backend was chosen by (for messages and logs).
    url: str
    #: Whether `new_generation` and `swap_in` work here (a purge needs them).
    has_generations: ClassVar[bool] = False

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

    def open_read_model(self, *, scan: bool = False) -> ReadModel:
        """A read model on this backend's store (the caller closes it); `scan` as in
        `readmodel.open_read_model`."""
        from .readmodel import open_read_model

        return open_read_model(self._read_url, scan=scan)

    @property
    def _read_url(self) -> str:
        return self.url

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the database against other daemons and offline commands (a no-op where
        nothing else can open it)."""
        yield

    @property
    def files_dir(self) -> Path | None:
        """Where derived indexes are saved beside the database (None: nowhere)."""
        return None

    @property
    def artifacts_dir(self) -> Path | None:
        """Where the artifact store keeps blobs (None: the backend has none)."""
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

    has_generations: ClassVar[bool] = True

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

    @property
    def artifacts_dir(self) -> Path | None:
        return Path(os.fspath(self.path) + ".artifacts")

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
    """A log held in memory: gone when the process ends. For tests and trials.

    The backend holds one log: `open_log` gives it (every time), and each read model it
    opens reads that log's events (`MemoryReadModel`), so a daemon on `memory:` answers
    questions about what it was sent. No other process can reach it.
    """

    def __init__(self) -> None:
        from .memory import MemoryEventLog

        self.url = MEMORY_URL
        self.log = MemoryEventLog()

    def open_log(self) -> EventLog:
        return self.log

    def open_read_model(self, *, scan: bool = False) -> ReadModel:
        from .memory_readmodel import MemoryReadModel

        return MemoryReadModel(self.log)

    def exists(self) -> bool:
        return False


class PgBackend(Backend):
    """One PostgreSQL database, shared by any number of daemons (postgres/eventlog.py).

    Nothing is saved beside it: the dedup indexes are read from the database at start.
    """

    def __init__(self, url: str) -> None:
        from .postgres.connect import PgSettings, redact
        from .postgres.eventlog import new_daemon_id

        self.settings = PgSettings.from_url(url)  # checks tracklog's parameters now
        self._url = url
        self.url = redact(url)
        #: This daemon's name among those sharing the database (its writer leases).
        self.daemon_id = new_daemon_id()

    @property
    def conn_url(self) -> str:
        """The URL with its password, for the daemon's own connections."""
        return self._url

    @property
    def _read_url(self) -> str:
        return self._url  # with its password

    def open_log(self) -> EventLog:
        from .postgres.eventlog import PgEventLog

        return PgEventLog(self._url, daemon_id=self.daemon_id)

    def exists(self) -> bool:
        """Whether the database holds a tracklog log (the database itself must exist)."""
        from .postgres.connect import connect

        conn = connect(self.settings)
        try:
            row = conn.execute("SELECT to_regclass('events') IS NOT NULL").fetchone()
            return bool(row and row[0])
        finally:
            conn.close()


def is_postgres_url(url: str | os.PathLike[str]) -> bool:
    return os.fspath(url).startswith(("postgresql://", "postgres://"))


def open_backend(url: str | os.PathLike[str], durability: Durability = "normal") -> Backend:
    """The backend a `--db` value names: a path or `sqlite:///PATH` (SQLite), `memory:`,
    `postgresql://...` or `postgres://...` (PostgreSQL). Raises StorageError for another scheme.
    """
    text = os.fspath(url)
    if text == MEMORY_URL:
        return MemoryBackend()
    if text.startswith("sqlite://"):
        path = text.removeprefix("sqlite://")
        if not path.startswith("/"):
            raise errors.StorageError(f"{text}: expected sqlite:///PATH (three slashes, then the path)")
        return SqliteBackend(path, durability)
    if is_postgres_url(text):
        return PgBackend(text)
    scheme, sep, _ = text.partition("://")
    if sep and scheme.isidentifier():
        raise errors.StorageError(
            f"{text}: unknown database scheme {scheme!r}; use a path, sqlite:///PATH or postgresql://..."
        )
    return SqliteBackend(text, durability)
