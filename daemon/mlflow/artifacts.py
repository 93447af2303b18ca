"""MLflow's proxied artifact API (`/api/2.0/mlflow-artifacts/artifacts/...`) on tracklog's
content-addressed artifact store.

A run's artifact URI is `mlflow-artifacts:/<experiment>/<run>/artifacts` (docs/mlflow.md),
so MLflow's client uploads a file of the run to `.../artifacts/<experiment>/<run>/artifacts/
<path>`. The upload streams into the store (daemon/artifacts.py) and becomes an `artifact`
event of the run (`kind` "mlflow", `path` the file's path in the run, `blob` its digest);
a download streams the blob of the latest upload at that path; a listing is built from the
run's artifacts. The HTTP layer hands the request body as an async stream of chunks and
sends a `Download` as a stream, so neither side holds a whole file in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from tracklog.protocol import errors as tl_errors
from tracklog.protocol.messages import Query

from ..artifacts import ArtifactError, ArtifactTooLarge, artifact_event
from .errors import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, MlflowError
from .handlers import MlflowContext, append_events, ask

ARTIFACT_PREFIXES: Final = ("/api/2.0/mlflow-artifacts/artifacts", "/ajax-api/2.0/mlflow-artifacts/artifacts")
#: The `kind` of the artifact events MLflow uploads become.
MLFLOW_KIND: Final = "mlflow"


@dataclass
class Download:
    """A file to send: its size and its bytes, a chunk at a time (blocking reads: the HTTP
    layer pulls them in a thread)."""

    size: int
    chunks: Iterator[bytes]
    content_type: str = "application/octet-stream"


def matches_artifacts(path: str) -> bool:
    return path.startswith(ARTIFACT_PREFIXES)


def _relative(path: str) -> str:
    for prefix in ARTIFACT_PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix) :].strip("/")
    return path.strip("/")


def _safe(path: str) -> str:
    """A relative artifact path with no way out of its root (MLflow's validate_path_is_safe)."""
    if "\\" in path or "\x00" in path or path.startswith("/"):
        raise MlflowError(INVALID_PARAMETER_VALUE, f"Invalid path: {path[:200]}")
    parts = path.split("/") if path else []
    if any(part in ("", ".", "..") for part in parts):
        raise MlflowError(INVALID_PARAMETER_VALUE, f"Invalid path: {path[:200]}")
    return path


async def _locate(context: MlflowContext, path: str) -> tuple[str, str] | None:
    """(run, path inside the run) of `<...>/<run>/artifacts/<path>`, when the run exists."""
    parts = path.split("/") if path else []
    for index in range(len(parts) - 1):
        if parts[index + 1] != "artifacts":
            continue
        try:
            result = await context.readers.query(Query(q="run", run=parts[index]))
        except (tl_errors.NotFound, tl_errors.BadQuery):
            continue
        if result.rows and result.rows[0]["id"] == parts[index]:
            return parts[index], "/".join(parts[index + 2 :])
    return None


async def _stored(context: MlflowContext, run: str) -> dict[str, dict[str, Any]]:
    """The run's stored artifacts by path: the latest upload of each."""
    rows = (await ask(context, Query(q="artifacts", run=run))).rows
    return {row["path"]: row for row in rows if row.get("blob")}


async def handle_artifacts(
    method: str,
    path: str,
    query: dict[str, list[str]],
    body: AsyncIterable[bytes] | None,
    context: MlflowContext,
) -> tuple[int, dict[str, Any] | Download]:
    """Answer one request of MLflow's proxied artifact API: PUT uploads, GET downloads a
    file, GET without a file path lists `?path=`."""
    store = context.artifacts
    if store is None:
        # 503, as MLflow's server answers when it serves no artifacts (`--no-serve-artifacts`).
        message = (
            "Artifact uploads and downloads are refused: this tracklog daemon has no artifact store"
            " (its database is not a file). Start it with --artifacts-dir or $TRACKLOG_ARTIFACTS_DIR."
        )
        return 503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": message}
    try:
        relative = _safe(_relative(path))
        method = method.upper()
        if method == "GET" and not relative:
            return 200, await _list(context, _safe((query.get("path") or [""])[0].strip("/")))
        located = await _locate(context, relative)
        if located is None or not located[1]:
            raise MlflowError(RESOURCE_DOES_NOT_EXIST, f"No run's artifact at {relative[:200]}")
        run, inner = located
        if method == "PUT":
            if body is None:
                raise MlflowError(INVALID_PARAMETER_VALUE, "an upload needs a body")
            try:
                blob = await store.put_stream(body)
            except ArtifactTooLarge as exc:
                return 413, {"error_code": "RESOURCE_EXHAUSTED", "message": str(exc)}
            except ArtifactError as exc:
                raise MlflowError(INVALID_PARAMETER_VALUE, str(exc)) from None
            await append_events(context, [artifact_event(run, MLFLOW_KIND, inner, blob)])
            return 200, {}
        if method == "GET":
            row = (await _stored(context, run)).get(inner)
            if row is None:
                raise MlflowError(RESOURCE_DOES_NOT_EXIST, f"No artifact at {relative[:200]}")
            try:
                return 200, Download(store.size(row["blob"]), store.read(row["blob"]))
            except ArtifactError as exc:
                raise MlflowError(RESOURCE_DOES_NOT_EXIST, str(exc)) from None
        return 405, {"error_code": "BAD_REQUEST", "message": f"{method} is not allowed on {path}"}
    except MlflowError as exc:
        return exc.status, exc.body()


async def _list(context: MlflowContext, path: str) -> dict[str, Any]:
    """The files and folders directly under `path` (a file's own path lists nothing, as MLflow)."""
    located = await _locate(context, path)
    if located is None:
        return {}
    run, inner = located
    stored = await _stored(context, run)
    if inner in stored:
        return {}
    prefix = f"{inner}/" if inner else ""
    files: dict[str, dict[str, Any]] = {}
    for file_path, row in stored.items():
        if not file_path.startswith(prefix):
            continue
        head, _, rest = file_path[len(prefix) :].partition("/")
        if rest:
            files.setdefault(head, {"path": head, "is_dir": True})
        else:
            files[head] = {"path": head, "is_dir": False, "file_size": row.get("size") or 0}
    return {"files": [files[name] for name in sorted(files)]} if files else {}
