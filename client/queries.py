"""Asking the daemon questions: `query` ops over a short-lived connection, answers as plain objects.

Each call opens its own synchronous WebSocket (websockets.sync.client), says hello, asks,
and closes. Questions are rare next to metric calls, and this keeps them apart from the
background sender: a slow query never holds up a batch of appends or its acks, and the
sender's connection keeps one simple job. On loopback the extra handshake costs about
a millisecond. MessagePack carries NaN and the infinities as they are.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from websockets.sync.client import connect

from tracklog.protocol import errors
from tracklog.protocol.connection import Answered, ClientConnection, Refused
from tracklog.protocol.events import RunDeleted, RunRestored
from tracklog.protocol.messages import Ack, Append, Error, Query, Result, ServerMessage

from .ids import uuid7
from .pings import SyncConnection
from .requests import MIN_RATE_WAIT
from .tls import connect_options


class Rows(list):  # type: ignore[type-arg]
    """Rows of an answer (plain dicts), with the `seq` they reflect and the `total` that matched."""

    seq: int = 0
    total: int | None = None

    def to_pandas(self) -> Any:
        """The rows as a pandas DataFrame (pandas is optional: ImportError without it)."""
        import pandas as pd

        return pd.DataFrame(list(self))


class MetricHistories(dict):  # type: ignore[type-arg]
    """Metric name -> {"steps", "values", "epochs", "ts"} (columnar lists), with the answer's seq;
    also "points" (in range, before downsampling), "downsampled" and "summary" (the whole series'
    count, last, min, max) when the daemon sends them."""

    seq: int = 0

    def to_pandas(self) -> Any:
        """One row per point: name, step, epoch, value, ts (pandas is optional)."""
        import pandas as pd

        frames = [
            pd.DataFrame(
                {"name": name, "step": h["steps"], "epoch": h["epochs"], "value": h["values"], "ts": h["ts"]}
            )
            for name, h in self.items()
        ]
        if not frames:
            return pd.DataFrame(columns=["name", "step", "epoch", "value", "ts"])
        return pd.concat(frames, ignore_index=True)


class QueryClient:
    """Sends one query per connection to the daemon at url; raises the protocol's errors."""

    def __init__(
        self, url: str, token: str | None = None, client_name: str = "tracklog-python", timeout: float = 30.0
    ):
        self.url = url
        self.token = token
        self.client_name = client_name
        self.timeout = timeout

    def query(self, q: str, **args: Any) -> Rows:
        """Ask `q` with its arguments (None ones left out); the rows, or a ProtocolError."""
        with self._session() as ask:
            return ask(q, **args)

    @contextmanager
    def _session(self) -> Iterator[Callable[..., Rows]]:
        """One connection for a few questions in a row; yields `ask(q, **args) -> Rows`."""
        with self._connection() as exchange:

            def ask(q: str, **args: Any) -> Rows:
                reply = exchange(Query(q=q, **{k: v for k, v in args.items() if v is not None}))
                assert isinstance(reply, Result), reply
                rows = Rows(reply.rows or [])
                rows.seq = reply.seq
                rows.total = reply.total
                return rows

            yield ask

    @contextmanager
    def _connection(self) -> Iterator[Callable[[Query | Append], ServerMessage]]:
        """Open, say hello, and yield `exchange(request) -> reply` (errors raised); close.

        The protocol (hello, refs, matching) is the connection object's; this only moves frames.
        """
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        with connect(
            self.url,
            open_timeout=self.timeout,
            close_timeout=2,
            max_size=None,
            additional_headers=headers,
            compression=None,
            create_connection=SyncConnection,
            **connect_options(self.url),
        ) as ws:
            conn = ClientConnection(self.client_name, self.token)
            ws.send(conn.hello())
            for event in conn.receive(ws.recv(self.timeout, decode=False)):
                if isinstance(event, Refused):
                    raise errors.error_for_code(event.error.code, event.error.message)

            def exchange(request: Query | Append) -> ServerMessage:
                deadline = time.monotonic() + self.timeout
                while True:
                    reply = exchange_once(request)
                    if not isinstance(reply, Error):
                        return reply
                    wait = max(reply.retry_after or 0.0, MIN_RATE_WAIT)
                    if reply.code == errors.RATE_LIMITED and time.monotonic() + wait < deadline:
                        time.sleep(wait)  # refused for a rate limit: nothing was done; send again
                        continue
                    raise errors.error_for_code(reply.code, reply.message, reply.ref, reply.retry_after)

            def exchange_once(request: Query | Append) -> ServerMessage:
                ref, data = conn.request(request)
                ws.send(data)
                while True:
                    for event in conn.receive(ws.recv(self.timeout, decode=False)):
                        if isinstance(event, Answered) and event.ref == ref:
                            return event.reply

            yield exchange

    # -- references and deletion -------------------------------------------------------

    def resolve(self, run: str) -> dict[str, Any]:
        """The run a reference names (an id, a unique id prefix or a name) and how it matched:
        `{ref, id, name, deleted, by, same_name}` (`same_name` > 1: the latest of that name)."""
        return dict(self.query("resolve", run=run)[0])

    def set_deleted(self, run: str, deleted: bool) -> dict[str, Any]:
        """Append `run.deleted` (or `run.restored`) for the run `run` names; the resolved run.

        The mark is an event in the log like any other: rebuilt, replayed and followed
        by subscribers. Sent with a fresh id and waited for: when this returns, it is
        committed. The run's status is not changed.
        """
        with self._connection() as exchange:
            answer = exchange(Query(q="resolve", run=run))
            assert isinstance(answer, Result), answer
            resolved = answer.rows[0]
            mark = RunDeleted if deleted else RunRestored
            ack = exchange(Append(events=[mark(id=uuid7.new(), run=resolved["id"])]))
        assert isinstance(ack, Ack), ack
        for rejection in ack.rejected:
            raise errors.error_for_code(rejection.code, rejection.message)
        return dict(resolved)

    # -- the questions, one method each ------------------------------------------------

    def runs(
        self,
        filter: str | None = None,
        order_by: str | Iterable[str] | None = None,
        limit: int | None = None,
        offset: int | None = None,
        deleted: bool | None = None,
    ) -> Rows:
        return self.query(
            "runs", filter=filter, order_by=_list(order_by), limit=limit, offset=offset, deleted=deleted
        )

    def get_run(self, run: str) -> dict[str, Any]:
        return dict(self.query("run", run=run)[0])

    def metrics(
        self,
        run: str,
        names: Iterable[str] | None = None,
        max_points: int | None = None,
        step_from: int | None = None,
        step_to: int | None = None,
    ) -> MetricHistories:
        rows = self.query(
            "metrics",
            run=run,
            names=_list(names),
            max_points=max_points,
            step_from=step_from,
            step_to=step_to,
        )
        out = MetricHistories(
            {
                r["name"]: {
                    k: r[k]
                    for k in ("steps", "values", "epochs", "ts", "points", "downsampled", "summary")
                    if k in r
                }
                for r in rows
            }
        )
        out.seq = rows.seq
        return out

    def compare(
        self, runs: Iterable[str], metrics: Iterable[str] | None = None, deleted: bool | None = None
    ) -> Rows:
        return self.query("compare", runs=list(runs), metrics=_list(metrics), deleted=deleted)

    def best(
        self, metric: str, mode: str = "min", filter: str | None = None, deleted: bool | None = None
    ) -> dict[str, Any] | None:
        rows = self.query("best", metric=metric, mode=mode, filter=filter, deleted=deleted)
        return dict(rows[0]) if rows else None

    def items(
        self,
        run: str | None = None,
        stage: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> Rows:
        return self.query("items", run=run, stage=stage, status=status, limit=limit, offset=offset)

    def artifacts(self, run: str) -> Rows:
        return self.query("artifacts", run=run)

    def search(self, text: str, limit: int | None = None, deleted: bool | None = None) -> Rows:
        return self.query("search", text=text, limit=limit, deleted=deleted)

    def events(
        self,
        from_seq: int = 0,
        limit: int | None = None,
        run: str | None = None,
        types: Iterable[str] | None = None,
    ) -> Rows:
        return self.query("events", from_seq=from_seq, limit=limit, run=run, types=_list(types))

    def stats(self, run: str | None = None, deleted: bool | None = None) -> dict[str, Any]:
        """The daemon's counts, sizes and items by stage; with `run`, that run's items by stage."""
        return dict(self.query("stats", run=run, deleted=deleted)[0])


def _list(values: str | Iterable[str] | Mapping[str, Any] | None) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        return [values]
    return list(values)
