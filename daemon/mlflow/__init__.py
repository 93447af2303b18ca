"""MLflow's tracking REST API on tracklog: MLflow's calls become tracklog events.

`handle(method, path, query, body, context)` answers one request under `/api/2.0/mlflow/`
or `/ajax-api/2.0/mlflow/` with `(status, JSON value)`, as an MLflow tracking server
would; the HTTP layer only parses the request and sends the answer. Writes go through the
daemon's writer as `append` frames (the path WebSocket appends take: in the log, live for
subscribers, in the tables); reads go through the readers' `ReadModel`. The mapping of
MLflow's model onto tracklog's is in docs/mlflow.md.
"""

from __future__ import annotations

from .artifacts import ARTIFACT_PREFIXES, Download, handle_artifacts, matches_artifacts
from .errors import MlflowError
from .handlers import API_PREFIXES, MlflowContext, handle, matches

__all__ = [
    "API_PREFIXES",
    "ARTIFACT_PREFIXES",
    "Download",
    "MlflowContext",
    "MlflowError",
    "handle",
    "handle_artifacts",
    "matches",
    "matches_artifacts",
]
