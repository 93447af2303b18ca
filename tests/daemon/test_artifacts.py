"""The content-addressed artifact store: uploads streamed in, named by SHA-256, idempotent,
bounded; a broken upload leaves nothing; reads stream out; verify and backup check blobs."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest

from tracklog.daemon import commands
from tracklog.daemon.artifacts import (
    ArtifactStore,
    ArtifactTooLarge,
    BlobNotFound,
    DigestMismatch,
    artifact_event,
    artifacts_dir_for,
)
from tracklog.daemon.storage import SqliteBackend
from tracklog.daemon.storage.eventlog import AppendResult
from tracklog.daemon.writer import Writer

WAIT = 30.0


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def leftovers(store: ArtifactStore) -> list[Path]:
    return [p for p in store.tmp.iterdir()] if store.tmp.exists() else []


def test_a_blob_is_named_by_its_sha256_and_reads_back_in_chunks(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "a")
    data = os.urandom(300_000)
    blob = store.put([data[:100_000], data[100_000:]])
    assert blob.digest == sha(data) and blob.size == len(data)
    assert store.blob_path(blob.digest) == tmp_path / "a" / "blobs" / blob.hex[:2] / blob.hex
    assert b"".join(store.read(blob.digest, chunk=65536)) == data
    assert b"".join(store.read(blob.digest, start=299_990)) == data[299_990:]
    assert store.check(blob.digest, blob.size) is None and leftovers(store) == []


def test_storing_the_same_bytes_again_keeps_one_blob(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "a")
    first = store.put([b"same"])
    mtime = store.blob_path(first.digest).stat().st_mtime_ns
    again = store.put([b"sa", b"me"], expected_digest=first.digest)
    assert again == first and store.blob_path(first.digest).stat().st_mtime_ns == mtime
    assert len(list(store.blobs.rglob("*"))) == 2  # one folder, one file
    assert leftovers(store) == []


def test_an_upload_over_the_limit_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "a", max_bytes=10)
    with pytest.raises(ArtifactTooLarge):
        store.put([b"123456", b"7890", b"!"])
    assert leftovers(store) == [] and list(store.blobs.rglob("*")) == []
    assert store.put([b"1234567890"]).size == 10  # exactly the limit is taken


def test_bytes_that_are_not_the_digest_named_are_refused_and_leave_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "a")
    with pytest.raises(DigestMismatch):
        store.put([b"abc"], expected_digest=sha(b"abd"))
    assert leftovers(store) == [] and not store.exists(sha(b"abc"))


def test_a_stream_that_breaks_midway_leaves_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "a")

    def broken() -> Iterator[bytes]:
        yield b"part one"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        store.put(broken())
    assert leftovers(store) == [] and list(store.blobs.rglob("*")) == []


async def test_an_async_stream_is_written_off_the_event_loop_and_a_broken_one_leaves_nothing(
    tmp_path: Path,
) -> None:
    store = ArtifactStore(tmp_path / "a")

    async def body(parts: list[bytes], fail: bool = False) -> AsyncIterator[bytes]:
        for part in parts:
            yield part
        if fail:
            raise asyncio.IncompleteReadError(b"", 10)

    blob = await store.put_stream(body([b"a" * 1000, b"b" * 1000]))
    assert blob.digest == sha(b"a" * 1000 + b"b" * 1000)
    with pytest.raises(asyncio.IncompleteReadError):
        await store.put_stream(body([b"c" * 10], fail=True))
    assert leftovers(store) == [] and not store.exists(sha(b"c" * 10))


def test_a_missing_blob_is_blob_not_found_and_a_changed_one_is_corrupt(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "a")
    with pytest.raises(BlobNotFound):
        store.read(sha(b"never"))
    assert store.check(sha(b"never")) == "missing"
    blob = store.put([b"original"])
    store.blob_path(blob.digest).write_bytes(b"origina!")
    assert (store.check(blob.digest, blob.size) or "").startswith("corrupt: its bytes hash to")
    store.blob_path(blob.digest).write_bytes(b"short")
    assert (store.check(blob.digest, blob.size) or "").startswith("corrupt: 5 bytes")


def test_clear_tmp_removes_what_a_crash_left_half_written(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "a")
    store.tmp.mkdir(parents=True)
    # What a process killed during an upload leaves: a part file, never renamed in.
    (store.tmp / "0123.part").write_bytes(b"half")
    assert store.clear_tmp() == 1 and leftovers(store) == [] and not store.blobs.exists()


# -- recorded by events; verify and backup -------------------------------------------------------


@pytest.fixture
async def stored(tmp_path: Path) -> AsyncIterator[tuple[Path, ArtifactStore, list[str]]]:
    """A database whose run has two uploaded artifacts (recorded through the writer) and
    one plain path, with its artifact store."""
    db = tmp_path / "d.db"
    backend = SqliteBackend(db)
    assert backend.artifacts_dir == artifacts_dir_for(db)
    store = ArtifactStore(artifacts_dir_for(db))
    blobs = [store.put([b"model weights"]), store.put([b"a plot"])]
    writer = Writer(backend)
    await writer.start()
    try:
        events = [
            artifact_event("r", "checkpoint", "ckpt/model.pt", blobs[0]),
            artifact_event("r", "plot", "plots/a.png", blobs[1], {"title": "a"}),
            {
                "type": "artifact",
                "run": "r",
                "data": {"kind": "log", "path": "/var/log/x", "digest": "sha256:00"},
            },
        ]
        frame = msgspec.json.encode({"op": "append", "events": events}).decode()
        result = await asyncio.wait_for(await writer.submit_frame(frame), WAIT)
        assert isinstance(result, AppendResult) and result.ack.accepted == 3, result
    finally:
        await writer.stop()
    yield db, store, [b.digest for b in blobs]


def test_the_artifact_event_records_the_blob_and_the_run_query_shows_it(
    stored: tuple[Path, ArtifactStore, list[str]],
) -> None:
    from tracklog.daemon.queries import answer
    from tracklog.daemon.storage.readmodel import open_read_model
    from tracklog.protocol.messages import Query

    db, _, digests = stored
    model = open_read_model(str(db))
    try:
        artifacts = answer(model, Query(q="run", run="r")).rows[0]["artifacts"]
        with model.snapshot():
            assert [row["blob"] for row in model.stored_blobs()] == digests
    finally:
        model.close()
    assert [a.get("blob") for a in artifacts] == [*digests, None]
    assert artifacts[0]["digest"] == digests[0] and artifacts[0]["size"] == len(b"model weights")


def test_verify_passes_with_every_blob_and_reports_a_missing_or_corrupt_one(
    stored: tuple[Path, ArtifactStore, list[str]],
) -> None:
    db, store, digests = stored
    out = io.StringIO()
    assert commands.verify(db, out) == 0, out.getvalue()
    store.blob_path(digests[0]).unlink()
    store.blob_path(digests[1]).write_bytes(b"tampered")
    out = io.StringIO()
    assert commands.verify(db, out) == 1
    lines = out.getvalue().splitlines()
    assert f"artifact {digests[0]} (r: ckpt/model.pt): missing" in lines
    assert any(line.startswith(f"artifact {digests[1]} (r: plots/a.png): corrupt") for line in lines)


def test_backup_copies_the_blobs_and_reports_a_missing_one(
    stored: tuple[Path, ArtifactStore, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, store, digests = stored
    dest = tmp_path / "backup.db"
    assert commands.backup(db, dest) == 0
    copied = ArtifactStore(artifacts_dir_for(dest))
    assert all(copied.check(d) is None for d in digests)
    assert commands.verify(dest, io.StringIO()) == 0  # the copy verifies, blobs included
    assert "2 artifact blobs" in capsys.readouterr().out

    store.blob_path(digests[1]).unlink()
    again = tmp_path / "again.db"
    assert commands.backup(db, again) == 1
    err = capsys.readouterr().err
    assert f"artifact {digests[1]} (r: plots/a.png): missing" in err
    assert ArtifactStore(artifacts_dir_for(again)).check(digests[0]) is None
    assert not Path(os.fspath(artifacts_dir_for(again)) + ".tmp").exists()
