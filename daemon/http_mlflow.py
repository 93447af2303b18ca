"""MLflow's APIs mounted on the daemon's HTTP layer: the tracking API and the proxied artifacts.

The handlers (daemon/mlflow/) take no HTTP objects; these routes parse the request, call
them and send the answer, as docs/mlflow.md ("Mounting on the HTTP layer") describes:

- `/api/2.0/mlflow/...` and `/ajax-api/2.0/mlflow/...`: the JSON body (at most
  MAX_MLFLOW_BODY bytes; MLflow caps a log-batch at 1 MB) or the query string to `handle`.
- `/api/2.0/mlflow-artifacts/artifacts/...`: a PUT streams its body into the artifact store
  (at most the store's `max_bytes`), a GET streams the blob back as a download with its
  Content-Length.

The Host/Origin and token checks run before any route, as for every path; which scope each
request needs is `auth.http_scope`'s. Errors keep MLflow's shape (`error_code`, `message`)
so MLflow's client reads them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec
import structlog
from websockets.datastructures import Headers
from websockets.http11 import Response

from tracklog.protocol import errors

from .http import Params, Route, json_response
from .http_connection import Answer, HttpRequest, StreamedResponse
from .mlflow import Download, MlflowContext, handle, handle_artifacts
from .mlflow.errors import INVALID_PARAMETER_VALUE

log = structlog.get_logger("tracklog.http")

#: The largest JSON body of an MLflow call (MLflow's own client caps a log-batch at 1 MB).
MAX_MLFLOW_BODY: Final = 8 * 1024 * 1024
#: The methods MLflow's client and UI use on the tracking API (`handle` answers a method an
#: endpoint does not take with MLflow's 405).
MLFLOW_METHODS: Final = ("GET", "POST", "PATCH", "DELETE", "PUT")
TRACKING_PATTERN: Final = re.compile(r"/(?:ajax-)?api/2\.0/mlflow/.*")
ARTIFACTS_PATTERN: Final = re.compile(r"/(?:ajax-)?api/2\.0/mlflow-artifacts/artifacts(?:/.*)?")


#: MLflow's error code for each refusal the daemon makes before any route (auth, Host/Origin,
#: rate limits): the codes of MLflow's own auth (`mlflow/server/auth`) and rate limits.
REFUSAL_CODES: Final = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 429: "REQUEST_LIMIT_EXCEEDED"}


def is_mlflow_path(path: str) -> bool:
    return TRACKING_PATTERN.fullmatch(path) is not None or ARTIFACTS_PATTERN.fullmatch(path) is not None


def mlflow_refusal(response: Response) -> Response:
    """A refusal of the daemon's checks (`{"error", "message"}`) in MLflow's shape, so MLflow's
    client shows its code and message; its status and headers are kept."""
    try:
        message = msgspec.json.decode(bytes(response.body)).get("message", "")
    except (msgspec.DecodeError, AttributeError):
        message = ""
    code = REFUSAL_CODES.get(response.status_code, "INTERNAL_ERROR")
    payload = msgspec.json.encode({"error_code": code, "message": message})
    headers = Headers([(k, v) for k, v in response.headers.raw_items() if k.lower() != "content-length"])
    headers["Content-Length"] = str(len(payload))
    return Response(response.status_code, response.reason_phrase, headers, payload)


def _mlflow_error(status: HTTPStatus, code: str, message: str) -> Answer:
    return json_response(status, {"error_code": code, "message": message})


def _body_error(exc: errors.ProtocolError) -> Answer:
    """A request body the HTTP layer refused (too large, not JSON, cut short), in MLflow's shape."""
    if exc.code == errors.TOO_LARGE:
        return _mlflow_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "RESOURCE_EXHAUSTED", exc.message)
    return _mlflow_error(HTTPStatus.BAD_REQUEST, INVALID_PARAMETER_VALUE, exc.message)


class MlflowRoutes:
    """The routes of MLflow's APIs over one MlflowContext; `streams` is the daemon's set of
    downloads being sent (stopped at shutdown)."""

    def __init__(self, context: MlflowContext, streams: set[StreamedResponse]) -> None:
        self.context = context
        self.streams = streams

    def routes(self) -> list[Route]:
        tracking = dict.fromkeys(MLFLOW_METHODS, self._tracking)
        artifacts = dict.fromkeys(("GET", "PUT", "DELETE"), self._artifacts)
        return [Route(TRACKING_PATTERN, tracking), Route(ARTIFACTS_PATTERN, artifacts)]

    async def _tracking(self, _args: dict[str, str], params: Params, request: HttpRequest) -> Answer:
        path = urlsplit(request.path).path
        body: Any = None
        if request.method not in ("GET", "HEAD") and (request.body.length is None or request.body.length):
            try:
                payload = await request.body.read(MAX_MLFLOW_BODY)
            except errors.ProtocolError as exc:
                return _body_error(exc)
            if payload.strip():
                try:
                    body = msgspec.json.decode(payload)
                except msgspec.DecodeError as exc:
                    return _mlflow_error(
                        HTTPStatus.BAD_REQUEST,
                        INVALID_PARAMETER_VALUE,
                        f"The request body is not JSON: {exc}",
                    )
        status, answer = await handle(request.method, path, params.values, body, self.context)
        return json_response(HTTPStatus(status), answer)

    async def _artifacts(self, _args: dict[str, str], _params: Params, request: HttpRequest) -> Answer:
        parts = urlsplit(request.path)
        # MLflow's client quotes each artifact path in the URL; its server reads it decoded.
        path = unquote(parts.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        store = self.context.artifacts
        chunks = None
        if request.method == "PUT" and store is not None:
            chunks = request.body.chunks(store.max_bytes)
        try:
            status, answer = await handle_artifacts(request.method, path, query, chunks, self.context)
        except errors.ProtocolError as exc:  # the body: over the limit, or cut short
            return _body_error(exc)
        if isinstance(answer, Download):
            return _download(answer, self.streams)
        return json_response(HTTPStatus(status), answer)


def _download(answer: Download, streams: set[StreamedResponse]) -> StreamedResponse:
    """A blob sent as a stream with its length (read on a thread, a chunk at a time)."""

    def produce() -> Iterator[bytes]:
        yield from answer.chunks

    headers = [("Content-Type", answer.content_type), ("Cache-Control", "no-store")]
    return StreamedResponse(headers, produce, streams, length=answer.size)
