"""MLflow's entities from tracklog's rows, and the translations between their vocabularies.

Pure functions of plain data (a `run` query row, an `experiments` row): tested without a
daemon. docs/mlflow.md says why each mapping is what it is.
"""

from __future__ import annotations

import json
import math
import random
import re
from typing import Any, Final

#: The experiment MLflow puts runs in when none is named; tracklog runs without an
#: experiment are shown in it too.
DEFAULT_EXPERIMENT_ID: Final = "0"
DEFAULT_EXPERIMENT_NAME: Final = "Default"
#: Tags MLflow keeps as tags but tracklog keeps as run fields.
RUN_NAME_TAG: Final = "mlflow.runName"
NOTE_TAG: Final = "mlflow.note.content"
PARENT_TAG: Final = "mlflow.parentRunId"
USER_TAG: Final = "mlflow.user"

#: MLflow's run status from tracklog's. `lost` (every writer gone for the grace period)
#: has no MLflow equivalent: it shows as FAILED, and becomes RUNNING again if a writer returns.
STATUS_TO_MLFLOW: Final = {
    "running": "RUNNING",
    "completed": "FINISHED",
    "failed": "FAILED",
    "killed": "KILLED",
    "lost": "FAILED",
}
#: tracklog's status from MLflow's; SCHEDULED is running (tracklog has no queue).
STATUS_FROM_MLFLOW: Final = {
    "RUNNING": "running",
    "SCHEDULED": "running",
    "FINISHED": "completed",
    "FAILED": "failed",
    "KILLED": "killed",
}
#: The tracklog statuses an MLflow status matches in a search.
STATUS_MATCHES: Final = {
    "RUNNING": ("running",),
    "SCHEDULED": (),
    "FINISHED": ("completed",),
    "FAILED": ("failed", "lost"),
    "KILLED": ("killed",),
}

#: Names MLflow accepts for params, metrics and tags (mlflow/utils/validation.py).
_GOOD_NAME: Final = re.compile(r"^[/\w.\- :]*$")


def bad_name(name: str) -> str | None:
    """Why MLflow would refuse `name` as a param, metric or tag key, or None."""
    if not _GOOD_NAME.match(name):
        return (
            "Names may only contain alphanumerics, underscores (_), dashes (-), periods (.), spaces ( ),"
            " colon(:) and slashes (/)."
        )
    import posixpath

    normal = posixpath.normpath(name)
    if normal != name or normal == "." or normal.startswith("..") or normal.startswith("/"):
        return (
            "Names may be treated as files in certain cases, and must not resolve to other names"
            f" when treated as such. This name would resolve to {normal!r}"
        )
    return None


def millis(seconds: float | None) -> int | None:
    """Seconds since the epoch (tracklog) as MLflow's milliseconds."""
    return None if seconds is None else round(seconds * 1000)


def seconds(ms: int | float) -> float:
    """MLflow's milliseconds as tracklog's seconds."""
    return float(ms) / 1000.0


def metric_value(value: float) -> float | str:
    """A value as protobuf's JSON carries it: NaN and the infinities as strings."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def param_text(value: Any) -> str:
    """A config value as an MLflow param (always a string): text as it is, numbers and
    booleans as Python writes them (what `mlflow.log_param` sends), lists as JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return "None"
    if isinstance(value, (bool, int, float)):
        return str(value)
    return json.dumps(value, separators=(", ", ": "))


def params_of(config: dict[str, Any]) -> dict[str, str]:
    """A run's config as MLflow params: nested maps flattened with dots (`optimizer.lr`)."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: dict[str, Any]) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                walk(name + ".", value)
            else:
                out[name] = param_text(value)

    walk("", config)
    return out


def experiment_id_of(run: dict[str, Any]) -> str:
    return run.get("experiment") or DEFAULT_EXPERIMENT_ID


def default_artifact_location(experiment_id: str) -> str:
    """Where runs of an experiment keep artifacts by default: the daemon's proxied store."""
    return f"mlflow-artifacts:/{experiment_id}"


def default_experiment() -> dict[str, Any]:
    """Experiment 0 as MLflow has it before anything changed it."""
    return {
        "id": DEFAULT_EXPERIMENT_ID,
        "name": DEFAULT_EXPERIMENT_NAME,
        "lifecycle": "active",
        "artifact_location": default_artifact_location(DEFAULT_EXPERIMENT_ID),
        "created": 0.0,
        "updated": 0.0,
        "tags": {},
    }


def experiment_json(row: dict[str, Any]) -> dict[str, Any]:
    """MLflow's Experiment from an `experiments` row."""
    out: dict[str, Any] = {
        "experiment_id": row["id"],
        "name": row["name"],
        "artifact_location": row.get("artifact_location") or default_artifact_location(row["id"]),
        "lifecycle_stage": row["lifecycle"],
        "creation_time": millis(row["created"]),
        "last_update_time": millis(row["updated"]),
    }
    if row["tags"]:
        out["tags"] = [{"key": k, "value": v} for k, v in sorted(row["tags"].items())]
    return out


def run_tags(run: dict[str, Any]) -> dict[str, str]:
    """A run's MLflow tags: its tags (a tag without a value is ''), and the fields MLflow
    keeps as tags (name, notes)."""
    values = run.get("tag_values") or {}
    tags = {tag: values.get(tag, "") for tag in run.get("tags") or ()}
    if run.get("name"):
        tags[RUN_NAME_TAG] = run["name"]
    if run.get("notes"):
        tags[NOTE_TAG] = run["notes"]
    return tags


def run_info(run: dict[str, Any], artifact_location: str) -> dict[str, Any]:
    """MLflow's RunInfo from a `run` or `runs` row and its experiment's artifact location."""
    status = STATUS_TO_MLFLOW.get(run["status"], "RUNNING")
    info: dict[str, Any] = {
        "run_id": run["id"],
        "run_uuid": run["id"],
        "run_name": run.get("name") or "",
        "experiment_id": experiment_id_of(run),
        "user_id": run.get("user") or "",
        "status": status,
        "start_time": millis(run["started"]),
        "artifact_uri": f"{artifact_location.rstrip('/')}/{run['id']}/artifacts",
        "lifecycle_stage": "deleted" if run.get("deleted") else "active",
    }
    if run.get("finished") is not None and status != "RUNNING":
        info["end_time"] = millis(run["finished"])
    return info


def run_json(
    run: dict[str, Any], artifact_location: str, metrics: list[dict[str, Any]], inputs: list[dict[str, Any]]
) -> dict[str, Any]:
    """MLflow's Run: info, data (latest metrics, params, tags) and inputs."""
    data: dict[str, Any] = {}
    if metrics:
        data["metrics"] = metrics
    params = params_of(run.get("config") or {})
    if params:
        data["params"] = [{"key": k, "value": v} for k, v in sorted(params.items())]
    tags = run_tags(run)
    if tags:
        data["tags"] = [{"key": k, "value": v} for k, v in sorted(tags.items())]
    out: dict[str, Any] = {"info": run_info(run, artifact_location), "data": data, "inputs": {}}
    if inputs:
        out["inputs"] = {"dataset_inputs": inputs}
    return out


def latest_from_histories(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The latest value of each metric as MLflow picks it: the point with the highest
    (step, timestamp, value), from the `metrics` query's columns."""
    out = []
    for row in sorted(rows, key=lambda r: str(r["name"])):
        best: tuple[int, int, float] | None = None
        for step, value, ts in zip(row["steps"], row["values"], row["ts"], strict=True):
            point = (int(step), millis(ts) or 0, float(value))
            rank = (point[0], point[1], -math.inf if math.isnan(point[2]) else point[2])
            if best is None or rank >= (best[0], best[1], -math.inf if math.isnan(best[2]) else best[2]):
                best = point
        if best is not None:
            out.append(
                {"key": row["name"], "value": metric_value(best[2]), "timestamp": best[1], "step": best[0]}
            )
    return out


def latest_metrics(summaries: dict[str, Any]) -> list[dict[str, Any]]:
    """The last value logged of each metric, from the `run` query's summaries (what stands
    for MLflow's latest when reading every point would cost too much)."""
    out = []
    for name, summary in sorted(summaries.items()):
        last = summary.get("last")
        out.append(
            {
                "key": name,
                "value": metric_value(math.nan if last is None else float(last)),
                "timestamp": millis(summary.get("last_ts")) or 0,
                "step": summary.get("last_step") or 0,
            }
        )
    return out


_ADJECTIVES: Final = [
    "amber",
    "bold",
    "brave",
    "bright",
    "calm",
    "clever",
    "crisp",
    "daring",
    "eager",
    "fleet",
    "gentle",
    "glad",
    "honest",
    "keen",
    "lively",
    "lucky",
    "merry",
    "nimble",
    "proud",
    "quick",
    "quiet",
    "rare",
    "sly",
    "smart",
    "sunny",
    "swift",
    "tidy",
    "vast",
    "warm",
    "wise",
]
_NOUNS: Final = [
    "ant",
    "bass",
    "bat",
    "bear",
    "bee",
    "crab",
    "crane",
    "deer",
    "dove",
    "eel",
    "elk",
    "finch",
    "fox",
    "frog",
    "gnat",
    "goat",
    "hare",
    "hawk",
    "jay",
    "lark",
    "lion",
    "lynx",
    "mole",
    "moth",
    "newt",
    "owl",
    "panda",
    "ram",
    "seal",
    "slug",
    "snail",
    "squid",
    "toad",
    "vole",
    "wasp",
    "wolf",
    "yak",
]


def random_run_name() -> str:
    """A readable name for a run created without one, as MLflow gives (`bold-fox-42`)."""
    rng = random.SystemRandom()
    return f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}-{rng.randrange(1000)}"
