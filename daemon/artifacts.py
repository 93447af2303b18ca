"""The content-addressed artifact store: files on disk beside the database, named by SHA-256.

An upload streams into a temporary file in the store's own `tmp/` (same file system),
hashed and counted as it comes, with a size limit; only a complete upload is fsynced and
renamed to `blobs/ab/abcdef...` (then the folder is fsynced), so a blob is either whole or
absent, and a broken or refused upload leaves nothing behind. Storing bytes that are
already there keeps the existing blob (idempotent by digest). The `artifact` event that
records an upload names the blob as `blob: "sha256:<hex>"` (its `digest` too) with its `size`; `verify`
and `tracklog backup` check every blob the tables name, reporting one missing or corrupt.

Blob reads and writes are plain blocking file I/O: callers on the event loop run them in a
thread (`asyncio.to_thread`), one chunk at a time for streams.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

from tracklog.protocol import errors

#: The largest artifact taken by default (bytes): set by the daemon's settings.
DEFAULT_MAX_BYTES: Final = 5 * 1024**3
#: Bytes read or written at a time when streaming.
CHUNK_BYTES: Final = 1024 * 1024
DIGEST_PREFIX: Final = "sha256:"
_HEX: Final = re.compile(r"^[0-9a-f]{64}$")


class ArtifactError(errors.TracklogError):
    """An upload refused (too large, not the digest it claimed) or a blob that cannot be read."""


class ArtifactTooLarge(ArtifactError):
    pass


class DigestMismatch(ArtifactError):
    pass


class BlobNotFound(ArtifactError):
    pass


@dataclass(frozen=True)
class Blob:
    """A stored blob: its digest (`sha256:<hex>`) and size in bytes."""

    digest: str
    size: int

    @property
    def hex(self) -> str:
        return self.digest.removeprefix(DIGEST_PREFIX)


def artifacts_dir_for(db: str | os.PathLike[str]) -> Path:
    """The artifact store of a database: `<db>.artifacts/` beside it."""
    return Path(os.fspath(db) + ".artifacts")


def parse_digest(digest: str) -> str:
    """The hex of a `sha256:<hex>` digest (or of bare hex); ArtifactError when malformed."""
    hex_ = digest.removeprefix(DIGEST_PREFIX).lower()
    if not _HEX.match(hex_):
        raise ArtifactError(f"not a sha256 digest: {digest[:80]!r}")
    return hex_


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Upload:
    """One upload in progress: `write` chunks, then `commit` (or `abort`; leaving a `with`
    block by an exception aborts). Counting and hashing happen as the bytes come."""

    def __init__(self, store: ArtifactStore, max_bytes: int, expected: str | None) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.expected = None if expected is None else parse_digest(expected)
        self.size = 0
        self._hash = hashlib.sha256()
        self.temp = store.tmp / f"{uuid.uuid4().hex}.part"
        self._file: BinaryIO | None = open(self.temp, "xb")  # noqa: SIM115 (closed by commit or abort)

    def write(self, chunk: bytes) -> None:
        if self._file is None:
            raise ArtifactError("the upload is closed")
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.abort()
            raise ArtifactTooLarge(f"artifact larger than the limit of {self.max_bytes} bytes")
        self._hash.update(chunk)
        self._file.write(chunk)

    def commit(self) -> Blob:
        """Make the upload a blob: fsync, rename into place (or drop it when the blob is
        already there), fsync the folder. Raises DigestMismatch when it is not the digest
        the uploader named (and keeps nothing)."""
        if self._file is None:
            raise ArtifactError("the upload is closed")
        hex_ = self._hash.hexdigest()
        if self.expected is not None and hex_ != self.expected:
            self.abort()
            raise DigestMismatch(f"the bytes have digest sha256:{hex_}, not sha256:{self.expected}")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        final = self.store.blob_path(hex_)
        if final.exists():
            self.temp.unlink(missing_ok=True)
        else:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.temp, final)
            _fsync_dir(final.parent)
        return Blob(DIGEST_PREFIX + hex_, self.size)

    def abort(self) -> None:
        """Drop what was written; nothing of the upload stays."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.temp.unlink(missing_ok=True)

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is not None or self._file is not None:
            self.abort()


class ArtifactStore:
    """The blobs under `root`: `blobs/` (by digest, in 256 folders) and `tmp/` (uploads)."""

    def __init__(self, root: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"

    def open_upload(self, expected_digest: str | None = None) -> Upload:
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        return Upload(self, self.max_bytes, expected_digest)

    def clear_tmp(self) -> int:
        """Remove uploads a crash left half-written (at start, before any upload); how many."""
        if not self.tmp.is_dir():
            return 0
        removed = 0
        for part in self.tmp.iterdir():
            part.unlink(missing_ok=True)
            removed += 1
        return removed

    def put(self, chunks: Iterable[bytes], expected_digest: str | None = None) -> Blob:
        """Store a stream of bytes (blocking); the blob, or an ArtifactError with nothing kept."""
        with self.open_upload(expected_digest) as upload:
            for chunk in chunks:
                upload.write(chunk)
            return upload.commit()

    async def put_stream(self, chunks: AsyncIterable[bytes], expected_digest: str | None = None) -> Blob:
        """Store an async stream (a request body): each chunk written in a thread, so the
        event loop never waits on the disk. A stream that breaks leaves nothing."""
        import asyncio

        upload = await asyncio.to_thread(self.open_upload, expected_digest)
        with upload:
            async for chunk in chunks:
                await asyncio.to_thread(upload.write, chunk)
            return await asyncio.to_thread(upload.commit)

    def blob_path(self, digest: str) -> Path:
        hex_ = parse_digest(digest)
        return self.blobs / hex_[:2] / hex_

    def exists(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {digest}") from None

    def read(self, digest: str, start: int = 0, chunk: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The blob's bytes from `start`, a chunk at a time (a download streams this)."""
        try:
            handle = open(self.blob_path(digest), "rb")  # noqa: SIM115 (closed by the generator)
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {digest}") from None
        return _chunks(handle, start, chunk)

    def check(self, digest: str, size: int | None = None) -> str | None:
        """Why the blob is not what its digest (and size) say, or None when it is."""
        try:
            hex_ = parse_digest(digest)
        except ArtifactError as exc:
            return str(exc)
        path = self.blobs / hex_[:2] / hex_
        try:
            actual_size = path.stat().st_size
        except FileNotFoundError:
            return "missing"
        if size is not None and actual_size != size:
            return f"corrupt: {actual_size} bytes, the event says {size}"
        digest_now = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(CHUNK_BYTES):
                digest_now.update(block)
        if digest_now.hexdigest() != hex_:
            return f"corrupt: its bytes hash to sha256:{digest_now.hexdigest()}"
        return None


def _chunks(handle: BinaryIO, start: int, chunk: int) -> Iterator[bytes]:
    with handle:
        handle.seek(start)
        while block := handle.read(chunk):
            yield block


def artifact_event(
    run: str, kind: str, path: str, blob: Blob, metadata: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The `artifact` event recording an upload: the blob's digest and size with its path."""
    data: dict[str, Any] = {
        "kind": kind,
        "path": path,
        "size": blob.size,
        "digest": blob.digest,
        "blob": blob.digest,
    }
    if metadata:
        data["metadata"] = metadata
    return {"type": "artifact", "run": run, "data": data}


def check_blobs(store: ArtifactStore, artifacts: Iterable[dict[str, Any]], out: Any) -> int:
    """Check every blob the rows name (`blob`, as `ReadModel.stored_blobs` gives them); print
    one line per missing or corrupt blob to `out`; returns how many."""
    problems = 0
    seen: set[str] = set()
    for row in artifacts:
        digest = row.get("blob")
        if not isinstance(digest, str) or digest in seen:
            continue
        seen.add(digest)
        why = store.check(digest, row.get("size"))
        if why is not None:
            problems += 1
            print(f"artifact {digest} ({row.get('run')}: {row.get('path')}): {why}", file=out)
    return problems


def copy_blobs(source: ArtifactStore, dest_root: Path, artifacts: Iterable[dict[str, Any]], out: Any) -> int:
    """Copy the blobs the rows name (`blob`) into a new store at `dest_root`, each checked
    against its digest as it is copied; print each missing or corrupt one; returns how many.

    The copy is made in `dest_root` + `.tmp` and renamed in last, so a failed copy leaves
    nothing at `dest_root`.
    """
    staging = Path(os.fspath(dest_root) + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)
    target = ArtifactStore(staging, max_bytes=2**63 - 1)
    problems = 0
    seen: set[str] = set()
    try:
        for row in artifacts:
            digest = row.get("blob")
            if not isinstance(digest, str) or digest in seen:
                continue
            seen.add(digest)
            try:
                target.put(source.read(digest), expected_digest=digest)
            except BlobNotFound:
                problems += 1
                print(f"artifact {digest} ({row.get('run')}: {row.get('path')}): missing", file=out)
            except DigestMismatch as exc:
                problems += 1
                print(f"artifact {digest} ({row.get('run')}: {row.get('path')}): corrupt: {exc}", file=out)
        with contextlib.suppress(FileNotFoundError):
            target.tmp.rmdir()
        os.replace(staging, dest_root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return problems
