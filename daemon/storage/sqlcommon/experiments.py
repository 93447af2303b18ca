"""Experiments: the groupings runs belong to, with their tags and how many runs each holds.

Plain SQL with `?` placeholders only: the PostgreSQL backend shares these statements.
"""

from __future__ import annotations

from typing import Any, Final

from tracklog.protocol.messages import Query

from ..readmodel import DEFAULT_EXPERIMENTS, MAX_EXPERIMENTS
from .dialect import Connection
from .rows import marks, page

_COLUMNS: Final = (
    "e.experiment, e.name, e.lifecycle, e.artifact_location, e.created, e.updated,"
    " e.created_seq, e.updated_seq"
)
_NAMES: Final = [c.strip().removeprefix("e.") for c in _COLUMNS.split(",")]


def query_experiments(conn: Connection, q: Query) -> tuple[list[Any], int | None]:
    """Experiments oldest first: `{id, name, lifecycle, artifact_location, created, updated,
    created_seq, updated_seq, tags: {tag: value}, runs}` (`runs`: runs not deleted)."""
    limit, offset = page(q, DEFAULT_EXPERIMENTS, MAX_EXPERIMENTS)
    where: list[str] = []
    params: list[Any] = []
    if q.experiments is not None:
        where.append(f"e.experiment IN ({marks(q.experiments)})" if q.experiments else "1 = 0")
        params.extend(q.experiments)
    if q.names is not None:
        where.append(f"e.name IN ({marks(q.names)})" if q.names else "1 = 0")
        params.extend(q.names)
    if not q.deleted:
        where.append("e.lifecycle = 'active'")
    clause = " AND ".join(where) or "1 = 1"
    total = conn.execute(f"SELECT count(*) FROM experiments e WHERE {clause}", params).fetchone()[0]
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM experiments e WHERE {clause} ORDER BY e.created_seq, e.experiment"
        " LIMIT ? OFFSET ?",
        [*params, limit, offset],
    ).fetchall()
    out: list[dict[str, Any]] = []
    for row in rows:
        experiment = dict(zip(_NAMES, row, strict=True))
        experiment["id"] = experiment.pop("experiment")
        experiment["tags"] = {}
        experiment["runs"] = 0
        out.append(experiment)
    if out:
        by_id = {e["id"]: e for e in out}
        ids = list(by_id)
        for experiment, tag, value in conn.execute(
            f"SELECT experiment, tag, value FROM experiment_tags WHERE experiment IN ({marks(ids)})"
            " ORDER BY experiment, tag",
            ids,
        ):
            by_id[experiment]["tags"][tag] = value
        for experiment, count in conn.execute(
            f"SELECT experiment, count(*) FROM runs WHERE experiment IN ({marks(ids)}) AND deleted = 0"
            " GROUP BY experiment",
            ids,
        ):
            by_id[experiment]["runs"] = count
    return out, total
