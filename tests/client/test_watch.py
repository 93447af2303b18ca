"""`tracklog watch`: the state it folds from events and the screen it draws (no terminal, no daemon)."""

from __future__ import annotations

import io
import math
import re
import sys
from typing import Any

import pytest

pytest.importorskip("rich", reason="rich is not installed (pip install 'tracklog[daemon]')")

from rich.console import Console

from tracklog.watch import WatchState, format_age, render, sparkline

NOW = 1_800_000_000.0


def event(
    seq: int, type_: str, run: str, data: dict[str, Any] | None = None, ts: float = NOW
) -> dict[str, Any]:
    return {"seq": seq, "type": type_, "run": run, "ts": ts, "recorded": ts, "id": None, "data": data or {}}


def fixed_state() -> WatchState:
    state = WatchState()
    state.load_runs(
        [
            {
                "id": "r-old",
                "name": "baseline",
                "pipeline": "train",
                "status": "completed",
                "started": NOW - 7200,
                "finished": NOW - 3600,
                "n_items": 12,
                "n_failed": 0,
                "metrics": {"loss": 0.25},
            },
        ],
        seq=10,
    )
    events = [event(11, "run.started", "r-live", {"name": "sweep-7", "pipeline": "train"}, ts=NOW - 95)]
    seq = 12
    for step in range(20):
        values = {"loss": 1.0 / (1 + step), "acc": step / 20, "lr": 0.001}
        events.append(event(seq, "metrics", "r-live", {"values": values, "step": step}, ts=NOW - 20 + step))
        seq += 1
    for i in range(30):
        events.append(event(seq, "item", "r-live", {"item": f"i{i}"}, ts=NOW - 5 + i / 10))
        seq += 1
    events.append(event(seq, "run.started", "r-bad", {"name": "translate", "pipeline": "nlp"}, ts=NOW - 30))
    events.append(event(seq + 1, "item", "r-bad", {"status": "failed", "error": "timeout"}, ts=NOW - 10))
    events.append(event(seq + 2, "metrics", "r-bad", {"values": {"bleu": 12.5}}, ts=NOW - 9))
    events.append(
        event(seq + 3, "run.finished", "r-bad", {"status": "failed", "error": "CUDA OOM"}, ts=NOW - 8)
    )
    for e in events:
        state.apply(e)
    state.connected = state.live = True
    return state


def screen(state: WatchState, width: int = 140) -> Console:
    console = Console(
        file=io.StringIO(), record=True, width=width, height=30, color_system="256", force_terminal=True
    )
    console.print(render(state, NOW, "ws://127.0.0.1:7717/ws"))
    return console


def test_the_screen_shows_each_run_with_status_age_rate_and_metric_sparklines() -> None:
    text = screen(fixed_state()).export_text()
    lines = text.splitlines()
    assert "tracklog watch" in lines[0] and "live" in lines[0] and "3 runs" in lines[0]
    live = next(line for line in lines if "sweep-7" in line)
    assert "running" in live and "1m35s" in live and "30" in live and "3.0" in live  # 30 items in 10 s
    assert "acc" in live and "0.95" in live
    assert "▁▂" in live and "█" in live  # acc climbs from the bottom to the top
    assert "loss" in text and "0.05" in text and "lr" in text
    bad = next(line for line in lines if "translate" in line)
    assert "failed" in bad and "(1 failed)" in bad and "bleu" in bad and "12.5" in bad
    assert "CUDA OOM" in text
    old = next(line for line in lines if "baseline" in line)
    assert "completed" in old and "1h00m" in old  # a finished run's age stops at its end


def test_running_runs_come_first_and_failures_are_drawn_in_red() -> None:
    console = screen(fixed_state())
    text = console.export_text(clear=False)
    assert text.index("sweep-7") < text.index("translate")
    ansi = console.export_text(styles=True)
    assert re.search(r"\x1b\[1;31[;0-9]*mfailed", ansi)  # bold red status
    assert re.search(r"\x1b\[1;31[;0-9]*m \(1 failed\)", ansi)  # failed items in bold red
    assert re.search(r"\x1b\[1;36[;0-9]*mrunning", ansi)


def test_events_already_in_the_runs_answer_are_not_applied_twice() -> None:
    state = WatchState()
    state.load_runs([{"id": "r", "status": "running", "n_items": 5, "metrics": {}}], seq=10)
    state.apply(event(9, "item", "r"))
    state.apply(event(10, "item", "r"))
    state.apply(event(11, "item", "r"))
    assert state.runs["r"].n_items == 6 and state.seq == 11


def test_a_lost_run_that_resumes_is_running_again_and_a_deleted_one_disappears() -> None:
    state = WatchState()
    state.apply(event(1, "run.started", "r"))
    state.apply(event(2, "run.finished", "r", {"status": "lost"}))
    assert state.runs["r"].status == "lost"
    state.apply(event(3, "run.updated", "r", {"status": "running"}))
    assert state.runs["r"].status == "running" and state.runs["r"].finished is None
    state.apply(event(4, "run.deleted", "r"))
    assert state.runs == {}


def test_a_restored_run_is_fetched_again_not_made_up_as_running() -> None:
    state = WatchState()
    state.apply(event(1, "run.started", "r", {"name": "n"}))
    state.apply(event(2, "run.finished", "r", {"status": "lost"}))
    state.apply(event(3, "run.deleted", "r"))
    state.apply(event(4, "run.restored", "r"))
    assert state.runs == {} and state.restored == {"r"}
    # the `run` query's answer: metric summaries are dicts there
    state.load_runs([{"id": "r", "name": "n", "status": "lost", "metrics": {"loss": {"last": 0.5}}}], 0)
    assert (state.runs["r"].status, list(state.runs["r"].metrics["loss"])) == ("lost", [0.5])


def test_an_empty_state_says_there_are_no_runs_yet() -> None:
    text = screen(WatchState(pipeline="etl")).export_text()
    assert "no runs yet" in text and "pipeline etl" in text and "connecting" in text


def test_sparklines_scale_between_the_extremes_and_leave_gaps_for_nan() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([3, 3]) == "▅▅"
    assert sparkline([0, math.nan, 1]) == "▁ █"
    assert sparkline([]) == ""


def test_ages_read_in_the_largest_sensible_units() -> None:
    assert [format_age(s) for s in (5, 95, 3 * 3600 + 120, 2 * 86400 + 3600)] == [
        "5s",
        "1m35s",
        "3h02m",
        "2d01h",
    ]


def test_without_rich_watch_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tracklog.cli import main

    monkeypatch.setitem(sys.modules, "rich.live", None)  # importing it now raises ImportError
    assert main(["watch", "--url", "ws://127.0.0.1:9/ws"]) == 2
    assert "pip install 'tracklog[daemon]'" in capsys.readouterr().err
