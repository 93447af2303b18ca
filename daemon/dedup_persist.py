"""Saved copies of the embedding indexes, and loading every dedup index after the daemon listens.

Rebuilding an hnswlib index from `dedup_entries` costs minutes at 200,000 vectors (each
insert searches the graph). So each namespace's embedding spaces are saved with hnswlib's
`save_index`, beside the database:

    <db>.dedup/<h>.json              the header: namespace, the seq the copy covers, per space
                                     its dimension, label count, file name, size and CRC-32
    <h>.<seq>.<i>.hnsw               space i's hnswlib index (labels are positions in entries)
    <h>.<seq>.entries                MessagePack: per space, (seq, run, item) of each label and
                                     the labels whose add was rolled back (marked deleted)

where <h> is a hash of the namespace (namespaces may hold any character). The header is
written last and renamed into place, and the data files carry the seq in their names, so a
crash mid-save leaves the previous copy whole.

A saved copy is a cache, never trusted: it is used only when its header matches the build
parameters, its seq is not past the log's head, every file has the recorded size and CRC,
the hnswlib file's own header agrees on the element count and dimension, the seqs of its
live labels are exactly the table's seqs up to that seq, and a few vectors read back equal
the table's. Otherwise it is discarded and the namespace rebuilt from the table. Entries
recorded after the copy's seq (a `kill -9` since the last save) are then added from the table.

At start the writer marks every (namespace, kind) with entries as pending (one index probe
each) and the daemon listens; a loader thread reads them in a read transaction of its own
and hands each to the writer's thread to install. A check of a pending unit waits for that
unit alone. Saves happen every SAVE_EVERY_VECTORS new vectors or SAVE_EVERY_SECONDS after
the first unsaved one, on a saver thread, and at clean shutdown.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec
import numpy as np
import structlog

from . import dedup as dd

if TYPE_CHECKING:
    from tracklog.protocol.messages import Check

    from .storage.eventlog import DedupEntries
    from .storage.sqlite.eventlog import SqliteEventLog

log = structlog.get_logger("tracklog.dedup")

FORMAT: Final = 1
#: Save a namespace's embeddings after this many new vectors (what a kill -9 makes the next
#: start add again: about 2 to 5 s of hnswlib inserts on 2 cores at 384 dimensions)...
SAVE_EVERY_VECTORS: Final = 10_000
#: ... or this many seconds after the last save, when there is anything new.
SAVE_EVERY_SECONDS: Final = 300.0
#: Vectors read back from a loaded copy and compared with the table's.
SPOT_CHECKS: Final = 8
#: Vectors added per hnswlib call when rebuilding (a stop request is looked at between).
ADD_CHUNK: Final = 10_000
_READ_CHUNK: Final = 1 << 20
_msgpack = msgspec.msgpack.Encoder()
_decode = msgspec.msgpack.Decoder().decode


class SavedSpace(msgspec.Struct):
    space: str
    dim: int
    labels: int
    live: int
    file: str
    size: int
    crc32: int


class Header(msgspec.Struct):
    format: int
    namespace: str
    seq: int
    metric: str
    m: int
    ef_construction: int
    spaces: list[SavedSpace]
    entries_file: str
    entries_size: int
    entries_crc32: int


class StaleSave(Exception):
    """A saved copy that does not match the log (the message says how); it is rebuilt."""


#: What a save takes, per space, while it holds the space's lock: the index, its label
#: count, the entries of those labels and the deleted labels.
SpaceSnapshot = tuple[str, dd.EmbeddingIndex, int, list[dd.Entry], list[int]]


def files_dir(db_path: str | os.PathLike[str]) -> Path:
    return Path(os.fspath(db_path) + ".dedup")


def stem(namespace: str) -> str:
    return hashlib.sha256(namespace.encode()).hexdigest()[:32]


def file_crc(path: Path) -> tuple[int, int]:
    """(size, CRC-32) of a file, read in chunks."""
    crc = 0
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return size, crc


def _write_replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -- saving -------------------------------------------------------------------------------


def snapshot(indexes: dd.DedupIndexes, namespace: str) -> list[SpaceSnapshot]:
    """Take each space's lock and what a save needs (on the writer's thread, between
    transactions, so the copy holds exactly what is committed). The save releases the locks."""
    out: list[SpaceSnapshot] = []
    for (ns, space), emb in sorted(indexes.embedding.items(), key=lambda kv: kv[0]):
        if ns != namespace:
            continue
        emb.lock.acquire()
        labels = len(emb.entries)
        out.append((space, emb, labels, emb.entries[:labels], sorted(emb.deleted)))
    return out


def release(spaces: list[SpaceSnapshot]) -> None:
    for _, emb, _, _, _ in spaces:
        emb.lock.release()


def save_namespace(files: Path, namespace: str, seq: int, spaces: list[SpaceSnapshot]) -> Header | None:
    """Write a namespace's spaces as a copy covering `seq` (the caller holds their locks).
    With no spaces (the namespace was cleared), its saved files are removed."""
    files.mkdir(parents=True, exist_ok=True)
    base = stem(namespace)
    if not spaces:
        remove_saved(files, namespace)
        return None
    saved: list[SavedSpace] = []
    for position, (space, emb, labels, _, deleted) in enumerate(spaces):
        name = f"{base}.{seq}.{position}.hnsw"
        tmp = files / (name + ".tmp")
        emb.index.save_index(str(tmp))
        size, crc = file_crc(tmp)
        os.replace(tmp, files / name)
        saved.append(SavedSpace(space, emb.dim, labels, labels - len(deleted), name, size, crc))
    blob = _msgpack.encode([[entries, deleted] for _, _, _, entries, deleted in spaces])
    entries_name = f"{base}.{seq}.entries"
    _write_replace(files / entries_name, blob)
    header = Header(
        FORMAT,
        namespace,
        seq,
        "cosine",
        dd.HNSW_M,
        dd.HNSW_EF_CONSTRUCTION,
        saved,
        entries_name,
        len(blob),
        zlib.crc32(blob),
    )
    _write_replace(files / f"{base}.json", msgspec.json.encode(header))
    keep = {f"{base}.json", entries_name, *(s.file for s in saved)}
    for path in files.glob(f"{base}.*"):
        if path.name not in keep:
            path.unlink(missing_ok=True)
    return header


def remove_saved(files: Path, namespace: str) -> None:
    for path in files.glob(f"{stem(namespace)}.*"):
        path.unlink(missing_ok=True)


# -- loading ------------------------------------------------------------------------------


def _hnsw_file_header(path: Path) -> tuple[int, int]:
    """(element count, bytes of data per element) from an hnswlib index file's header
    (hnswlib writes offsetLevel0, max_elements, cur_element_count, size_data_per_element,
    label_offset, offsetData as 8-byte integers first)."""
    with open(path, "rb") as f:
        raw = f.read(48)
    if len(raw) < 48:
        raise StaleSave(f"{path.name}: truncated header")
    _, _, count, _, label_offset, offset_data = struct.unpack("<6Q", raw)
    return count, label_offset - offset_data


def load_saved(
    logged: DedupEntries, files: Path, namespace: str, upto: int
) -> tuple[dict[str, dd.EmbeddingIndex], int] | None:
    """A namespace's saved spaces and the seq they cover, checked against the table; None
    when there is no saved copy. Raises StaleSave when one does not match."""
    import hnswlib

    header_path = files / f"{stem(namespace)}.json"
    try:
        raw = header_path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        header = msgspec.json.decode(raw, type=Header)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise StaleSave(f"unreadable header: {exc}") from None
    if header.format != FORMAT or header.namespace != namespace:
        raise StaleSave("another format or namespace")
    if (header.metric, header.m, header.ef_construction) != ("cosine", dd.HNSW_M, dd.HNSW_EF_CONSTRUCTION):
        raise StaleSave("built with other hnswlib parameters")
    if header.seq > upto:
        raise StaleSave(f"it covers seq {header.seq}, past the log's head {upto}")
    entries_path = files / header.entries_file
    try:
        blob = entries_path.read_bytes()
    except FileNotFoundError:
        raise StaleSave(f"{header.entries_file} is missing") from None
    if len(blob) != header.entries_size or zlib.crc32(blob) != header.entries_crc32:
        raise StaleSave(f"{header.entries_file}: size or checksum differs")
    try:
        per_space = _decode(blob)
        if len(per_space) != len(header.spaces):
            raise ValueError("space count")
        labelled: list[tuple[list[dd.Entry], set[int]]] = []
        live_seqs: list[int] = []
        for saved, (entries, deleted) in zip(header.spaces, per_space, strict=True):
            entries = [(int(e[0]), e[1], e[2]) for e in entries]
            gone = {int(d) for d in deleted}
            if (
                len(entries) != saved.labels
                or len(entries) - len(gone) != saved.live
                or any(not 0 <= d < saved.labels for d in gone)
            ):
                raise ValueError("label counts")
            live_seqs.extend(e[0] for i, e in enumerate(entries) if i not in gone)
            labelled.append((entries, gone))
    except (msgspec.DecodeError, ValueError, TypeError, IndexError) as exc:
        raise StaleSave(f"{header.entries_file}: malformed ({exc})") from None
    live_seqs.sort()
    table_seqs = logged.seqs(namespace, "embedding", header.seq)
    if live_seqs != table_seqs:
        raise StaleSave(f"its entries differ from the log's up to seq {header.seq}")
    built: dict[str, dd.EmbeddingIndex] = {}
    for saved, (entries, gone) in zip(header.spaces, labelled, strict=True):
        path = files / saved.file
        if not path.exists():
            raise StaleSave(f"{saved.file} is missing")
        if file_crc(path) != (saved.size, saved.crc32):
            raise StaleSave(f"{saved.file}: size or checksum differs")
        count, data_size = _hnsw_file_header(path)
        if count != saved.labels or data_size != 4 * saved.dim:
            raise StaleSave(
                f"{saved.file}: holds {count} vectors of {data_size // 4} dimensions, "
                f"the header says {saved.labels} of {saved.dim}"
            )
        index = hnswlib.Index(space="cosine", dim=saved.dim)
        try:
            index.load_index(str(path), max_elements=max(saved.labels, dd.HNSW_INITIAL_CAPACITY))
        except RuntimeError as exc:
            raise StaleSave(f"{saved.file}: hnswlib refused it ({exc})") from None
        index.set_ef(dd.HNSW_EF)
        emb = dd.EmbeddingIndex.wrap(index, saved.dim, entries, gone)
        _spot_check(logged, saved, emb)
        built[saved.space] = emb
    return built, header.seq


def _spot_check(entries: DedupEntries, saved: SavedSpace, emb: dd.EmbeddingIndex) -> None:
    """Compare a few of the copy's vectors (first, last, evenly between) with the table's."""
    live = [i for i in range(len(emb.entries)) if i not in emb.deleted]
    if not live:
        return
    picks = sorted({live[int(k)] for k in np.linspace(0, len(live) - 1, num=min(SPOT_CHECKS, len(live)))})
    stored = emb.index.get_items(picks)
    for label, vector in zip(picks, stored, strict=True):
        row = entries.entry(emb.entries[label][0])
        if row is None or (row[0] or "") != saved.space:
            raise StaleSave(f"seq {emb.entries[label][0]} is not in space '{saved.space}' in the log")
        logged = np.asarray(_decode(row[1]), dtype=np.float32)
        if logged.shape != (saved.dim,):
            raise StaleSave(f"the log's vectors have {logged.size} dimensions, the copy {saved.dim}")
        logged /= np.linalg.norm(logged)
        if not np.allclose(np.asarray(vector, dtype=np.float32), logged, atol=1e-4):
            raise StaleSave(f"the vector of seq {emb.entries[label][0]} differs from the log's")


def add_rows(
    entries: DedupEntries,
    built: dict[str, dd.EmbeddingIndex],
    namespace: str,
    after: int,
    upto: int | None,
    stop: threading.Event | None = None,
) -> int:
    """Add a namespace's embedding entries with after < seq <= upto from the table; returns how many."""
    pending: dict[str, tuple[list[Any], list[dd.Entry]]] = {}
    added = 0

    def flush(space: str) -> None:
        vectors, held = pending.pop(space)
        matrix = np.asarray(vectors, dtype=np.float32)
        emb = built.get(space)
        if emb is None:
            emb = built[space] = dd.EmbeddingIndex(
                matrix.shape[1], capacity=max(dd.HNSW_INITIAL_CAPACITY, len(held))
            )
        emb.add_many(matrix, held)

    for seq, space, blob, run, item in entries.rows(namespace, "embedding", after, upto):
        vectors, held = pending.setdefault(space or "", ([], []))
        vectors.append(_decode(blob))
        held.append((seq, run, item))
        added += 1
        if len(held) >= ADD_CHUNK:
            flush(space or "")
            if stop is not None and stop.is_set():
                raise InterruptedError("stopping")
    for space in list(pending):
        flush(space)
    return added


def load_embeddings(
    entries: DedupEntries,
    files: Path | None,
    namespace: str,
    upto: int | None,
    stop: threading.Event | None = None,
) -> tuple[dict[str, dd.EmbeddingIndex], str, int]:
    """A namespace's embedding spaces as of seq `upto`: from the saved copy when it checks
    out, plus what came after it; else rebuilt from the table. Returns (spaces, how, added)."""
    built: dict[str, dd.EmbeddingIndex] | None = None
    after = 0
    how = "rebuilt"
    if files is not None:
        try:
            loaded = load_saved(entries, files, namespace, dd._MAX_SEQ if upto is None else upto)
        except (StaleSave, OSError) as exc:
            log.warning("saved embedding index not used; rebuilding it", namespace=namespace, reason=str(exc))
            loaded = None
        if loaded is not None:
            built, after = loaded
            how = "saved"
    if built is None:
        built = {}
    added = add_rows(entries, built, namespace, after, upto, stop)
    return built, how, added


# -- the daemon's side: loading after start, saving now and then ---------------------------


class DedupRuntime:
    """Loads the dedup indexes after the daemon listens and saves the embedding indexes.

    Used by the Writer: `begin` (writer's thread) and `start` (event loop) at start-up,
    `ready` before a check is queued, `after_commit` (writer's thread) after each group,
    `close` (writer's thread) at shutdown.
    """

    def __init__(
        self,
        store: SqliteEventLog,
        executor: ThreadPoolExecutor,
        loop: asyncio.AbstractEventLoop,
        files: Path | None,
    ) -> None:
        self.store = store
        self.executor = executor
        self.loop = loop
        self.files = files
        self.upto = 0
        self.units: list[dd.Unit] = []
        self.events: dict[dd.Unit, asyncio.Event] = {}
        self._stop = threading.Event()
        self._loader: threading.Thread | None = None
        self._saver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracklog-dedup-save")
        self._saving: set[str] = set()
        #: The latest save of each namespace, running or done (what a caller can wait for).
        self.saves: dict[str, Future[None]] = {}
        self._last_save: dict[str, float] = {}
        self._closed = False
        self._installs: set[asyncio.Task[None]] = set()
        #: How each namespace's embeddings were loaded: ("saved" or "rebuilt", vectors added from the log).
        self.sources: dict[str, tuple[str, int]] = {}

    def begin(self) -> None:
        """On the writer's thread: list the units to load (they become pending)."""
        self.store.dedup.files = self.files
        self.units = self.store.dedup.begin_loading(self.store.dedup_entries)
        self.upto = self.store.head
        # Hashes and SimHashes first (quick), then embeddings.
        self.units.sort(key=lambda unit: unit[1] == "embedding")

    def start(self) -> None:
        """On the event loop: one event per pending unit, and the loader thread."""
        self.events = {unit: asyncio.Event() for unit in self.units}
        if self.units:
            self._loader = threading.Thread(target=self._load_all, name="tracklog-dedup-load", daemon=True)
            self._loader.start()

    def ready(self, check: Check) -> asyncio.Event | None:
        """The event to wait for before queueing this check, or None when its index is in place."""
        event = self.events.get((check.namespace, check.kind))
        return None if event is None or event.is_set() else event

    def _load_all(self) -> None:
        with self.store.dedup_snapshot() as entries:
            for unit in self.units:
                if self._stop.is_set():
                    return
                started = time.perf_counter()
                built: dd.Built = None
                try:
                    built = self._read(entries, unit)
                except InterruptedError:
                    return
                except Exception:
                    log.exception(
                        "loading a dedup index failed; the writer reads it", namespace=unit[0], kind=unit[1]
                    )
                log.info(
                    "dedup index loaded",
                    namespace=unit[0],
                    kind=unit[1],
                    seconds=round(time.perf_counter() - started, 3),
                )
                try:
                    self.loop.call_soon_threadsafe(self._install_later, unit, built)
                except RuntimeError:  # the loop is closed: the daemon is gone
                    return

    def _read(self, entries: DedupEntries, unit: dd.Unit) -> dd.Built:
        namespace, kind = unit
        if kind != "embedding":
            return self.store.dedup.read_unit(entries, unit, upto=self.upto)
        built, how, added = load_embeddings(entries, self.files, namespace, self.upto, self._stop)
        self.sources[namespace] = (how, added)
        log.info(
            "embedding index",
            namespace=namespace,
            source=how,
            added_from_log=added,
            vectors=sum(len(e) for e in built.values()),
        )
        if self.files is not None and (how != "saved" or added):
            # Not shared yet, so no writer waits on these locks: save now, so the next start is quick.
            spaces = [
                (space, emb, len(emb.entries), emb.entries[:], sorted(emb.deleted))
                for space, emb in sorted(built.items())
            ]
            for _, emb, _, _, _ in spaces:
                emb.lock.acquire()
            try:
                save_namespace(self.files, namespace, self.upto, spaces)
            finally:
                release(spaces)
            self._last_save[namespace] = time.monotonic()
        return built

    def _install_later(self, unit: dd.Unit, built: dd.Built) -> None:
        task = self.loop.create_task(self._install(unit, built))
        self._installs.add(task)
        task.add_done_callback(self._installs.discard)

    async def _install(self, unit: dd.Unit, built: dd.Built) -> None:
        try:
            if not self._closed:
                await self.loop.run_in_executor(
                    self.executor, self.store.dedup.install, self.store.dedup_entries, unit, built, self.upto
                )
        except Exception:
            log.exception(
                "installing a dedup index failed; the first check of it loads it", namespace=unit[0]
            )
        finally:
            event = self.events.get(unit)
            if event is not None:
                event.set()

    # -- saving ---------------------------------------------------------------------

    def after_commit(self) -> None:
        """On the writer's thread, after a group commit: start the saves that are due."""
        unsaved = self.store.dedup.unsaved
        if self.files is None or not unsaved:
            return
        now = time.monotonic()
        for namespace, count in list(unsaved.items()):
            if count <= 0 or namespace in self._saving:
                continue
            last = self._last_save.setdefault(namespace, now)
            if count >= SAVE_EVERY_VECTORS or now - last >= SAVE_EVERY_SECONDS:
                spaces = snapshot(self.store.dedup, namespace)
                unsaved[namespace] = 0
                self._saving.add(namespace)
                self.saves[namespace] = self._saver.submit(self._save, namespace, self.store.head, spaces)

    def _save(self, namespace: str, seq: int, spaces: list[SpaceSnapshot]) -> None:
        started = time.perf_counter()
        try:
            assert self.files is not None
            save_namespace(self.files, namespace, seq, spaces)
            log.info(
                "embedding index saved",
                namespace=namespace,
                seq=seq,
                seconds=round(time.perf_counter() - started, 3),
            )
        except Exception:
            log.exception("saving an embedding index failed", namespace=namespace)
        finally:
            release(spaces)
            self._last_save[namespace] = time.monotonic()
            self._saving.discard(namespace)

    def close(self) -> None:
        """On the writer's thread, after the last commit: stop loading, finish saves, and save
        every namespace with unsaved vectors. (The copy of a cleared namespace stays until the
        next start finds it does not match the log and drops it.)"""
        self._closed = True
        self._stop.set()
        if self._loader is not None:
            self._loader.join()
        self._saver.shutdown(wait=True)
        if self.files is None:
            return
        dedup = self.store.dedup
        for namespace, count in list(dedup.unsaved.items()):
            if count > 0 and (namespace, "embedding") not in dedup.pending:
                spaces = snapshot(dedup, namespace)
                try:
                    save_namespace(self.files, namespace, self.store.head, spaces)
                except Exception:
                    log.exception("saving an embedding index failed", namespace=namespace)
                finally:
                    release(spaces)
                dedup.unsaved[namespace] = 0
