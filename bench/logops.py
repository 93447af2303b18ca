"""The log operations on a log of N events: `log export`, `log import`, `migrate`, `purge`.

    python bench/logops.py                     # 250,000 and 1,000,000 events
    python bench/logops.py --events 100000     # one size only

Each command runs as `python -m tracklog ...` in a subprocess, timed from outside, with
its peak resident memory from wait4(2) (the log is built in a process of its own, so the
bench's own size is not counted): the same peak at 4x the events is what "streamed,
constant memory" means. The log: runs of 1,000 events each, 9 in 10 of them metrics (two
values, a step), the rest items with a small text; every event with an id. The purge
removes a quarter of the runs (deleted first).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog
from tracklog.protocol import events as ev

RUN_EVENTS = 1000


def build(path: Path, events: int) -> None:
    log = SqliteEventLog(path)
    log.catch_up()
    for r in range(events // RUN_EVENTS):
        run = f"run-{r:06d}"
        batch: list[ev.Event] = [ev.RunStarted(id=f"{run}-s", run=run, data=ev.RunStartedData(name=run))]
        for i in range(RUN_EVENTS - 1):
            if i % 10 == 9:
                batch.append(
                    ev.Item(
                        id=f"{run}-{i}", run=run, data=ev.ItemData(item=str(i), data={"text": f"item {i} ✓"})
                    )
                )
            else:
                values = {"loss": 1.0 / (i + 1), "acc": i / RUN_EVENTS}
                batch.append(ev.Metrics(id=f"{run}-{i}", run=run, data=ev.MetricsData(values=values, step=i)))
        log.append_events(batch)
    log.append_events([ev.RunDeleted(run=f"run-{r:06d}") for r in range(0, events // RUN_EVENTS, 4)])
    log.close()


def timed(*args: str, stdin: Path | None = None, stdout: Path | None = None) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of `python -m tracklog ARGS`."""
    started = time.perf_counter()
    with open(stdin or os.devnull, "rb") as fin, open(stdout or os.devnull, "wb") as fout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tracklog", *args], stdin=fin, stdout=fout, stderr=subprocess.PIPE
        )
        assert proc.stderr is not None
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"tracklog {' '.join(args)} failed: {err.decode()}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


COMMANDS = ("export", "import", "reimport", "migrate", "purge")


def bench(events: int, workdir: Path, only: tuple[str, ...] = COMMANDS) -> None:
    db = workdir / f"log-{events}.db"
    started = time.perf_counter()
    # In a process of its own: a child forked from a parent that had built the log would
    # count the parent's pages in its own peak.
    subprocess.run([sys.executable, __file__, "--build", str(db), str(events)], check=True)
    built = time.perf_counter() - started
    size = db.stat().st_size / 1e6
    dump = workdir / f"log-{events}.jsonl"
    imported = str(workdir / f"imported-{events}.db")
    runs = {
        "export": ("log export", lambda: timed("log", "export", str(db), stdout=dump)),
        "import": ("log import (empty target)", lambda: timed("log", "import", imported, stdin=dump)),
        "reimport": ("log import (again: all checked)", lambda: timed("log", "import", imported, stdin=dump)),
        "migrate": (
            "migrate (incl. verify)",
            lambda: timed("migrate", str(db), str(workdir / f"migrated-{events}.db")),
        ),
        "purge": ("purge 1/4 of the runs", lambda: timed("purge", "--older-than", "0", "--db", str(db))),
    }
    print(f"{events:,} events ({size:.0f} MB database, built in {built:.0f} s)", flush=True)
    for key, (name, run) in runs.items():
        if key not in only and not (key == "export" and {"import", "reimport"} & set(only)):
            continue
        if key == "reimport" and "import" not in only:
            run = runs["import"][1]  # the first import, not timed, so that this one checks
            run()
        seconds, peak = run()
        print(
            f"  {name:34s} {seconds:7.1f} s  {events / seconds:9,.0f} events/s  peak RSS {peak:5.0f} MB",
            flush=True,
        )
    for path in workdir.iterdir():
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--events", type=int, action="append", help="log sizes (default 250,000 and 1,000,000)"
    )
    parser.add_argument(
        "--only", default=",".join(COMMANDS), help=f"commands to time, of {','.join(COMMANDS)}"
    )
    parser.add_argument("--build", nargs=2, metavar=("DB", "EVENTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        build(Path(args.build[0]), int(args.build[1]))
        return
    only = tuple(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="tracklog-logops-") as tmp:
        for events in args.events or [250_000, 1_000_000]:
            bench(events, Path(tmp), only)


if __name__ == "__main__":
    main()
