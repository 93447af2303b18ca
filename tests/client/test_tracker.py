"""The tracker against a real daemon: nothing lost, nothing doubled, nothing raised.

Every wait here is `flush(timeout)` or polling a condition up to a deadline; a test
never sleeps to let something happen.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tracklog
from tests.conftest import DaemonProcess

from .conftest import WAIT, PortDaemon, ids_of, query, stored_events

MakeTracker = Callable[..., tracklog.Tracker]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)  # polling interval, not a synchronisation


def assert_exactly_once(url: str, run: str, logged: int) -> None:
    events = stored_events(url, run=run, types=["metrics"])
    counts = ids_of(events)
    assert len(counts) == logged, f"{logged - len(counts)} events lost"
    assert max(counts.values()) == 1, "an event was stored twice"
    assert query(url, "run", run=run)["rows"][0]["n_points"] == logged


# -- the happy path ---------------------------------------------------------------------


def test_a_run_and_its_metrics_items_and_artifacts_reach_the_daemon(
    daemon: DaemonProcess, make_tracker: MakeTracker
) -> None:
    tl = make_tracker(daemon.url)
    with tl.start_run("baseline", pipeline="train", config={"lr": 1e-3}, tags=["v1"]) as run:
        run.log_metric("train/loss", 0.42, step=100, epoch=0)
        run.log_metrics({"loss": 0.40, "acc": 0.91}, step=101)
        run.log_item("i-1", stage="translate", kind="translation_result", data={"text": "hi"},
                     model="gpt-oss", backend="ollama", duration=0.12)
        run.log_artifact("checkpoint", Path("ckpt/epoch5.pt"), metadata={"epoch": 5})
        run.update(notes="good", add_tags=["best"])
    assert tl.flush(WAIT)
    row = query(daemon.url, "run", run=run.id)["rows"][0]
    assert (row["name"], row["pipeline"], row["status"]) == ("baseline", "train", "completed")
    assert row["config"] == {"lr": 1e-3}
    assert set(row["tags"]) == {"v1", "best"}
    assert row["notes"] == "good"
    assert (row["n_items"], row["n_artifacts"]) == (1, 1)
    stats = tl.stats()
    assert stats["acked"] == 7 and stats["queued"] == stats["in_flight"] == stats["spooled"] == 0


def test_a_context_managed_run_that_raises_is_marked_failed_with_the_error_text(
    daemon: DaemonProcess, make_tracker: MakeTracker
) -> None:
    tl = make_tracker(daemon.url)
    with pytest.raises(ValueError, match="bad batch"), tl.start_run("doomed") as run:
        run.log_metric("loss", 1.0)
        raise ValueError("bad batch 17")
    assert tl.flush(WAIT)
    row = query(daemon.url, "run", run=run.id)["rows"][0]
    assert row["status"] == "failed"
    assert row["error"] == "ValueError: bad batch 17"


def test_a_run_started_by_one_tracker_takes_events_from_another_attached_to_it(
    daemon: DaemonProcess, make_tracker: MakeTracker
) -> None:
    first, second = make_tracker(daemon.url), make_tracker(daemon.url)
    run = first.start_run("shared")
    with second.run(run.id) as attached:  # leaving an attached run does not finish it
        attached.log_metric("rank1/loss", 0.5, step=1)
    run.log_metric("rank0/loss", 0.6, step=1)
    assert second.flush(WAIT) and first.flush(WAIT)
    row = query(daemon.url, "run", run=run.id)["rows"][0]
    assert row["status"] == "running" and row["n_points"] == 2
    run.finish()
    assert first.flush(WAIT)
    assert query(daemon.url, "run", run=run.id)["rows"][0]["status"] == "completed"


def test_rejected_events_land_in_errors_and_are_never_raised(
    daemon: DaemonProcess, make_tracker: MakeTracker
) -> None:
    tl = make_tracker(daemon.url)
    run = tl.start_run()
    run.log_metric("", 1.0)  # a name must have 1 to 250 characters
    run.log_metric("ok", 2.0)
    run.log_item(status="weird")  # type: ignore[arg-type]
    assert tl.flush(WAIT)
    assert tl.stats()["rejected"] == 2
    messages = sorted(e.message for e in tl.errors)
    assert messages[0].startswith("item.status"), messages
    assert messages[1].startswith("metrics.values"), messages
    assert {e.event["type"] for e in tl.errors} == {"metrics", "item"}
    assert len(stored_events(daemon.url, run=run.id, types=["metrics"])) == 1


def test_a_metric_that_is_not_a_number_raises_at_the_call(
    daemon: DaemonProcess, make_tracker: MakeTracker
) -> None:
    run = make_tracker(daemon.url).start_run()
    with pytest.raises(TypeError, match="'loss': expected a number, got a boolean"):
        run.log_metric("loss", True)
    with pytest.raises(TypeError, match="'loss': expected a number, got str"):
        run.log_metric("loss", "0.5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'acc': expected a number"):
        run.log_metrics({"loss": 0.5, "acc": None})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="step: expected an integer"):
        run.log_metric("loss", 0.5, step=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cannot log a value of type object"):
        run.log_item(data=object())


def test_numpy_scalars_and_nan_are_logged_as_numbers(
    daemon: DaemonProcess, make_tracker: MakeTracker
) -> None:
    np = pytest.importorskip("numpy")
    tl = make_tracker(daemon.url)
    run = tl.start_run()
    run.log_metric("a", np.float32(0.5), step=np.int64(3))
    run.log_metric("b", float("nan"))
    run.log_metrics({"c": np.int64(7), "d": float("inf")})
    assert tl.flush(WAIT) and not tl.errors
    events = stored_events(daemon.url, run=run.id, types=["metrics"])
    values = {k: v for e in events for k, v in e["data"]["values"].items()}
    assert values["a"] == 0.5 and values["c"] == 7 and values["d"] == float("inf")
    assert values["b"] != values["b"]
    assert events[0]["data"]["step"] == 3


# -- the daemon away --------------------------------------------------------------------


def test_events_logged_before_the_daemon_is_up_arrive_once_when_it_comes_up(
    port_daemon: PortDaemon, make_tracker: MakeTracker
) -> None:
    tl = make_tracker(port_daemon.url)
    run = tl.start_run("early")
    for step in range(5_000):
        run.log_metric("loss", 1.0 / (step + 1), step=step)
    wait_until(lambda: tl.stats()["spooled"] == 5_001, "the events to reach the spool")
    assert not tl.flush(0.05)  # nobody to ack them
    port_daemon.start()
    assert tl.flush(WAIT)
    assert_exactly_once(port_daemon.url, run.id, 5_000)
    assert tl.stats()["spooled"] == 0
    assert not list(tl.spool_dir.glob("*.spool")) or all(
        p.stat().st_size <= 16 for p in tl.spool_dir.glob("*.spool")
    )


def test_kill_9_and_restart_in_a_stream_of_100k_events_loses_and_doubles_nothing(
    port_daemon: PortDaemon, make_tracker: MakeTracker
) -> None:
    port_daemon.start()
    tl = make_tracker(port_daemon.url)
    run = tl.start_run("stream")
    total = 100_000
    for step in range(total // 2):
        run.log_metric("loss", 1.0, step=step)
    wait_until(lambda: tl.stats()["acked"] > 0, "the first acks")
    port_daemon.kill()
    for step in range(total // 2, total):
        run.log_metric("loss", 1.0, step=step)
    wait_until(lambda: not tl.stats()["connected"], "the tracker to see the daemon gone")
    port_daemon.start()
    assert tl.flush(WAIT)
    assert_exactly_once(port_daemon.url, run.id, total)
    assert tl.stats()["connects"] >= 2


def test_a_full_queue_spills_to_disk_instead_of_blocking_or_dropping(
    port_daemon: PortDaemon, make_tracker: MakeTracker
) -> None:
    port_daemon.start()
    tl = make_tracker(port_daemon.url, max_queue=500, batch_size=100, max_inflight=2)
    run = tl.start_run("flood")
    assert tl.flush(WAIT)
    assert port_daemon.proc is not None
    os.kill(port_daemon.proc.pid, signal.SIGSTOP)  # connected, but no acks come back
    try:
        for step in range(20_000):
            run.log_metric("loss", 1.0, step=step)
        wait_until(lambda: tl.stats()["queued"] <= 500, "the queue to be spilled")
        stats = tl.stats()
        assert stats["overflows"] >= 1
        assert stats["spooled"] >= 20_000 - 500 - 2 * 100
    finally:
        os.kill(port_daemon.proc.pid, signal.SIGCONT)
    assert tl.flush(WAIT)
    assert_exactly_once(port_daemon.url, run.id, 20_000)


SPOOLING_CHILD = """
import sys, tracklog
tl = tracklog.connect(sys.argv[1], spool_dir=sys.argv[2])
run = tl.start_run("orphan", run_id=sys.argv[3])
for step in range(int(sys.argv[4])):
    run.log_metric("loss", 0.5, step=step)
run.finish()
print(tl.flush(0.05))
# exits without close(): the exit hook spools what is queued
"""


def spool_in_a_child(url: str, spool_dir: Path, run_id: str, n: int) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SPOOLING_CHILD, url, str(spool_dir), run_id, str(n)],
        capture_output=True, text=True, timeout=WAIT, check=True,
    )
    assert out.stdout.strip() == "False", out


def test_a_spool_left_by_a_process_that_exited_is_sent_by_the_next_tracker(
    port_daemon: PortDaemon, make_tracker: MakeTracker, spool_dir: Path
) -> None:
    spool_in_a_child(port_daemon.url, spool_dir, "orphan-run", 3_000)
    assert list(spool_dir.rglob("*.spool"))
    port_daemon.start()
    tl = make_tracker(port_daemon.url)
    assert tl.flush(WAIT)
    assert tl.stats()["adopted"] == 3_002
    assert_exactly_once(port_daemon.url, "orphan-run", 3_000)
    assert query(port_daemon.url, "run", run="orphan-run")["rows"][0]["status"] == "completed"
    assert not list(spool_dir.rglob("*.spool"))


def test_two_trackers_never_send_the_same_spool(
    port_daemon: PortDaemon, make_tracker: MakeTracker, spool_dir: Path
) -> None:
    spool_in_a_child(port_daemon.url, spool_dir, "orphan-run", 2_000)
    port_daemon.start()
    first, second = make_tracker(port_daemon.url), make_tracker(port_daemon.url)
    assert first.flush(WAIT) and second.flush(WAIT)
    assert first.stats()["adopted"] + second.stats()["adopted"] == 2_002
    assert first.stats()["duplicates"] + second.stats()["duplicates"] == 0
    assert_exactly_once(port_daemon.url, "orphan-run", 2_000)


def test_close_with_the_daemon_down_returns_and_leaves_the_events_in_the_spool(
    port_daemon: PortDaemon, spool_dir: Path
) -> None:
    tl = tracklog.connect(port_daemon.url, spool_dir=spool_dir, backoff_max=0.5)
    run = tl.start_run(run_id="closed-run")
    for step in range(100):
        run.log_metric("loss", 0.5, step=step)
    wait_until(lambda: tl.stats()["spooled"] == 101, "the spool")
    tl.close(timeout=WAIT)
    assert tl.stats()["spooled"] == 101
    assert not tl.flush(1)
    port_daemon.start()
    with tracklog.connect(port_daemon.url, spool_dir=spool_dir) as again:
        assert again.flush(WAIT)
    assert_exactly_once(port_daemon.url, "closed-run", 100)


def test_events_logged_after_close_are_spooled_for_the_next_tracker(
    port_daemon: PortDaemon, spool_dir: Path
) -> None:
    port_daemon.start()
    tl = tracklog.connect(port_daemon.url, spool_dir=spool_dir)
    run = tl.start_run(run_id="late-run")
    tl.close(timeout=WAIT)
    run.log_metric("loss", 0.1, step=1)
    with tracklog.connect(port_daemon.url, spool_dir=spool_dir) as again:
        assert again.flush(WAIT)
        assert again.stats()["adopted"] == 1
    assert_exactly_once(port_daemon.url, "late-run", 1)


# -- module-level shortcuts -------------------------------------------------------------


def test_module_level_shortcuts_log_to_the_active_run_of_the_default_tracker(
    daemon: DaemonProcess, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACKLOG_URL", daemon.url)
    monkeypatch.setenv("XDG_CACHE_HOME", str(spool_dir))
    try:
        with pytest.raises(RuntimeError, match="no active run"):
            tracklog.log_metric("loss", 1.0)
        with tracklog.start_run("script") as run:
            tracklog.log_metric("loss", 0.3, step=1)
            tracklog.log_metrics({"acc": 0.9}, step=1)
        assert tracklog.active_run() is None
        assert tracklog.flush(WAIT)
        assert tracklog.get_tracker().url == daemon.url
    finally:
        tracklog.close()
    row: dict[str, Any] = query(daemon.url, "run", run=run.id)["rows"][0]
    assert row["status"] == "completed" and row["n_points"] == 2


def test_a_run_started_in_an_experiment_is_listed_by_its_experiment(
    daemon: DaemonProcess, make_tracker: MakeTracker
) -> None:
    tl = make_tracker(daemon.url)
    with tl.start_run("grouped", experiment="7") as run:
        run.log_metric("loss", 0.5)
    tl.start_run("loose").finish()
    assert tl.flush(WAIT)
    assert query(daemon.url, "run", run=run.id)["rows"][0]["experiment"] == "7"
    rows = query(daemon.url, "runs", filter="experiment = '7'")["rows"]
    assert [r["name"] for r in rows] == ["grouped"]
