"""Logs to export, import, migrate and purge: a few runs with every kind of value."""

from __future__ import annotations

import io
import random
import sqlite3
from pathlib import Path

from tracklog.daemon.logops import export_log
from tracklog.daemon.storage.eventlog import EventLog
from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog
from tracklog.protocol import events as ev
from tracklog.protocol.messages import Check


def fill(log: EventLog, runs: int = 3, points: int = 40, seed: int = 7) -> None:
    """Runs with configs, metrics (odd floats, NaN and the infinities), items whose data
    holds big ints, unicode and bytes, artifacts, a cache entry and dedup records."""
    rng = random.Random(seed)
    for r in range(runs):
        run = f"run-{r}"
        log.append_events(
            [
                ev.RunStarted(
                    id=f"{run}-start",
                    run=run,
                    data=ev.RunStartedData(
                        name=f"naïve 模型 {r} 🚀",
                        config={"lr": 1e-3 * (r + 1), "big": 2**63 - 1, "neg": -(2**63)},
                    ),
                )
            ]
        )
        values = [rng.uniform(-1e6, 1e6) for _ in range(points)] + [0.1 + 0.2, 5e-324, 1.7976931348623157e308]
        values += [float("nan"), float("inf"), float("-inf")]
        log.append_events(
            [
                ev.Metrics(
                    id=f"{run}-m{i}", run=run, data=ev.MetricsData(values={"loss": v, "acc": i / 7}, step=i)
                )
                for i, v in enumerate(values)
            ]
        )
        log.append_events(
            [
                ev.Item(
                    id=f"{run}-item",
                    run=run,
                    data=ev.ItemData(
                        item="i", kind="translation", data={"text": "héllo\u2028wörld", "n": 2**64 - 1}
                    ),
                ),
                ev.Item(run=run, data=ev.ItemData(item="b", data={"raw": b"\x00\xff", "1": [1, 1.0, True]})),
                ev.Artifact(run=run, data=ev.ArtifactData(kind="ckpt", path=f"ckpt/{run}.pt")),
            ]
        )
        log.append_group([Check(namespace="docs", kind="hash", text=f"text of {run}", run=run, item="i")])
    log.append_events([ev.CachePut(id="cache-1", data=ev.CachePutData(key="k", value={"v": [1, 2.5, "x"]}))])


def export_bytes(log: EventLog, **kwargs: object) -> bytes:
    out = io.BytesIO()
    export_log(log, out, **kwargs)  # type: ignore[arg-type]
    return out.getvalue()


def sqlite_log(path: Path) -> SqliteEventLog:
    log = SqliteEventLog(path, clock=lambda: 1_700_000_000.0)
    log.catch_up()
    return log


def blobs(path: Path) -> list[tuple[object, ...]]:
    """Every stored event of an SQLite database as its raw row, data blob included."""
    with sqlite3.connect(path) as conn:
        return list(conn.execute("SELECT seq, id, type, run, ts, recorded, data FROM events ORDER BY seq"))
