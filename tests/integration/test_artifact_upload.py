"""`run.log_artifact(kind, path, upload=True)` and `tl.download_artifact`: a file's bytes to the
daemon's artifact store and back, and the blob routes under them, against a real daemon."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
from pathlib import Path
from typing import Any

import pytest

import tracklog
from tests.conftest import DaemonProcess
from tracklog.blobs import ArtifactTransferError
from tracklog.protocol import errors


def blob_files(db: Path | str) -> list[Path]:
    return [p for p in (Path(str(db) + ".artifacts") / "blobs").rglob("*") if p.is_file()]


def put(daemon: DaemonProcess, digest: str, body: bytes, token: str | None = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    headers = {"Content-Length": str(len(body))}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request("PUT", f"/api/blobs/{digest}", body=body, headers=headers)
        reply = connection.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        connection.close()


def test_upload_records_the_blob_and_download_gives_the_bytes_back(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    source = tmp_path / "weights.bin"
    payload = os.urandom(3 * 1024 * 1024 + 17)  # more than one block each way
    source.write_bytes(payload)
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    with tracklog.connect(daemon.url, spool_dir=tmp_path / "spool") as tl:
        with tl.start_run(name="up") as run:
            run.log_artifact("checkpoint", source, upload=True)
            run.log_artifact("checkpoint", source, upload=True)  # the same bytes: stored once
        assert tl.flush(30)
        rows = [r for r in tl.artifacts(run.id) if r["kind"] == "checkpoint"]
        assert [(r["blob"], r["digest"], r["size"]) for r in rows] == [(digest, digest, len(payload))] * 2
        assert len(blob_files(daemon.db)) == 1
        out = tl.download_artifact(run.id, str(source), tmp_path / "out")
        assert out == tmp_path / "out" and out.read_bytes() == payload
        (tmp_path / "dir").mkdir()
        assert tl.download_artifact(run, str(source), tmp_path / "dir").read_bytes() == payload
        with pytest.raises(errors.NotFound):
            tl.download_artifact(run.id, "never-uploaded.bin", tmp_path / "x")
        assert not (tmp_path / "x").exists()
    # The console's link: the run's artifact by its path.
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    connection.request("GET", f"/api/runs/{run.id}/artifacts/{str(source).lstrip('/')}")
    reply = connection.getresponse()
    assert reply.status == 404  # paths are matched as logged: this one starts with '/'
    reply.read()
    connection.close()


def test_the_blob_route_checks_the_digest_and_keeps_nothing_on_a_mismatch(daemon: DaemonProcess) -> None:
    body = b"hello artifacts"
    good = "sha256:" + hashlib.sha256(body).hexdigest()
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    status, answer = put(daemon, wrong, body)
    assert status == 400 and answer["error"] == "digest_mismatch"
    assert blob_files(daemon.db) == []
    status, answer = put(daemon, "sha256:nothex", body)
    assert status == 400
    assert put(daemon, good, body) == (201, {"blob": good, "size": len(body), "stored": True})
    assert put(daemon, good, body) == (200, {"blob": good, "size": len(body), "stored": False})
    assert len(blob_files(daemon.db)) == 1
    assert not list((Path(str(daemon.db) + ".artifacts") / "tmp").iterdir())


def test_a_run_artifact_downloads_from_its_link(
    daemon: DaemonProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "plots").mkdir()
    source = tmp_path / "plots" / "loss curve.png"
    source.write_bytes(b"\x89PNG fake")
    monkeypatch.chdir(tmp_path)
    with tracklog.connect(daemon.url, spool_dir=tmp_path / "spool") as tl:
        with tl.start_run(name="linked") as run:
            run.log_artifact("plot", "plots/loss curve.png", upload=True)
        assert tl.flush(30)
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    connection.request("GET", f"/api/runs/{run.id}/artifacts/plots/loss%20curve.png")
    reply = connection.getresponse()
    assert reply.status == 200 and reply.read() == b"\x89PNG fake"
    assert reply.getheader("Content-Length") == "9"
    assert "loss%20curve.png" in (reply.getheader("Content-Disposition") or "")
    connection.close()


def test_uploads_need_the_append_scope(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("reader read\nboth read,append\n")
    daemon = DaemonProcess(tmp_path / "s.db", "--tokens", str(tokens)).start()
    try:
        body = b"scoped"
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        assert put(daemon, digest, body)[0] == 401
        assert put(daemon, digest, body, "reader")[0] == 403
        assert put(daemon, digest, body, "both")[0] == 201
        source = tmp_path / "f.txt"
        source.write_bytes(body)
        with tracklog.connect(daemon.url, token="reader", spool_dir=tmp_path / "spool") as tl:
            run = tl.start_run(name="r")
            with pytest.raises(ArtifactTransferError, match="403"):
                run.log_artifact("file", source, upload=True)
    finally:
        daemon.stop()
