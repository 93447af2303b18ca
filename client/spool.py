"""The disk spool: where events wait, in order, while the daemon is away or the queue is full.

A spool file belongs to one tracker at a time: the owner holds an exclusive `flock` on
it for as long as it has the file open, and the kernel drops that lock when the owning
process dies, however it dies. The next tracker on the machine that scans the spool
directory and gets the lock adopts the file and sends it, so a spool left by a crashed
pipeline is handed on, and two trackers never send the same file at once. Locking the
data file itself, rather than a separate lock file, leaves no stale lock to clean up and
no window where the lock and the data disagree; after getting the lock, the adopter
checks that the path still names the inode it locked, because the owner may have
finished and unlinked it in between.

File layout, little-endian:

    header   b"TLSPOOL1" | acked: u64       acked = offset of the first unacked record
    record   length: u32 | count: u32 | crc32: u32 | payload (length bytes)

A payload is one batch: the MessagePack array of its events, exactly the `events` of
the append that sends it. Records are only appended. `acked` is rewritten in place
after each ack (8 bytes, no fsync: a stale value only means a few batches are sent
twice, and the daemon drops the copies by id). A record cut short by a crash fails its
length or CRC check and ends the file there.

Durability (the fsync policy): a record is written with one `pwritev` as soon as it is
spilled, so it is in the page cache and survives the death of the pipeline's process at
once. `fdatasync` runs off the caller's thread, at most once a second while a spool has
unsynced records, and when the tracker closes; so a power loss costs at most about a
second of spilled events, and spilling never waits for the disk.

New files are created under a name the scanner ignores, locked, given their header and
only then renamed to `*.spool`, so no other tracker can adopt a half-made file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Final

from .ids import uuid7

log = logging.getLogger("tracklog")

MAGIC: Final = b"TLSPOOL1"
HEADER: Final = struct.Struct("<8sQ")
RECORD: Final = struct.Struct("<III")
HEADER_SIZE: Final = HEADER.size
SUFFIX: Final = ".spool"


def default_spool_root() -> Path:
    """`$XDG_CACHE_HOME/tracklog/spool`, else `~/.cache/tracklog/spool`."""
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache) if cache else Path.home() / ".cache"
    return base / "tracklog" / "spool"


def endpoint_dir(root: Path, url: str) -> Path:
    """The spool folder for one daemon address, so a spool is only ever sent where it was meant to go."""
    readable = re.sub(r"[^A-Za-z0-9.]+", "_", url.split("://", 1)[-1]).strip("_")[:60]
    digest = hashlib.sha256(url.encode()).hexdigest()[:10]
    return root / f"{readable}-{digest}"


class SpoolFile:
    """One locked spool file: append records, read them back in order, mark them acked.

    Offsets: `acked <= read <= size`. Records in [acked, read) have been handed to the
    connection and await their ack; [read, size) are still to send.
    """

    def __init__(
        self, path: Path, fd: int, size: int, acked: int, unacked_events: int, adopted: bool
    ) -> None:
        self.path = path
        self.fd = fd
        self.size = size
        self.acked = acked
        self.read = acked
        self.unacked_events = unacked_events
        self.adopted = adopted
        self.unsynced = False
        self.closed = False

    # -- opening ----------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path) -> SpoolFile:
        """A new, empty, locked spool file owned by this tracker."""
        directory.mkdir(parents=True, exist_ok=True)
        name = uuid7.new()
        tmp = directory / f".{name}.new"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.pwrite(fd, HEADER.pack(MAGIC, HEADER_SIZE), 0)
            path = directory / f"{name}{SUFFIX}"
            os.rename(tmp, path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(directory)
        return cls(path, fd, HEADER_SIZE, HEADER_SIZE, 0, adopted=False)

    @classmethod
    def adopt(cls, path: Path) -> SpoolFile | None:
        """Take over a spool file whose owner is gone; None when it is owned, gone or empty."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                os.close(fd)
                return None
        except FileNotFoundError:
            os.close(fd)
            return None
        try:
            return cls._recover(path, fd)
        except Exception:
            os.close(fd)
            raise

    @classmethod
    def _recover(cls, path: Path, fd: int) -> SpoolFile | None:
        file_size = os.fstat(fd).st_size
        header = os.pread(fd, HEADER_SIZE, 0)
        if len(header) < HEADER_SIZE or header[:8] != MAGIC:
            # Not ours, or cut before the header: keep it aside for a human, never resend it.
            log.error("tracklog: %s is not a spool file; renamed to *.corrupt", path)
            os.rename(path, path.with_suffix(".corrupt"))
            os.close(fd)
            return None
        _, acked = HEADER.unpack(header)
        if not HEADER_SIZE <= acked <= file_size or (acked < file_size and _check_record(fd, acked) is None):
            acked = HEADER_SIZE  # unreliable cursor: resend all, the daemon drops copies
        end, events = acked, 0
        while end < file_size:
            record = _check_record(fd, end)
            if record is None:
                log.warning(
                    "tracklog: %s: %d bytes at the end are a record cut short by a crash; dropped",
                    path,
                    file_size - end,
                )
                os.ftruncate(fd, end)
                break
            length, count = record
            end += RECORD.size + length
            events += count
        spool = cls(path, fd, end, acked, events, adopted=True)
        if events == 0:
            spool.close(delete=True)
            return None
        return spool

    # -- records ----------------------------------------------------------------------

    def append(self, payload: bytes, count: int) -> int:
        """Write one record at the end; returns the offset just past it."""
        header = RECORD.pack(len(payload), count, zlib.crc32(payload))
        offset = self.size
        written = os.pwritev(self.fd, [header, payload], offset)
        if written != len(header) + len(payload):
            record = header + payload
            while written < len(record):
                written += os.pwrite(self.fd, record[written:], offset + written)
        self.size = offset + len(header) + len(payload)
        self.unacked_events += count
        self.unsynced = True
        return self.size

    def read_next(self) -> tuple[bytes, int, int] | None:
        """The next unread record: (payload, event count, offset past it), or None at the end."""
        if self.read >= self.size:
            return None
        header = os.pread(self.fd, RECORD.size, self.read)
        length, count, crc = RECORD.unpack(header) if len(header) == RECORD.size else (0, 0, -1)
        payload = os.pread(self.fd, length, self.read + RECORD.size) if crc != -1 else b""
        if crc == -1 or len(payload) != length or zlib.crc32(payload) != crc:
            log.error(
                "tracklog: %s: unreadable record at offset %d; the rest of the file is dropped",
                self.path,
                self.read,
            )
            os.ftruncate(self.fd, self.read)
            self.size = self.read
            self.unacked_events = 0
            return None
        self.read += RECORD.size + length
        return payload, count, self.read

    def ack(self, end: int, count: int) -> None:
        """The records up to `end` are committed by the daemon."""
        self.acked = end
        self.unacked_events -= count
        os.pwrite(self.fd, struct.pack("<Q", end), 8)

    def rewind(self) -> None:
        """The connection is gone: what was in flight is sent again from the last ack."""
        self.read = self.acked

    @property
    def has_unread(self) -> bool:
        return self.read < self.size

    @property
    def done(self) -> bool:
        """Every record is acked."""
        return self.acked >= self.size

    def reset(self) -> None:
        """Empty a fully acked file so it can be reused without growing."""
        os.ftruncate(self.fd, HEADER_SIZE)
        os.pwrite(self.fd, struct.pack("<Q", HEADER_SIZE), 8)
        self.size = self.acked = self.read = HEADER_SIZE
        self.unacked_events = 0

    def sync(self) -> None:
        if self.unsynced:
            os.fdatasync(self.fd)
            self.unsynced = False

    def close(self, delete: bool) -> None:
        """Release the file; delete it first (while still locked) when asked."""
        if self.closed:
            return
        self.closed = True
        try:
            if delete:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            else:
                os.fsync(self.fd)
        finally:
            os.close(self.fd)


class Spool:
    """The spool folder of one tracker: its own file (made on first spill) and adopted ones."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.own: SpoolFile | None = None
        self.adopted: list[SpoolFile] = []
        #: Events taken over from other processes' spools, for stats.
        self.adopted_events = 0

    def own_file(self) -> SpoolFile:
        if self.own is None:
            self.own = SpoolFile.create(self.directory)
        return self.own

    def adopt_orphans(self) -> int:
        """Adopt every spool file in the folder that no live tracker holds; returns events adopted."""
        if not self.directory.is_dir():
            return 0
        known = {f.path for f in self.adopted}
        if self.own is not None:
            known.add(self.own.path)
        found = 0
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):  # uuid7 names: oldest first
            if path in known:
                continue
            try:
                spool = SpoolFile.adopt(path)
            except OSError as exc:
                log.warning("tracklog: cannot adopt spool %s: %s", path, exc)
                continue
            if spool is not None:
                self.adopted.append(spool)
                found += spool.unacked_events
        self.adopted_events += found
        if found:
            log.info("tracklog: adopted %d spooled events left by another process", found)
        return found

    def files(self) -> list[SpoolFile]:
        """In sending order: adopted files (older) first, then our own."""
        if self.own is None:
            return self.adopted
        return [*self.adopted, self.own]

    def next_unread(self) -> SpoolFile | None:
        for spool in self.adopted:
            if spool.has_unread:
                return spool
        if self.own is not None and self.own.has_unread:
            return self.own
        return None

    @property
    def unacked_events(self) -> int:
        return sum(f.unacked_events for f in self.files())

    @property
    def empty(self) -> bool:
        """Nothing left to send or to be acked."""
        return all(f.done for f in self.files())

    def collect(self) -> None:
        """Delete adopted files that are fully acked; empty our own when it is."""
        if self.adopted:
            keep = []
            for spool in self.adopted:
                if spool.done:
                    spool.close(delete=True)
                else:
                    keep.append(spool)
            self.adopted = keep
        own = self.own
        if own is not None and own.done and own.size > HEADER_SIZE:
            own.reset()

    def sync(self) -> None:
        for spool in self.files():
            spool.sync()

    def close(self) -> None:
        """Release every file: delete the empty ones, fsync and keep the rest for the next tracker."""
        for spool in self.files():
            spool.close(delete=spool.done)
        self.adopted = []
        self.own = None


def _check_record(fd: int, offset: int) -> tuple[int, int] | None:
    """(length, count) of a whole, intact record at offset, or None."""
    header = os.pread(fd, RECORD.size, offset)
    if len(header) < RECORD.size:
        return None
    length, count, crc = RECORD.unpack(header)
    payload = os.pread(fd, length, offset + RECORD.size)
    if len(payload) != length or zlib.crc32(payload) != crc:
        return None
    return length, count


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
