"""The upgrade path: a database written at the previous projection version is brought up to
date when the daemon starts on it (its tables rebuilt from the log), and says so."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

from tests.conftest import DaemonProcess, open_client
from tracklog.daemon import commands
from tracklog.daemon.storage.sqlcommon.schema import PROJECTION_VERSION
from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog
from tracklog.protocol import events as ev


def make_previous_version(path: Path) -> None:
    """A database as the previous projection version (5) left it: metric_summaries without
    `sum` and `summed` (the mean), no items_stage index, the meta saying 5."""
    log = SqliteEventLog(path)
    log.catch_up()
    log.append_events(
        [
            ev.RunStarted(id="s", run="r", data=ev.RunStartedData(name="old")),
            *[
                ev.Metrics(id=f"m{i}", run="r", data=ev.MetricsData(values={"v": v}, step=i))
                for i, v in enumerate([1.0, 2.0, 6.0])
            ],
            ev.Item(run="r", data=ev.ItemData(stage="s", kind="k", duration=0.5)),
        ]
    )
    log.close()
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE metric_summaries DROP COLUMN sum")
        conn.execute("ALTER TABLE metric_summaries DROP COLUMN summed")
        conn.execute("DROP INDEX items_stage")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'projection_version'", (PROJECTION_VERSION - 1,))


async def test_a_database_at_the_previous_projection_version_is_brought_up_to_date_on_start(
    db_path: Path,
) -> None:
    make_previous_version(db_path)
    daemon = DaemonProcess(db_path).start()
    try:
        assert any("rebuilding every projection table from the log" in line for line in daemon.log)
        client, welcome = await open_client(daemon.url)
        assert welcome["head"] == 5
        answer = await client.query("run", run="r")
        assert answer["rows"][0]["metrics"]["v"]["mean"] == 3.0
        await client.ws.close()
    finally:
        assert daemon.stop() == 0
    with sqlite3.connect(db_path) as conn:
        (version,) = conn.execute("SELECT value FROM meta WHERE key = 'projection_version'").fetchone()
        indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert version == PROJECTION_VERSION and "items_stage" in indexes
    out = io.StringIO()
    assert commands.verify(db_path, out) == 0, out.getvalue()
    # Started again, nothing is rebuilt.
    daemon = DaemonProcess(db_path).start()
    try:
        assert not any("rebuilding every projection table" in line for line in daemon.log)
    finally:
        assert daemon.stop() == 0
