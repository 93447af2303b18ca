"""Queries on daemons that share one PostgreSQL database: every daemon answers every
question the same, whichever daemon the events went through; the password of the URL
stays out of the logs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import DaemonProcess, open_client
from tests.pg import PgServer


@pytest.fixture
def two_daemons(pg_server: PgServer) -> Iterator[tuple[DaemonProcess, DaemonProcess]]:
    url = pg_server.create_database()
    # trust authentication ignores the password: it is only there to be kept out of logs.
    with_password = url.replace("postgres@", "postgres:s3cret-pw@", 1) + "?pool_size=3"
    first = DaemonProcess(with_password).start()
    second = DaemonProcess(with_password).start()
    try:
        yield first, second
    finally:
        for proc in (first, second):
            if proc.proc is not None and proc.proc.poll() is None:
                proc.stop()
        pg_server.drop_database(url)


QUESTIONS: list[dict[str, Any]] = [
    {"q": "runs", "deleted": True},
    {"q": "runs", "filter": "config.lr < 0.05 or tags.b", "order_by": ["metrics.loss desc"]},
    {"q": "run", "run": "from-a"},
    {"q": "resolve", "run": "from"},
    {"q": "metrics", "run": "from-b", "max_points": 4},
    {"q": "compare", "runs": ["from-a", "from-b"]},
    {"q": "best", "metric": "loss"},
    {"q": "items", "stage": "s"},
    {"q": "item_facets", "run": "from-a"},
    {"q": "artifacts", "run": "from-b"},
    {"q": "search", "text": "notes"},
    {"q": "cache", "key": "k"},
    {"q": "events", "from_seq": 2, "limit": 5},
]


async def test_every_daemon_answers_the_same_whichever_daemon_wrote(
    two_daemons: tuple[DaemonProcess, DaemonProcess],
) -> None:
    first, second = two_daemons
    a, _ = await open_client(first.url)
    b, _ = await open_client(second.url)
    for client, run, lr in ((a, "from-a", 0.1), (b, "from-b", 0.01)):
        ack = await client.append(
            [
                {
                    "type": "run.started",
                    "run": run,
                    "data": {"name": run, "config": {"lr": lr}, "tags": [run[-1]]},
                },
                *(
                    {"type": "metrics", "run": run, "data": {"step": s, "values": {"loss": lr * (10 - s)}}}
                    for s in range(10)
                ),
                {"type": "item", "run": run, "data": {"item": "i", "stage": "s", "duration": lr}},
                {"type": "artifact", "run": run, "data": {"kind": "model", "path": f"{run}.pt"}},
                {"type": "run.updated", "run": run, "data": {"notes": f"notes of {run}"}},
            ]
        )
        assert ack["op"] == "ack" and ack["accepted"] == 14
    ack = await b.append([{"type": "cache.put", "data": {"key": "k", "value": [1, 2]}}])
    assert ack["accepted"] == 1
    for question in QUESTIONS:
        on_first, on_second = await a.query(**question), await b.query(**question)
        # `resolve` of "from" is ambiguous (bad_query) on both: errors are compared too.
        assert on_first["op"] == ("error" if question["q"] == "resolve" else "result"), (question, on_first)
        on_first.pop("ref")
        on_second.pop("ref")
        if question["q"] == "search":  # scores are the same too; hits compared as they come
            assert {r["run"] for r in on_first["rows"]} == {"from-a", "from-b"}
        assert on_first == on_second, question
    (stats_a,), (stats_b,) = (await a.query("stats"))["rows"], (await b.query("stats"))["rows"]
    assert stats_a["head"] == stats_b["head"] == 29 and stats_a["runs"] == stats_b["runs"] == 2
    (sql,) = (await b.query("sql", sql="SELECT count(*) FROM events"))["rows"]
    assert sql["rows"] == [[29]]


def test_the_password_stays_out_of_the_logs(two_daemons: tuple[DaemonProcess, DaemonProcess]) -> None:
    first, _ = two_daemons
    listening = next(line for line in first.log if '"listening"' in line)
    assert "postgres:***@" in listening and "s3cret-pw" not in "".join(first.log)
