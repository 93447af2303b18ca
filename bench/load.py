"""Load: many writer processes, many subscribers and a query load at once, on loopback.

    python bench/load.py [--seconds 60] [--writers 50] [--subscribers 50] [--rate 100] [--quick]

- writers: each a separate process with the thin client (`tracklog.connect`, a spool of
  its own), logging `metrics` events at `--rate` events/s for `--seconds`; twice a second
  it measures ack latency: the time from a log call until `flush()` says every event
  logged so far is acked. At the end it flushes and says how many steps it logged.
- subscribers: `--subscribers` subscriptions from seq 0 (MessagePack), ten per process;
  each checks that seqs arrive gapless and once, and measures commit-to-delivery latency.
- queries: `--queriers` processes asking runs (with a filter), metrics, events, search
  and stats in a loop.
- the writers, subscribers and queriers run at nice 10, the daemon at nice 0.
- every second: the daemon's RSS, open file descriptors and CPU, and the load average,
  into a CSV, plotted to a PNG when matplotlib is installed.
At the end the log is checked: every step of every writer stored exactly once, seqs
gapless, and every subscriber saw every event. `--quick` is 10 s x 10 writers x 10
subscribers. Writes `--out`.json/.csv/.png (default bench/results/load).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).parent))
from _daemon import BenchDaemon, machine

HERE = Path(__file__).resolve()
SUBSCRIPTIONS_PER_PROCESS = 10
#: Writers measure an ack latency this often (seconds).
LATENCY_EVERY = 0.5
TICK = 0.05
FINAL_TIMEOUT = 300.0


# -- worker processes ----------------------------------------------------------------------


def writer_main(url: str, spool: str, index: int, seconds: float, rate: float) -> int:
    """Log metrics at `rate` events/s for `seconds` after a `go` line; print a JSON result."""
    import tracklog

    tl = tracklog.connect(url, spool_dir=spool)
    run_id = f"load-w{index}"
    run = tl.start_run(run_id=run_id, name=run_id, pipeline="load")
    if not tl.flush(60):
        print(json.dumps({"error": "start not acked"}), flush=True)
        return 1
    print("ready", flush=True)
    sys.stdin.readline()
    step = 0
    latencies: list[float] = []
    start = time.monotonic()
    next_latency = start + LATENCY_EVERY * random.random()
    owed = 0.0
    last = start
    while (now := time.monotonic()) - start < seconds:
        owed += (now - last) * rate
        last = now
        while owed >= 1:
            run.log_metrics({"loss": 1.0 / (step + 1), "step_value": float(step)}, step=step)
            step += 1
            owed -= 1
        if now >= next_latency:
            began = time.perf_counter()
            run.log_metrics({"loss": 1.0 / (step + 1), "step_value": float(step)}, step=step)
            step += 1
            if tl.flush(60):
                latencies.append(time.perf_counter() - began)
            next_latency = time.monotonic() + LATENCY_EVERY
        time.sleep(TICK)
    run.finish()
    delivered = tl.flush(FINAL_TIMEOUT)
    done = time.monotonic()
    stats = tl.stats()
    tl.close()
    result = {"run": run_id, "logged": step, "delivered": delivered, "latencies": latencies}
    result |= {"stats": stats, "seconds": done - start}
    print(json.dumps(result), flush=True)
    return 0


class _StoredEvent(msgspec.Struct):
    seq: int
    recorded: float


class _Message(msgspec.Struct):
    op: str
    events: list[_StoredEvent] | None = None


async def _subscription(url: str, state: dict[str, Any], ready: asyncio.Event, stop: asyncio.Event) -> None:
    from websockets.asyncio.client import connect

    decode = msgspec.msgpack.Decoder(_Message).decode
    # No keepalive: a pong comes behind every frame already on its way, and ten
    # subscriptions in a process at nice 10 on a saturated machine can be more than
    # websockets' 20 s behind; the check is that they get everything, however late.
    async with connect(url, max_size=None, compression=None, ping_interval=None) as ws:
        await ws.send(msgspec.msgpack.encode({"op": "hello", "protocol": 1, "client": "load-sub"}))
        await ws.recv()
        await ws.send(msgspec.msgpack.encode({"op": "subscribe", "ref": 1, "from_seq": 0}))
        ready.set()
        while not stop.is_set() or state["last"] < state["until"]:
            try:
                frame = await asyncio.wait_for(ws.recv(), 1.0)
            except TimeoutError:
                continue
            message = decode(frame)
            if not message.events:
                continue
            now = time.time()
            for event in message.events:
                if event.seq != state["last"] + 1:
                    state["errors"].append(f"expected seq {state['last'] + 1}, got {event.seq}")
                state["last"] = event.seq
                state["received"] += 1
                if random.random() < 0.01:
                    state["latencies"].append(now - event.recorded)


async def _subscribers(url: str, count: int) -> None:
    states = [
        {"last": 0, "received": 0, "errors": [], "latencies": [], "until": math.inf} for _ in range(count)
    ]
    readies = [asyncio.Event() for _ in range(count)]
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(_subscription(url, s, r, stop)) for s, r in zip(states, readies, strict=True)
    ]
    await asyncio.gather(*(r.wait() for r in readies))
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    head = int(line.split()[1])
    for state in states:
        state["until"] = head
    stop.set()
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), FINAL_TIMEOUT)
    except TimeoutError:
        for state in states:
            if state["last"] < head:
                state["errors"].append(f"stopped at seq {state['last']} of {head}")
    print(json.dumps(states), flush=True)


def subscriber_main(url: str, count: int) -> int:
    asyncio.run(_subscribers(url, count))
    return 0


def querier_main(url: str) -> int:
    """Ask a mix of questions in a loop until a line arrives on stdin; print latencies and errors."""
    from websockets.sync.client import connect

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    latencies: dict[str, list[float]] = {}
    errors: list[Any] = []
    questions: list[dict[str, Any]] = [
        {"q": "runs", "filter": "pipeline = 'load' and metrics.loss < 0.5", "limit": 50},
        {"q": "metrics", "run": "load-w0", "max_points": 200},
        {"q": "events", "from_seq": 0, "limit": 100},
        {"q": "search", "text": "load"},
        {"q": "stats"},
    ]
    with connect(url, max_size=None) as ws:
        ws.send(json.dumps({"op": "hello", "protocol": 1, "client": "load-query"}))
        ws.recv()
        print("ready", flush=True)
        ref = 0
        while not stop.is_set():
            ref += 1
            question = questions[ref % len(questions)]
            began = time.perf_counter()
            ws.send(json.dumps({"op": "query", "ref": ref, **question}))
            reply = json.loads(ws.recv(60))
            latencies.setdefault(question["q"], []).append(time.perf_counter() - began)
            if reply.get("op") != "result":
                errors.append(reply)
            stop.wait(0.02)
    print(json.dumps({"latencies": latencies, "errors": errors[:20], "error_count": len(errors)}), flush=True)
    return 0


# -- the run -------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    rss_mib: float
    fds: int
    cpu_percent: float
    load1: float


@dataclass
class Sampler:
    """Every second: the daemon's RSS, open fds and CPU, and the machine's load average."""

    pid: int
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    on_sample: Callable[[Sample], None] | None = None

    def __post_init__(self) -> None:
        self.began = time.monotonic()

    def now(self) -> float:
        """Seconds since sampling began: the clock of the samples' `t`."""
        return time.monotonic() - self.began

    def run(self) -> None:
        began = self.began
        last_cpu, last_t = self._cpu_seconds(), began
        while not self.stop.wait(1.0):
            now = time.monotonic()
            cpu = self._cpu_seconds()
            sample = Sample(
                t=round(now - began, 2),
                rss_mib=self._rss_kib() / 1024,
                fds=len(os.listdir(f"/proc/{self.pid}/fd")),
                cpu_percent=100 * (cpu - last_cpu) / max(now - last_t, 1e-9),
                load1=os.getloadavg()[0],
            )
            last_cpu, last_t = cpu, now
            self.samples.append(sample)
            if self.on_sample is not None:
                self.on_sample(sample)

    def _rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def _cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: The load's own processes run at this nice value, so that on a small machine the
#: dozens of them do not starve the daemon they are there to measure (CFS shares the CPU
#: per thread: fifty writers at nice 0 leave one daemon a few percent).
WORKER_NICE = 10


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HERE), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.nice(WORKER_NICE),
    )


def _expect_ready(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"a worker did not start: {line!r}")


def _finish(proc: subprocess.Popen[str], line: str = "", working: float = 0.0) -> Any:
    """A worker's JSON result, once it ends: after `working` seconds of work still to do
    and its final flush or drain (a writer's timeout starts at its `go`, not at its end)."""
    out, _ = proc.communicate(line, timeout=working + FINAL_TIMEOUT + 120)
    return json.loads(out.strip().splitlines()[-1])


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def _head(url: str) -> int:
    from websockets.sync.client import connect

    with connect(url) as ws:
        ws.send(json.dumps({"op": "hello", "protocol": 1, "client": "load"}))
        return int(json.loads(ws.recv(30))["head"])


def _check_log(db: Path, logged: dict[str, int]) -> dict[str, Any]:
    """Every writer's steps stored exactly once; seqs gapless."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        count, low, high = conn.execute("SELECT count(*), min(seq), max(seq) FROM events").fetchone()
        problems = [] if (low, high) == (1, count) else [f"seqs not gapless: {count} events, {low}..{high}"]
        lost = doubled = 0
        for run_id, steps_logged in logged.items():
            steps = [
                msgspec.msgpack.decode(blob)["step"]
                for (blob,) in conn.execute(
                    "SELECT data FROM events WHERE run = ? AND type = 'metrics'", (run_id,)
                )
            ]
            lost += len(set(range(steps_logged)) - set(steps))
            doubled += len(steps) - len(set(steps))
        return {"events": count, "lost": lost, "doubled": doubled, "problems": problems}
    finally:
        conn.close()


def run_load(
    seconds: float,
    writers: int,
    subscribers: int,
    rate: float,
    queriers: int = 1,
    on_sample: Callable[[Sample], None] | None = None,
    on_daemon: Callable[[int], None] | None = None,
) -> tuple[dict[str, Any], list[Sample]]:
    """Run one load against a fresh daemon; the summary and the per-second samples.

    `on_daemon` is called with the daemon's PID once it listens (to signal it).
    """
    with tempfile.TemporaryDirectory(prefix="tracklog-load-") as tmp:
        db = Path(tmp) / "tracklog.db"
        with BenchDaemon(db) as daemon:
            assert daemon.proc is not None
            if on_daemon is not None:
                on_daemon(daemon.proc.pid)
            sampler = Sampler(daemon.proc.pid, on_sample=on_sample)
            sampling = threading.Thread(target=sampler.run, daemon=True)
            sampling.start()
            url = daemon.url
            sub_procs = [
                _spawn(
                    "--role", "subscriber", "--url", url, "--count", str(min(SUBSCRIPTIONS_PER_PROCESS, left))
                )
                for left in range(subscribers, 0, -SUBSCRIPTIONS_PER_PROCESS)
            ]
            _expect_ready(sub_procs)
            writer_procs = [
                _spawn(
                    *("--role", "writer", "--url", url, "--spool", f"{tmp}/spool-{i}", "--index", str(i)),
                    *("--seconds", str(seconds), "--rate", str(rate)),
                )
                for i in range(writers)
            ]
            _expect_ready(writer_procs)
            query_procs = [_spawn("--role", "querier", "--url", url) for _ in range(queriers)]
            _expect_ready(query_procs)
            head_before = _head(url)
            began = time.monotonic()
            for proc in writer_procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            window = [sampler.now(), 0.0]
            writer_results = [_finish(proc, working=seconds) for proc in writer_procs]
            elapsed = time.monotonic() - began
            window[1] = sampler.now()
            query_results = [_finish(proc, "stop\n") for proc in query_procs]
            head = _head(url)
            # Every subscriber process is told the head before any is waited for: each
            # has FINAL_TIMEOUT to reach it from then, all at once, not one after another.
            for proc in sub_procs:
                assert proc.stdin is not None
                proc.stdin.write(f"stop {head}\n")
                proc.stdin.flush()
            sub_results = [state for proc in sub_procs for state in _finish(proc)]
            sampler.stop.set()
            sampling.join()
        logged = {r["run"]: r["logged"] for r in writer_results}
        check = _check_log(db, logged)

    ack = [x for r in writer_results for x in r["latencies"]]
    delivery = [x for s in sub_results for x in s["latencies"]]
    query_latencies = [x for r in query_results for xs in r["latencies"].values() for x in xs]
    writer_errors = sum(
        r["stats"]["rejected"] + r["stats"]["dropped"] + (0 if r["delivered"] else 1) for r in writer_results
    )
    sub_errors = sum(len(s["errors"]) for s in sub_results) + sum(1 for s in sub_results if s["last"] != head)
    query_errors = sum(r["error_count"] for r in query_results)
    samples = sampler.samples
    summary = {
        "machine": machine(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "seconds": seconds,
        "writers": writers,
        "subscribers": subscribers,
        "queriers": queriers,
        "rate_per_writer": rate,
        "events_logged": sum(logged.values()),
        "events_committed": head - head_before,
        "throughput_events_per_s": round((head - head_before) / elapsed, 1),
        "wall_seconds": round(elapsed, 2),
        #: When the writers wrote (and flushed), on the samples' clock; draining comes after.
        "load_window_s": [round(window[0], 1), round(window[1], 1)],
        "ack_latency_ms": {"p50": _ms(_percentile(ack, 50)), "p99": _ms(_percentile(ack, 99)), "n": len(ack)},
        "delivery_latency_ms": {"p50": _ms(_percentile(delivery, 50)), "p99": _ms(_percentile(delivery, 99))},
        "deliveries": sum(s["received"] for s in sub_results),
        "queries": len(query_latencies),
        "query_latency_ms": {
            "p50": _ms(_percentile(query_latencies, 50)),
            "p99": _ms(_percentile(query_latencies, 99)),
        },
        "errors": {"writers": writer_errors, "subscribers": sub_errors, "queries": query_errors},
        "error_examples": [e for r in query_results for e in r["errors"]][:5]
        + [e for s in sub_results for e in s["errors"]][:5],
        "loss": {"lost": check["lost"], "doubled": check["doubled"], "problems": check["problems"]},
        "rss_mib": _spread([s.rss_mib for s in samples]),
        "open_fds": _spread([float(s.fds) for s in samples]),
        "daemon_cpu_percent_mean": round(sum(s.cpu_percent for s in samples) / max(len(samples), 1), 1),
        "load_average_1m": _spread([s.load1 for s in samples]),
    }
    summary["ok"] = not any(summary["errors"].values()) and not check["lost"] and not check["doubled"]
    summary["ok"] = summary["ok"] and not check["problems"]
    return summary, samples


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "first": round(values[0], 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
        "last": round(values[-1], 1),
        "mean": round(sum(values) / len(values), 1),
    }


def read_samples(path: Path) -> list[Sample]:
    """Samples back from a CSV that `write_samples` wrote (to plot them again)."""
    with open(path, newline="") as f:
        return [
            Sample(
                float(r["t"]), float(r["rss_mib"]), int(r["fds"]), float(r["cpu_percent"]), float(r["load1"])
            )
            for r in csv.DictReader(f)
        ]


def write_samples(samples: list[Sample], out: Path, title: str) -> str:
    """The samples as a CSV, and as a PNG when matplotlib is installed; says which."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t", "rss_mib", "fds", "cpu_percent", "load1"])
        for s in samples:
            writer.writerow([s.t, round(s.rss_mib, 2), s.fds, round(s.cpu_percent, 1), s.load1])
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"wrote {out.with_suffix('.csv')} (matplotlib is not installed: no PNG)"
    t = [s.t for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    axes[0].plot(t, [s.rss_mib for s in samples])
    axes[0].set_ylabel("daemon RSS (MiB)")
    axes[1].plot(t, [s.fds for s in samples])
    axes[1].set_ylabel("daemon open fds")
    axes[2].plot(t, [s.cpu_percent for s in samples], color="tab:blue")
    axes[2].set_ylabel("daemon CPU %", color="tab:blue")
    load_axis = axes[2].twinx()
    load_axis.plot(t, [s.load1 for s in samples], color="tab:orange")
    load_axis.set_ylabel("load average (1 min)", color="tab:orange")
    axes[2].set_xlabel("seconds")
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=90)
    plt.close(fig)
    return f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.png')}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--writers", type=int, default=50)
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--queriers", type=int, default=1)
    parser.add_argument("--rate", type=float, default=100.0, help="events/s each writer logs")
    parser.add_argument("--quick", action="store_true", help="10 s, 10 writers, 10 subscribers")
    parser.add_argument("--out", type=Path, default=HERE.parent / "results" / "load")
    # Roles of the worker processes this script starts.
    parser.add_argument("--role", choices=["writer", "subscriber", "querier"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--spool", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "writer":
        return writer_main(args.url, args.spool, args.index, args.seconds, args.rate)
    if args.role == "subscriber":
        return subscriber_main(args.url, args.count)
    if args.role == "querier":
        return querier_main(args.url)
    if args.quick:
        args.seconds, args.writers, args.subscribers = 10.0, 10, 10
    summary, samples = run_load(args.seconds, args.writers, args.subscribers, args.rate, args.queriers)
    title = f"{args.writers} writers x {args.rate:g} ev/s, {args.subscribers} subscribers, {args.seconds:g} s"
    summary["files"] = write_samples(samples, args.out, title)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
