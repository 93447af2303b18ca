"""tracklog's own artifact upload and download routes on the artifact store (daemon/artifacts.py).

- `PUT /api/blobs/sha256:<hex>`: the body streamed into the store (at most the store's
  `max_bytes`), checked against the digest in the path: other bytes are 400
  `digest_mismatch` and nothing is kept. Idempotent: bytes already stored are 200 at once
  (their body is not read). The client then records the `artifact` event naming the blob
  through its usual append (`run.log_artifact(kind, path, upload=True)`).
- `GET /api/blobs/sha256:<hex>`: the blob streamed back with its Content-Length.
- `GET /api/runs/RUN/artifacts/PATH`: the blob of the run's latest stored artifact at PATH,
  as a download (the console's links).

Without an artifact store (a PostgreSQL database and no `--artifacts-dir`) each is 503
`no_artifact_store`, naming the option.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from http import HTTPStatus
from typing import Final
from urllib.parse import quote

from tracklog.protocol import errors
from tracklog.protocol.messages import Query

from .artifacts import ArtifactError, ArtifactStore, ArtifactTooLarge, DigestMismatch, parse_digest
from .http import Params, Route, json_response
from .http_connection import Answer, HttpRequest, StreamedResponse

BLOB_PATTERN: Final = re.compile(r"/api/blobs/(?P<digest>[^/]+)")
RUN_ARTIFACT_PATTERN: Final = re.compile(r"/api/runs/(?P<run>[^/]+)/artifacts/(?P<path>.+)")
NO_STORE: Final = (
    "this daemon has no artifact store (its database is not a file): start it with --artifacts-dir"
    " or $TRACKLOG_ARTIFACTS_DIR"
)


class BlobRoutes:
    """Upload and download of blobs; `streams` is the daemon's set of downloads being sent."""

    def __init__(self, daemon: object, store: ArtifactStore | None, streams: set[StreamedResponse]) -> None:
        self.daemon = daemon
        self.store = store
        self.streams = streams

    def routes(self) -> list[Route]:
        return [
            Route(BLOB_PATTERN, {"GET": self._get, "PUT": self._put}),
            Route(RUN_ARTIFACT_PATTERN, {"GET": self._run_artifact}),
        ]

    def _need_store(self) -> ArtifactStore:
        if self.store is None:
            raise _Unavailable()
        return self.store

    async def _put(self, args: dict[str, str], _params: Params, request: HttpRequest) -> Answer:
        try:
            store = self._need_store()
            digest = "sha256:" + parse_digest(args["digest"])
            if store.exists(digest):
                return json_response(
                    HTTPStatus.OK, {"blob": digest, "size": store.size(digest), "stored": False}
                )
            blob = await store.put_stream(request.body.chunks(store.max_bytes), expected_digest=digest)
        except _Unavailable:
            return _unavailable()
        except (ArtifactTooLarge, errors.TooLarge) as exc:
            return json_response(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "too_large", "message": str(exc)}
            )
        except DigestMismatch as exc:
            return json_response(HTTPStatus.BAD_REQUEST, {"error": "digest_mismatch", "message": str(exc)})
        except ArtifactError as exc:
            return json_response(HTTPStatus.BAD_REQUEST, {"error": "bad_request", "message": str(exc)})
        return json_response(HTTPStatus.CREATED, {"blob": blob.digest, "size": blob.size, "stored": True})

    async def _get(self, args: dict[str, str], _params: Params, _request: HttpRequest) -> Answer:
        try:
            return self._download(self._need_store(), args["digest"], None)
        except _Unavailable:
            return _unavailable()

    async def _run_artifact(self, args: dict[str, str], _params: Params, _request: HttpRequest) -> Answer:
        readers = self.daemon.readers  # type: ignore[attr-defined]
        rows = (await readers.query(Query(q="artifacts", run=args["run"]))).rows
        stored = [row for row in rows if row.get("path") == args["path"] and row.get("blob")]
        if not stored:
            raise errors.NotFound(f"no stored artifact at {args['path'][:200]} in run {args['run']}")
        try:
            return self._download(self._need_store(), stored[-1]["blob"], args["path"].rsplit("/", 1)[-1])
        except _Unavailable:
            return _unavailable()

    def _download(self, store: ArtifactStore, digest: str, filename: str | None) -> Answer:
        try:
            size = store.size(digest)
            chunks = store.read(digest)
        except ArtifactError as exc:
            raise errors.NotFound(str(exc)) from None

        def produce() -> Iterator[bytes]:
            yield from chunks

        headers = [("Content-Type", "application/octet-stream"), ("Cache-Control", "no-store")]
        if filename is not None:
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", filename)[:100] or "artifact"
            disposition = f"attachment; filename=\"{safe}\"; filename*=UTF-8''{quote(filename, safe='')}"
            headers.append(("Content-Disposition", disposition))
        return StreamedResponse(headers, produce, self.streams, length=size)


class _Unavailable(Exception):
    pass


def _unavailable() -> Answer:
    return json_response(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "no_artifact_store", "message": NO_STORE})
