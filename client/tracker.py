"""`Tracker` and `Run`: what a pipeline calls. Every `log_*` only queues.

A call checks the types of its arguments (a programming error raises `TypeError` at
once, with a message naming the argument), stamps the event with the time and a UUIDv7
id, appends it to the sender's queue and returns. It does no I/O and takes no lock; it
raises nothing because of the network. Metric calls, the hot path, queue a plain tuple;
the other events are encoded at the call, which snapshots their data.
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

from tracklog.protocol import errors as codes
from tracklog.protocol.events import (
    Artifact,
    ArtifactData,
    Item,
    ItemData,
    RunFinished,
    RunFinishedData,
    RunStarted,
    RunStartedData,
    RunUpdated,
    RunUpdatedData,
)
from tracklog.protocol.limits import DEFAULT_HOST, DEFAULT_PORT
from tracklog.protocol.version import __version__

from . import dedup, wire
from .cache import Cache
from .ids import uuid7
from .queries import MetricHistories, QueryClient, Rows
from .requests import Requests
from .sender import RejectedEvent, Sender, SenderOptions
from .spool import default_spool_root, endpoint_dir
from .subscribe import Subscription, SubscriptionState

DEFAULT_URL: Final = f"ws://{DEFAULT_HOST}:{DEFAULT_PORT}/ws"
FinishStatus = Literal["completed", "failed", "killed"]
ItemStatus = Literal["ok", "failed", "skipped", "duplicate"]

_time = time.time
_coerce_number = wire.coerce_number
_coerce_int = wire.coerce_int
_raw = wire.raw_event

#: Trackers still open (held strongly: an unreferenced tracker's sender still has work);
#: closed at interpreter exit so what is queued is sent or spooled.
_open_trackers: set[Tracker] = set()
#: How long the exit hook waits for acks before spooling the rest.
EXIT_TIMEOUT: Final = 5.0


class Run:
    """A run to log to. Made by `Tracker.start_run` (a new run) or `Tracker.run` (attach).

    As a context manager, a run it started is finished on leaving the block: `completed`,
    or `failed` with the exception's text (`killed` for KeyboardInterrupt). An attached
    run is left running: another process owns its end.
    """

    __slots__ = ("__weakref__", "_append", "_finished", "_owned", "_sender", "_tracker", "id")

    def __init__(self, tracker: Tracker, run_id: str, owned: bool) -> None:
        self.id = run_id
        self._tracker = tracker
        self._sender = tracker._sender
        self._append = tracker._sender.queue.append
        self._owned = owned
        self._finished = False

    def __repr__(self) -> str:
        return f"<tracklog.Run {self.id!r}{' finished' if self._finished else ''}>"

    # -- the hot path -----------------------------------------------------------------

    def log_metric(self, name: str, value: float, step: int | None = None, epoch: int | None = None) -> None:
        """Queue one metric value. Raises TypeError when value is not a number (bool included)."""
        cls = value.__class__
        if cls is not float and cls is not int:
            value = _coerce_number(name, value)
        if name.__class__ is not str:
            wire.check_name("metric name", name)
        if step is not None and step.__class__ is not int:
            step = _coerce_int("step", step)
        if epoch is not None and epoch.__class__ is not int:
            epoch = _coerce_int("epoch", epoch)
        ts = _time()
        # Name and value go in the tuple as they are: a tuple of atomic values is soon
        # untracked by the garbage collector, a dict is not, and a queue of millions of
        # tracked objects makes every collection slow.
        self._append((uuid7(ts), self.id, ts, name, value, step, epoch))
        if self._sender.sleeping:
            self._sender.wake()

    def log_metrics(
        self, values: Mapping[str, float], step: int | None = None, epoch: int | None = None
    ) -> None:
        """Queue several metric values at one step, as one event."""
        checked = {}
        for name, value in values.items():
            cls = value.__class__
            if cls is not float and cls is not int:
                value = _coerce_number(name, value)
            if name.__class__ is not str:
                wire.check_name("metric name", name)
            checked[name] = value
        if not checked:
            raise ValueError("log_metrics: values is empty")
        if step is not None and step.__class__ is not int:
            step = _coerce_int("step", step)
        if epoch is not None and epoch.__class__ is not int:
            epoch = _coerce_int("epoch", epoch)
        ts = _time()
        self._append((uuid7(ts), self.id, ts, checked, step, epoch))
        if self._sender.sleeping:
            self._sender.wake()

    # -- other events -----------------------------------------------------------------

    def log_item(
        self,
        item: str | None = None,
        *,
        kind: str | None = None,
        stage: str | None = None,
        iteration: int | None = None,
        status: ItemStatus = "ok",
        data: Any = None,
        path: str | os.PathLike[str] | None = None,
        model: str | None = None,
        backend: str | None = None,
        duration: float | None = None,
        error: str | None = None,
    ) -> None:
        """Queue one processed item (a translation, an image, a record) with how it went."""
        if iteration is not None:
            iteration = _coerce_int("iteration", iteration)
        if duration is not None:
            duration = wire.check_float("duration", duration)
        body = ItemData(
            item=item,
            kind=kind,
            stage=stage,
            iteration=iteration,
            status=status,
            data=data,
            path=os.fspath(path) if path is not None else None,
            model=model,
            backend=backend,
            duration=duration,
            error=error,
        )
        ts = _time()
        self._put_checked(Item(id=uuid7(ts), run=self.id, ts=ts, data=body), data, "item.data")

    def log_artifact(
        self,
        kind: str,
        path: str | os.PathLike[str],
        *,
        size: int | None = None,
        digest: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        upload: bool = False,
    ) -> None:
        """Queue a reference to an artifact (a checkpoint, a plot): its kind and path or URI.

        With `upload=True`, `path` is a local file whose bytes are first stored in the
        daemon's artifact store (an HTTP PUT streamed from the file, checked against its
        SHA-256, stored once whatever how often it is uploaded): this call waits for that,
        and raises ArtifactTransferError when the daemon refuses it or cannot be reached.
        The event then names the blob (`blob`, `digest`, `size`), so
        `Tracker.download_artifact` and the console can fetch the file back.
        """
        wire.check_name("artifact kind", kind)
        if size is not None:
            size = _coerce_int("size", size)
        blob = None
        if upload:
            from .blobs import http_base, upload_file

            blob, size = upload_file(http_base(self._tracker.url), self._sender.token, path)
            digest = blob
        body = ArtifactData(
            kind=kind,
            path=os.fspath(path),
            size=size,
            digest=digest,
            metadata=dict(metadata) if metadata is not None else None,
            blob=blob,
        )
        ts = _time()
        self._put_checked(
            Artifact(id=uuid7(ts), run=self.id, ts=ts, data=body), metadata, "artifact.metadata"
        )

    def update(
        self,
        *,
        name: str | None = None,
        notes: str | None = None,
        add_tags: Iterable[str] | None = None,
        remove_tags: Iterable[str] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        """Change the run's name or notes, add or remove tags, merge config keys."""
        body = RunUpdatedData(
            name=name,
            notes=notes,
            add_tags=_names("add_tags", add_tags),
            remove_tags=_names("remove_tags", remove_tags),
            config=dict(config) if config is not None else None,
        )
        ts = _time()
        self._put_checked(
            RunUpdated(id=uuid7(ts), run=self.id, ts=ts, data=body), config, "run.updated.config"
        )

    def finish(self, status: FinishStatus = "completed", error: str | None = None) -> None:
        """Mark the run finished. A second call does nothing."""
        if self._finished:
            return
        if status not in ("completed", "failed", "killed"):
            raise ValueError(f"status: expected 'completed', 'failed' or 'killed', got {status!r}")
        self._finished = True
        ts = _time()
        body = RunFinishedData(status=status, error=error)
        self._put(_raw(RunFinished(id=uuid7(ts), run=self.id, ts=ts, data=body)))
        self._tracker._forget(self)

    @property
    def finished(self) -> bool:
        return self._finished

    # -- near-duplicate checks (these wait for the daemon: see client/dedup.py) -------

    def check_hash(
        self,
        text_or_value: Any,
        *,
        namespace: str,
        record: bool = True,
        item: str | None = None,
        timeout: float | None = None,
    ) -> dedup.CheckResult:
        """Exact check: a string by its UTF-8 bytes, any other value by its canonical JSON."""
        return dedup.check(
            self,
            "hash",
            text_or_value,
            namespace=namespace,
            threshold=None,
            space=None,
            record=record,
            item=item,
            timeout=timeout,
        )

    def check_simhash(
        self,
        text: str,
        *,
        namespace: str,
        threshold: int = 3,
        record: bool = True,
        item: str | None = None,
        timeout: float | None = None,
    ) -> dedup.CheckResult:
        """Near-duplicate text: a duplicate within `threshold` bits (0 to 16) of SimHash."""
        return dedup.check(
            self,
            "simhash",
            text,
            namespace=namespace,
            threshold=threshold,
            space=None,
            record=record,
            item=item,
            timeout=timeout,
        )

    def check_embedding(
        self,
        vector: Any,
        *,
        space: str,
        namespace: str,
        threshold: float = 0.05,
        record: bool = True,
        item: str | None = None,
        timeout: float | None = None,
    ) -> dedup.CheckResult:
        """Near-duplicate embedding: a duplicate below `threshold` cosine distance in its space."""
        return dedup.check(
            self,
            "embedding",
            vector,
            namespace=namespace,
            threshold=threshold,
            space=space,
            record=record,
            item=item,
            timeout=timeout,
        )

    def check_many(
        self,
        inputs: Sequence[Any],
        *,
        kind: dedup.Kind,
        namespace: str,
        threshold: float | None = None,
        space: str | None = None,
        record: bool = True,
        items: Sequence[str | None] | None = None,
        timeout: float | None = None,
    ) -> list[dedup.CheckResult]:
        """Check many inputs in few messages; a later input sees what an earlier one recorded."""
        return dedup.check_many(
            self,
            kind,
            inputs,
            namespace=namespace,
            threshold=threshold,
            space=space,
            record=record,
            items=items,
            timeout=timeout,
        )

    def filter_duplicates(self, records: Iterable[Any], *, namespace: str, **options: Any) -> Iterator[Any]:
        """Yield the new records; log each duplicate as an item with status `duplicate`.

        Options: key, kind, threshold, space, item, stage, batch_size, on_unavailable,
        timeout (see `tracklog.dedup.filter_duplicates`).
        """
        return dedup.filter_duplicates(self, records, namespace=namespace, **options)

    def _put(self, event: Any) -> None:
        self._append(event)
        if self._sender.sleeping:
            self._sender.wake()

    def _put_checked(self, event: Any, free_form: Any, field: str) -> None:
        """Encode and queue an event, unless its free-form part has a key the daemon would
        refuse: then it is reported in `Tracker.errors` (the pipeline goes on) and not sent."""
        if free_form is not None:
            problem = wire.non_string_key(free_form, field)
            if problem is not None:
                self._sender.reject(event, codes.INVALID_EVENT, problem)
                return
        self._put(_raw(event))

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._owned:
            return
        if exc is None:
            self.finish("completed")
        elif isinstance(exc, KeyboardInterrupt):
            self.finish("killed", "KeyboardInterrupt")
        else:
            self.finish("failed", _error_text(exc))


class Tracker:
    """A connection to the daemon, as far as the pipeline can tell: a queue that never blocks.

    Made by `tracklog.connect()`. Starts the background sender at once; the daemon need
    not be up. Close it (or leave the process) to send or spool what is queued.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        *,
        max_queue: int = 100_000,
        batch_size: int = 1_000,
        max_inflight: int = 8,
        linger: float = 0.002,
        backoff_max: float = 5.0,
        open_timeout: float = 10.0,
        client_name: str | None = None,
    ) -> None:
        self.url = url or os.environ.get("TRACKLOG_URL") or DEFAULT_URL
        if token is None:
            token = os.environ.get("TRACKLOG_TOKEN") or None
        root = Path(spool_dir) if spool_dir is not None else default_spool_root()
        if not 1 <= batch_size <= 10_000:
            raise ValueError("batch_size: expected 1 to 10000 (the daemon's limit per append)")
        options = SenderOptions(
            max_queue=max_queue,
            batch_size=batch_size,
            max_inflight=max(1, max_inflight),
            linger=linger,
            backoff_max=backoff_max,
            open_timeout=open_timeout,
            client_name=client_name or f"tracklog-python/{_version()}",
        )
        self._sender = Sender(self.url, token, endpoint_dir(root, self.url), options)
        #: Checks and the cache wait for answers: they use a connection of their own.
        self._requests = Requests(self.url, token, options.client_name)
        self.cache = Cache(self)
        self._active: list[Run] = []
        self._lock = threading.Lock()
        self._sender.start()
        _open_trackers.add(self)

    def subscribe(
        self,
        from_seq: int | None = None,
        runs: Iterable[str] | None = None,
        types: Iterable[str] | None = None,
        pipelines: Iterable[str] | None = None,
        idle_timeout: float | None = None,
    ) -> Subscription:
        """Follow the log: an iterator of matching events, each once, in seq order.

        `from_seq`: events after it (0: the whole log; None: from now on). It reconnects
        and resumes by itself; `idle_timeout` ends the iteration after that many seconds
        without an event.
        """
        state = SubscriptionState(
            from_seq, _opt_list(runs), _opt_list(types), _opt_list(pipelines), self._sender.token
        )
        return Subscription(self.url, state, idle_timeout)

    @property
    def spool_dir(self) -> Path:
        """Where this tracker's spool files live (one folder per daemon address)."""
        return self._sender.spool.directory

    def start_run(
        self,
        name: str | None = None,
        *,
        run_id: str | None = None,
        pipeline: str | None = None,
        config: Mapping[str, Any] | None = None,
        tags: Iterable[str] | None = None,
        notes: str | None = None,
        parent: str | Run | None = None,
        user: str | None = None,
        host: str | None = None,
        session: str | None = None,
        experiment: str | None = None,
    ) -> Run:
        """Start a new run (its id is a UUIDv7 unless given) and make it the active run.

        `experiment` is the id of the experiment the run belongs to (an `experiment` event's)."""
        if run_id is not None:
            wire.check_name("run_id", run_id)
        if experiment is not None:
            wire.check_name("experiment", experiment)
        ts = _time()
        rid = run_id or uuid7(ts)
        body = RunStartedData(
            name=name,
            pipeline=pipeline,
            config=dict(config) if config is not None else None,
            tags=_names("tags", tags),
            notes=notes,
            parent=parent.id if isinstance(parent, Run) else parent,
            user=user if user is not None else _user(),
            host=host if host is not None else _HOST,
            session=session,
            experiment=experiment,
        )
        run = Run(self, rid, owned=True)
        run._put_checked(RunStarted(id=uuid7(ts), run=rid, ts=ts, data=body), config, "run.started.config")
        with self._lock:
            self._active.append(run)
        return run

    def run(self, run_id: str) -> Run:
        """Attach to a run that exists or that another process starts (workers, ranks)."""
        wire.check_name("run_id", run_id)
        return Run(self, run_id, owned=False)

    @property
    def active_run(self) -> Run | None:
        """The most recently started run that is not finished yet."""
        with self._lock:
            return self._active[-1] if self._active else None

    def _forget(self, run: Run) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._active.remove(run)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event is acked by the daemon; False if the timeout comes first."""
        return self._sender.flush(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Flush up to timeout, then write what is not acked to the spool and stop the sender."""
        _open_trackers.discard(self)
        self._requests.close()
        self._sender.close(timeout)

    def stats(self) -> dict[str, Any]:
        """Counts on the client: queued, in_flight, acked, duplicates, rejected, spooled, and more."""
        return self._sender.stats()

    @property
    def errors(self) -> list[RejectedEvent]:
        """The events the daemon rejected (the last 10,000), with its messages. Never raised."""
        return list(self._sender.counters.errors)

    # -- questions: each opens a short-lived connection of its own (client/queries.py) ----

    def _questions(self) -> QueryClient:
        return QueryClient(self.url, self._sender.token, self._sender.options.client_name)

    def runs(
        self,
        filter: str | None = None,
        order_by: str | Iterable[str] | None = None,
        limit: int | None = None,
        offset: int | None = None,
        deleted: bool | None = None,
    ) -> Rows:
        """Run summaries matching a filter (PROTOCOL.md's grammar), ordered, a page at a time."""
        return self._questions().runs(filter, order_by, limit, offset, deleted)

    def get_run(self, run_id: str) -> dict[str, Any]:
        """One run: fields, config, tags, counts, each metric's last/min/max, artifacts."""
        return self._questions().get_run(run_id)

    def metrics(
        self,
        run: str | Run,
        names: Iterable[str] | None = None,
        max_points: int | None = None,
        step_from: int | None = None,
        step_to: int | None = None,
    ) -> MetricHistories:
        """Metric histories of a run, columnar; max_points downsamples keeping each bucket's extremes."""
        return self._questions().metrics(_run_id(run), names, max_points, step_from, step_to)

    def compare(
        self, runs: Iterable[str | Run], metrics: Iterable[str] | None = None, deleted: bool | None = None
    ) -> Rows:
        """Per run and metric: last, min, max, where they were reached, count, epochs.
        A deleted run is not_found unless `deleted` is true."""
        return self._questions().compare([_run_id(r) for r in runs], metrics, deleted)

    def best(
        self,
        metric: str,
        mode: Literal["min", "max"] = "min",
        filter: str | None = None,
        deleted: bool | None = None,
    ) -> dict[str, Any] | None:
        """The run with the best value of metric ever logged (the earlier run on a tie), or None."""
        return self._questions().best(metric, mode, filter, deleted)

    def items(
        self,
        run: str | Run | None = None,
        stage: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> Rows:
        """Items, oldest first, of a run or of all."""
        return self._questions().items(None if run is None else _run_id(run), stage, status, limit, offset)

    def artifacts(self, run: str | Run) -> Rows:
        """A run's artifacts."""
        return self._questions().artifacts(_run_id(run))

    def download_artifact(
        self, run: str | Run, path: str | os.PathLike[str], dest: str | os.PathLike[str]
    ) -> Path:
        """Fetch the bytes of a run's stored artifact (the latest one logged at `path` with
        `upload=True`, or by MLflow's `log_artifact`) into the file `dest` (a folder: the
        file keeps its name there). Streamed, checked against its digest, written whole or
        not at all. NotFound when the run has no stored artifact at that path."""
        from .blobs import download_blob, http_base

        wanted = os.fspath(path)
        stored = [row for row in self.artifacts(run) if row.get("path") == wanted and row.get("blob")]
        if not stored:
            raise codes.NotFound(f"no stored artifact at {wanted[:200]} in run {_run_id(run)}")
        target = Path(dest)
        if target.is_dir():
            target = target / Path(wanted).name
        return download_blob(http_base(self.url), self._sender.token, stored[-1]["blob"], target)

    def search(self, text: str, limit: int | None = None, deleted: bool | None = None) -> Rows:
        """Runs, items and artifacts matching the words of text (stemmed), best first, with snippets."""
        return self._questions().search(text, limit, deleted)

    def resolve_run(self, run: str | Run) -> dict[str, Any]:
        """Which run a reference names: a full id, a unique id prefix, or a name (the latest
        run with it). `{ref, id, name, deleted, by, same_name}`; NotFound or BadQuery."""
        return self._questions().resolve(_run_id(run))

    def delete_run(self, run: str | Run) -> str:
        """Mark a run deleted (a `run.deleted` event): it leaves runs, compare, best, search
        and stats unless they are asked for deleted runs; its status and data stay, and
        `restore_run` brings it back. Waits for the daemon; returns the run's id."""
        return str(self._questions().set_deleted(_run_id(run), True)["id"])

    def restore_run(self, run: str | Run) -> str:
        """Undo `delete_run` (a `run.restored` event); returns the run's id."""
        return str(self._questions().set_deleted(_run_id(run), False)["id"])

    def events(
        self,
        from_seq: int = 0,
        limit: int | None = None,
        run: str | Run | None = None,
        types: Iterable[str] | None = None,
    ) -> Rows:
        """Events in stored form with seq above from_seq, oldest first."""
        return self._questions().events(from_seq, limit, None if run is None else _run_id(run), types)

    def daemon_stats(self, run: str | None = None) -> dict[str, Any]:
        """The daemon's counts, sizes, ingest rate and items by stage, or one run's items by
        stage (`stats()` is this client's own counters)."""
        return self._questions().stats(run)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<tracklog.Tracker {self.url}>"


def connect(
    url: str | None = None,
    token: str | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Tracker:
    """A tracker for the daemon at url (default `$TRACKLOG_URL`, else ws://127.0.0.1:7717/ws).

    token defaults to `$TRACKLOG_TOKEN`; spool_dir to `~/.cache/tracklog/spool`. Keyword
    options (max_queue, batch_size, max_inflight, linger, backoff_max, open_timeout,
    client_name) tune the sender.
    """
    return Tracker(url, token, spool_dir, **options)


def _opt_list(values: Iterable[str] | None) -> list[str] | None:
    return None if values is None else [values] if isinstance(values, str) else list(values)


def _names(field: str, values: Iterable[str] | None) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        raise TypeError(f"{field}: expected a list of strings, got a string")
    out = list(values)
    for value in out:
        wire.check_name(field, value)
    return out


def _run_id(run: str | Run) -> str:
    return run.id if isinstance(run, Run) else run


def _error_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return None


def _version() -> str:
    return __version__


_HOST: Final = socket.gethostname()


@atexit.register
def _close_at_exit() -> None:
    for tracker in list(_open_trackers):
        with contextlib.suppress(Exception):
            tracker.close(EXIT_TIMEOUT)
