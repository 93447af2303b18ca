"""Debug only: where the daemon's memory goes, dumped on SIGUSR1.

Off unless `TRACKLOG_MEMDEBUG` is set in the daemon's environment. Then each SIGUSR1
writes `memory-NNN.json` into `TRACKLOG_MEMDEBUG_DIR` (default: the current directory):
the RSS, the bytes SQLite has allocated (page caches of every connection, statements),
glibc's heap (in use and free but kept), the Python heap traced, and the sizes of the
daemon's own per-connection and per-run structures. With `TRACKLOG_MEMDEBUG=FRAMES`
above 0, tracemalloc runs too (keeping FRAMES frames per allocation) and each SIGUSR1
also writes `snapshot-NNN.tracemalloc` (a `tracemalloc.Snapshot.dump`). tracemalloc
slows every allocation and costs memory of its own, so none of this is on in normal
service; `bench/soak.py --memdebug FRAMES` sends the signals and compares the dumps.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import itertools
import json
import os
import signal
import tracemalloc
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog

log = structlog.get_logger("tracklog.memdebug")

#: The environment variable that turns it on: tracemalloc frames per allocation (0: none).
ENV_FRAMES = "TRACKLOG_MEMDEBUG"
#: Where the dumps go.
ENV_DIR = "TRACKLOG_MEMDEBUG_DIR"
#: sqlite3_status64's SQLITE_STATUS_MEMORY_USED: bytes SQLite has allocated, all connections.
_SQLITE_STATUS_MEMORY_USED = 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in [
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        ]
    ]


def _library(name: str) -> ctypes.CDLL | None:
    found = ctypes.util.find_library(name)
    try:
        return ctypes.CDLL(found) if found else None
    except OSError:
        return None


def sqlite_bytes() -> int | None:
    """Bytes SQLite has allocated now, over every connection of the process (None if unknown).

    The library `_sqlite3` is linked with is already loaded, so this asks that one.
    """
    lib = _library("sqlite3")
    if lib is None:
        return None
    current, highwater = ctypes.c_int64(), ctypes.c_int64()
    if lib.sqlite3_status64(_SQLITE_STATUS_MEMORY_USED, ctypes.byref(current), ctypes.byref(highwater), 0):
        return None
    return current.value


def malloc_bytes() -> dict[str, int]:
    """glibc's heap: bytes in use, free but kept by the allocator, and mmapped (empty elsewhere)."""
    libc = _library("c")
    if libc is None or not hasattr(libc, "mallinfo2"):
        return {}
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return {"in_use": info.uordblks + info.hblkhd, "free_kept": info.fordblks, "mmapped": info.hblkhd}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def install(loop: asyncio.AbstractEventLoop, sizes: Callable[[], Mapping[str, int]]) -> bool:
    """Set up the SIGUSR1 dumps when the environment asks; whether it did.

    `sizes` gives the daemon's own structures by name (connections, subscriptions, ...).
    """
    frames_text = os.environ.get(ENV_FRAMES, "").strip()
    if not frames_text:
        return False
    frames = int(frames_text)
    if frames > 0:
        tracemalloc.start(frames)
    directory = Path(os.environ.get(ENV_DIR) or ".")
    directory.mkdir(parents=True, exist_ok=True)
    numbers = itertools.count(1)

    def dump() -> None:
        number = next(numbers)
        report: dict[str, object] = {
            "rss": rss_bytes(),
            "sqlite": sqlite_bytes(),
            "malloc": malloc_bytes(),
            "sizes": dict(sizes()),
        }
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(str(directory / f"snapshot-{number:03d}.tracemalloc"))
            report["python_traced"] = tracemalloc.get_traced_memory()[0]
            report["tracemalloc_overhead"] = tracemalloc.get_tracemalloc_memory()
        path = directory / f"memory-{number:03d}.json"
        path.write_text(json.dumps(report) + "\n")
        log.warning("memory dump", path=str(path))

    loop.add_signal_handler(signal.SIGUSR1, dump)
    log.warning("memdebug on: SIGUSR1 dumps memory", frames=frames, directory=str(directory))
    return True
