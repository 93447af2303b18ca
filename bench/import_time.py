"""How long `import tracklog` takes and what it loads, each sample in a fresh interpreter.

    .venv/bin/python bench/import_time.py [--runs 30]

For each statement: the minimum and median wall time over the runs (the minimum is the
least disturbed by other load on the machine), and how many `tracklog` and `websockets`
modules it leaves in `sys.modules`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

STATEMENTS = (
    "import tracklog.protocol",
    "import tracklog",
    "import tracklog; tracklog.connect",
    "from tracklog import Tracker",
)

#: Runs in the child: times the statement and lists what it loaded, as one JSON line.
_PROBE = """
import json, sys, time
start = time.perf_counter()
exec({statement!r})
elapsed = time.perf_counter() - start
loaded = [m for m in sys.modules if m == "tracklog" or m.startswith(("tracklog.", "websockets"))]
print(json.dumps({{"seconds": elapsed, "modules": sorted(loaded)}}))
"""


def sample(statement: str) -> tuple[float, list[str]]:
    """One fresh interpreter: the statement's wall time and the modules it loaded."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(statement=statement)], check=True, capture_output=True, text=True
    ).stdout
    result = json.loads(out)
    return float(result["seconds"]), list(result["modules"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--modules", action="store_true", help="also print the modules each statement loads")
    args = parser.parse_args()
    print(f"{'statement':<36} {'min ms':>8} {'median ms':>10} {'tracklog':>9} {'websockets':>11}")
    for statement in STATEMENTS:
        times: list[float] = []
        modules: list[str] = []
        for _ in range(args.runs):
            seconds, modules = sample(statement)
            times.append(seconds)
        ours = sum(1 for m in modules if m.startswith("tracklog"))
        theirs = len(modules) - ours
        print(
            f"{statement:<36} {min(times) * 1e3:>8.1f} {statistics.median(times) * 1e3:>10.1f}"
            f" {ours:>9} {theirs:>11}"
        )
        if args.modules:
            print("    " + " ".join(modules))


if __name__ == "__main__":
    main()
