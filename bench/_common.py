"""What the benchmarks share: building a database through the daemon's own append path,
serving it, talking to the daemon, timing loops, and random hashes and vectors.

Scripts put bench/ on `sys.path` and import from here (BenchDaemon and `machine` stay in
_daemon.py, which the load and soak scripts use alone). Nothing here imports bench/
siblings at module level, so tests load this file by its path (tests/daemon/test_dedup.py
takes its vectors from here).
"""

from __future__ import annotations

import contextlib
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from tracklog.protocol.events import (
    Item,
    ItemData,
    Metrics,
    MetricsData,
    RunFinished,
    RunFinishedData,
    RunStarted,
    RunStartedData,
)

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

    from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog

#: Events a LogBuilder appends in one group commit.
GROUP_EVENTS = 10_000


# -- building a database -----------------------------------------------------------------


class LogBuilder:
    """Writes events into a new or existing database through SqliteEventLog (the writer's own
    append path and projections, without the socket), in group commits of `group` events.

        with LogBuilder(path) as log:
            log.add(RunStarted(...))
        print(log.seconds)
    """

    def __init__(self, path: Path, group: int = GROUP_EVENTS) -> None:
        self.path = path
        self.group = group
        self.events = 0
        self.seconds = 0.0
        self._batch: list[Any] = []
        self._store: SqliteEventLog | None = None
        self._started = 0.0

    def __enter__(self) -> LogBuilder:
        from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog

        self._store = SqliteEventLog(self.path)
        self._store.catch_up()
        self._started = time.perf_counter()
        return self

    def add(self, event: Any) -> None:
        self._batch.append(event)
        if len(self._batch) >= self.group:
            self.flush()

    def flush(self) -> None:
        """Commit what is waiting as one group."""
        from tracklog.protocol.messages import Append

        if self._batch and self._store is not None:
            self._store.append_group([Append(events=self._batch)])
            self.events += len(self._batch)
            self._batch = []

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.flush()
        self.seconds = time.perf_counter() - self._started
        if self._store is not None:
            self._store.close()


def add_finished_run(
    add: Callable[[Any], None], rng: random.Random, run: str, ts: float, steps: int, words: Sequence[str]
) -> None:
    """The events of one finished run of a sweep, given to `add`: a start with a name of three
    of `words`, a config, a tag and notes; `steps` steps of loss, acc and lr; two items with
    a text of 12 words; a finish, completed or failed. The same `rng` state gives the same run."""
    name = rng.sample(list(words), 3)
    add(
        RunStarted(
            run=run,
            ts=ts,
            data=RunStartedData(
                name=" ".join(name),
                pipeline=rng.choice(["train", "eval", "sweep"]),
                config={"lr": rng.choice([0.1, 0.01, 0.001]), "batch": rng.choice([16, 32, 64])},
                tags=[rng.choice(["baseline", "tuned", "ablation"])],
                notes=f"notes about {name[0]}",
            ),
        )
    )
    base = rng.random()
    for step in range(steps):
        add(
            Metrics(
                run=run,
                ts=ts + step,
                data=MetricsData(
                    values={
                        "loss": base / (1 + step) + rng.random() * 0.05,
                        "acc": 1 - base / (1 + step),
                        "lr": 0.1 / (1 + step),
                    },
                    step=step,
                    epoch=step // 100,
                ),
            )
        )
    for i in range(2):
        text = " ".join(rng.choice(words) for _ in range(12))
        add(
            Item(
                run=run,
                ts=ts,
                data=ItemData(
                    item=f"{run}-{i}", kind="translation_result", stage="translate", data={"text": text}
                ),
            )
        )
    add(
        RunFinished(
            run=run,
            ts=ts + steps,
            data=RunFinishedData(status=rng.choice(["completed", "completed", "failed"])),
        )
    )


@contextlib.contextmanager
def served_database(
    db: Path | None, build: Callable[[Path], None], name: str = "bench.db", *daemon_args: str
) -> Iterator[Any]:
    """A daemon (a `BenchDaemon`) serving `db`, built by `build` first when it does not exist;
    with no `db`, a database built in a temporary directory that goes away afterwards."""
    from _daemon import BenchDaemon

    with tempfile.TemporaryDirectory(prefix="tracklog-bench-") as tmp:
        path = db or Path(tmp) / name
        if not path.exists():
            build(path)
        with BenchDaemon(path, *daemon_args) as daemon:
            yield daemon


# -- talking to the daemon -----------------------------------------------------------------


class Conn:
    """A MessagePack WebSocket connection that has said hello; `query` waits for its reply."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ref = 0
        self.decode = msgspec.msgpack.Decoder().decode

    @classmethod
    async def open(cls, url: str, client: str = "bench") -> Conn:
        from websockets.asyncio.client import connect

        ws = await connect(url, max_size=None, compression=None)
        await ws.send(msgspec.msgpack.encode({"op": "hello", "protocol": 1, "client": client}))
        await ws.recv()
        return cls(ws)

    async def query(self, **q: Any) -> Any:
        """The reply to query `q` (messages for other refs, such as events, are skipped)."""
        self.ref += 1
        await self.ws.send(msgspec.msgpack.encode({"op": "query", "ref": self.ref, **q}))
        while True:
            reply = self.decode(await self.ws.recv())
            if reply.get("ref") == self.ref:
                if reply["op"] == "error":
                    raise RuntimeError(reply)
                return reply

    async def close(self) -> None:
        await self.ws.close()


# -- timing ---------------------------------------------------------------------------------


def time_calls(call: Callable[[], object], repeat: int) -> list[float]:
    """Seconds each of `repeat` calls of `call` took."""
    seconds = []
    for _ in range(repeat):
        began = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - began)
    return seconds


async def time_awaits(call: Callable[[], Awaitable[object]], repeat: int) -> list[float]:
    """Seconds each of `repeat` awaits of `call()` took."""
    seconds = []
    for _ in range(repeat):
        began = time.perf_counter()
        await call()
        seconds.append(time.perf_counter() - began)
    return seconds


def percentile(values: Sequence[float], share: float) -> float:
    """The value below which `share` (0 to 1) of `values` lie: the nearest rank, no
    interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def median_ms(seconds: Sequence[float]) -> float:
    return statistics.median(seconds) * 1000


# -- random hashes and vectors ------------------------------------------------------------------


def random_simhashes(rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` random 64-bit values, as SimHashes are stored (uint64), every bit equally likely."""
    return rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)


def flip_bits(value: int, bits: Sequence[int]) -> int:
    """`value` with each of `bits` flipped: a hash at Hamming distance len(set(bits)) or less."""
    for bit in bits:
        value ^= 1 << int(bit)
    return value


def unit_vectors(rng: np.random.Generator, n: int, dims: int) -> np.ndarray:
    """`n` random float32 vectors of length 1 in `dims` dimensions, uniform on the sphere."""
    vectors = rng.normal(size=(n, dims)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors
