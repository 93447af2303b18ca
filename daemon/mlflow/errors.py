"""MLflow's errors as its server sends them: `{"error_code": ..., "message": ...}` with the
HTTP status MLflow gives each code (mlflow/exceptions.py, ERROR_CODE_TO_HTTP_STATUS)."""

from __future__ import annotations

import json
from typing import Any, Final

INVALID_PARAMETER_VALUE: Final = "INVALID_PARAMETER_VALUE"
RESOURCE_DOES_NOT_EXIST: Final = "RESOURCE_DOES_NOT_EXIST"
RESOURCE_ALREADY_EXISTS: Final = "RESOURCE_ALREADY_EXISTS"
ENDPOINT_NOT_FOUND: Final = "ENDPOINT_NOT_FOUND"
BAD_REQUEST: Final = "BAD_REQUEST"
INVALID_STATE: Final = "INVALID_STATE"
INTERNAL_ERROR: Final = "INTERNAL_ERROR"
TEMPORARILY_UNAVAILABLE: Final = "TEMPORARILY_UNAVAILABLE"

#: The HTTP status of each code, as MLflow's server answers it.
HTTP_STATUS: Final = {
    INVALID_PARAMETER_VALUE: 400,
    RESOURCE_ALREADY_EXISTS: 400,
    BAD_REQUEST: 400,
    RESOURCE_DOES_NOT_EXIST: 404,
    ENDPOINT_NOT_FOUND: 404,
    INVALID_STATE: 500,
    INTERNAL_ERROR: 500,
    TEMPORARILY_UNAVAILABLE: 503,
}


class MlflowError(Exception):
    """An MLflow API error: its code decides the HTTP status."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    def body(self) -> dict[str, Any]:
        return {"error_code": self.code, "message": self.message}


def invalid_value(path: str, value: Any, why: str | None = None) -> MlflowError:
    """MLflow's wording for a bad request field (mlflow/utils/validation.py, invalid_value)."""
    shown = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    text = f"Invalid value {shown} for parameter '{path}' supplied"
    return MlflowError(INVALID_PARAMETER_VALUE, f"{text}: {why}" if why else f"{text}.")


def missing(path: str) -> MlflowError:
    """A required field absent (MLflow's handlers: `_assert_required`)."""
    return MlflowError(
        INVALID_PARAMETER_VALUE,
        f"Missing value for required parameter '{path}'. See the API docs for more information about"
        " request parameters.",
    )


def run_not_found(run_id: str) -> MlflowError:
    return MlflowError(RESOURCE_DOES_NOT_EXIST, f"Run with id={run_id} not found")


def experiment_not_found(experiment_id: str) -> MlflowError:
    return MlflowError(RESOURCE_DOES_NOT_EXIST, f"No Experiment with id={experiment_id} exists")
