"""MLflow's proxied artifact API on the artifact store, called directly (no HTTP): uploads
stream into blobs and become artifact events, downloads stream out, listings, and a broken
or refused upload leaves neither a blob nor an event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tracklog.daemon.artifacts import ArtifactStore
from tracklog.daemon.mlflow import Download, MlflowContext, handle_artifacts
from tracklog.daemon.server import Daemon
from tracklog.protocol.messages import Query

from .conftest import WAIT, Api

PREFIX = "/api/2.0/mlflow-artifacts/artifacts/"


@pytest.fixture
def store(daemon: Daemon, tmp_path: Any) -> ArtifactStore:
    return ArtifactStore(tmp_path / "blobs", max_bytes=1000)


@pytest.fixture
def context(api: Api, store: ArtifactStore) -> MlflowContext:
    api.context.artifacts = store
    return api.context


async def body(*parts: bytes, fail: bool = False) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
    if fail:
        raise ConnectionResetError("the client went away")


async def call(
    context: MlflowContext, method: str, where: str, data: AsyncIterator[bytes] | None = None, **query: str
) -> tuple[int, Any]:
    return await asyncio.wait_for(
        handle_artifacts(method, PREFIX + where, {k: [v] for k, v in query.items()}, data, context), WAIT
    )


async def artifacts_of(daemon: Daemon, run: str) -> list[dict[str, Any]]:
    return list((await daemon.readers.query(Query(q="artifacts", run=run))).rows)


async def test_an_upload_becomes_a_blob_and_an_event_and_downloads_back(
    api: Api, context: MlflowContext, daemon: Daemon
) -> None:
    run = (await api.post("runs/create", experiment_id="0"))["run"]["info"]["run_id"]
    status, answer = await call(context, "PUT", f"0/{run}/artifacts/a/b.txt", body(b"hello ", b"world"))
    assert (status, answer) == (200, {})
    (row,) = await artifacts_of(daemon, run)
    assert row["path"] == "a/b.txt" and row["size"] == 11 and row["blob"].startswith("sha256:")
    status, download = await call(context, "GET", f"0/{run}/artifacts/a/b.txt")
    assert status == 200 and isinstance(download, Download) and download.size == 11
    assert b"".join(download.chunks) == b"hello world"
    status, listed = await call(context, "GET", "", path=f"0/{run}/artifacts")
    assert listed == {"files": [{"path": "a", "is_dir": True}]}
    status, listed = await call(context, "GET", "", path=f"0/{run}/artifacts/a")
    assert listed == {"files": [{"path": "b.txt", "is_dir": False, "file_size": 11}]}
    assert (await call(context, "GET", "", path=f"0/{run}/artifacts/a/b.txt"))[1] == {}


async def test_a_broken_upload_leaves_no_blob_and_no_event(
    api: Api, context: MlflowContext, daemon: Daemon, store: ArtifactStore
) -> None:
    run = (await api.post("runs/create", experiment_id="0"))["run"]["info"]["run_id"]
    with pytest.raises(ConnectionResetError):
        await call(context, "PUT", f"0/{run}/artifacts/x.bin", body(b"partial", fail=True))
    assert await artifacts_of(daemon, run) == []
    assert list(store.tmp.iterdir()) == [] and list(store.blobs.rglob("*")) == []


async def test_an_upload_over_the_limit_is_413_and_leaves_nothing(
    api: Api, context: MlflowContext, daemon: Daemon, store: ArtifactStore
) -> None:
    run = (await api.post("runs/create", experiment_id="0"))["run"]["info"]["run_id"]
    status, answer = await call(context, "PUT", f"0/{run}/artifacts/big.bin", body(b"x" * 600, b"y" * 600))
    assert status == 413 and answer["error_code"] == "RESOURCE_EXHAUSTED"
    assert await artifacts_of(daemon, run) == [] and list(store.tmp.iterdir()) == []


async def test_paths_that_climb_out_or_name_no_run_are_refused(api: Api, context: MlflowContext) -> None:
    run = (await api.post("runs/create", experiment_id="0"))["run"]["info"]["run_id"]
    for bad in (f"0/{run}/artifacts/../../x", f"0/{run}/artifacts//x", f"0/{run}/artifacts/a\\b"):
        status, answer = await call(context, "PUT", bad, body(b"x"))
        assert status == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE", bad
    status, answer = await call(context, "PUT", "0/" + "f" * 32 + "/artifacts/x", body(b"x"))
    assert (status, answer["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")
    status, answer = await call(context, "GET", f"0/{run}/artifacts/never.txt")
    assert (status, answer["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")
