"""A writer process for the fault tests: the thin client logging metrics at a steady pace.

Run as `python _thin_writer.py URL SPOOL_DIR RUN_ID [--adopt]`. It starts run RUN_ID and
logs `metrics` events with steps 0, 1, 2, ... until a line arrives on stdin (or stdin
closes); then it finishes the run and prints one JSON line: the number of steps logged and
the client's counters. Each step is logged once, so the test can check that every step
arrived exactly once.

The line says how to stop: `flush` waits until everything logged is acked (however often
the daemon went away meanwhile); `spool` closes at once, so what is not acked stays in the
spool. With `--adopt` the process logs nothing and only delivers a spool that another
process left in SPOOL_DIR.
"""

from __future__ import annotations

import json
import sys
import threading

import tracklog

#: Events logged between two short pauses: a steady load rather than one burst.
BURST = 20
PAUSE_SECONDS = 0.01
#: How long the writer keeps trying to get its events acked once told to stop.
DELIVER_SECONDS = 120.0


def wait_for_stop(stop: threading.Event, how: list[str]) -> None:
    """Set stop when the test writes a line to stdin (or closes it); keep what the line says."""
    how.append(sys.stdin.readline().strip() or "flush")
    stop.set()


def main() -> int:
    url, spool_dir, run_id = sys.argv[1:4]
    tl = tracklog.connect(url, spool_dir=spool_dir, backoff_max=0.25, open_timeout=5.0)
    if sys.argv[4:] == ["--adopt"]:
        delivered = tl.flush(timeout=DELIVER_SECONDS)
        print(json.dumps({"delivered": delivered, "stats": tl.stats()}), flush=True)
        tl.close()
        return 0 if delivered else 1
    stop = threading.Event()
    how: list[str] = []
    threading.Thread(target=wait_for_stop, args=(stop, how), daemon=True).start()
    run = tl.start_run(run_id=run_id, name=run_id)
    step = 0
    print(json.dumps({"started": run_id}), flush=True)
    while not stop.is_set():
        for _ in range(BURST):
            run.log_metrics({"step_value": float(step)}, step=step)
            step += 1
        stop.wait(PAUSE_SECONDS)
    run.finish()
    if how == ["spool"]:
        tl.close(timeout=0.5)
        print(json.dumps({"logged": step, "delivered": None, "stats": tl.stats()}), flush=True)
        return 0
    delivered = tl.flush(timeout=DELIVER_SECONDS)
    stats = tl.stats()
    tl.close()
    print(json.dumps({"logged": step, "delivered": delivered, "stats": stats}), flush=True)
    return 0 if delivered else 1


if __name__ == "__main__":
    sys.exit(main())
