"""An in-process daemon and an MLflow API caller that goes straight to the handlers (no HTTP)."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tracklog.daemon.mlflow import MlflowContext, handle
from tracklog.daemon.server import Daemon, Settings

WAIT = 30.0


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon(Settings(db=tmp_path / "m.db", port=0, host="127.0.0.1"))
    await d.start()
    try:
        yield d
    finally:
        await asyncio.wait_for(d.stop(), WAIT)


class Api:
    """Calls the MLflow handlers as the HTTP layer will: a GET's fields in the query string,
    a POST's in a JSON body."""

    def __init__(self, context: MlflowContext, prefix: str = "/api/2.0/mlflow/") -> None:
        self.context = context
        self.prefix = prefix

    async def call(self, method: str, endpoint: str, **fields: Any) -> tuple[int, dict[str, Any]]:
        path = self.prefix + endpoint
        if method == "GET":
            encoded = urllib.parse.urlencode(fields, doseq=True)
            query = urllib.parse.parse_qs(encoded, keep_blank_values=True)
            return await asyncio.wait_for(handle("GET", path, query, None, self.context), WAIT)
        return await asyncio.wait_for(handle(method, path, {}, fields, self.context), WAIT)

    async def get(self, endpoint: str, **fields: Any) -> dict[str, Any]:
        status, body = await self.call("GET", endpoint, **fields)
        assert status == 200, body
        return body

    async def post(self, endpoint: str, **fields: Any) -> dict[str, Any]:
        status, body = await self.call("POST", endpoint, **fields)
        assert status == 200, body
        return body


class SteppingClock:
    """A clock one second later at each reading: what the handlers time (experiment events,
    runs created without a start time) is in order and distinct, whatever the machine does."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def api(daemon: Daemon) -> Api:
    return Api(MlflowContext(daemon.writer, daemon.readers, clock=SteppingClock()))
