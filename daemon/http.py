"""HTTP on the daemon's port: routing of the REST API, streamed run exports, and `/metrics`.

Requests arrive through daemon/http_connection.py (h11 in front of the WebSocket on the
one port). Every answer that reads the database runs on the Readers pool, so the event
loop never waits on SQLite; parameters are checked here and turned into the same `Query`
the WebSocket protocol uses, so both paths share one implementation and one set of errors.

Extension points (for new APIs such as MLflow's, in daemon/mlflow/):

- A route is `Route(pattern, {"METHOD": handler, ...})` appended to `HttpApi.routes`; the
  pattern is matched whole against the path (no query string), its named groups are
  URL-decoded into `args` (a group named `run` is resolved to a run id first, 404 if
  unknown). A method the route does not list is a 405 with `Allow`; HEAD is served by the
  GET handler, its body dropped. The Host/Origin and token checks run before any route.
- A handler is `async def handler(args, params, request) -> Answer`: `params` reads the
  query string (`Params.text/texts/integer`, errors name the parameter), `request` is the
  `HttpRequest` of daemon/http_connection.py (method, path, headers, body). Answer with
  `json_response(status, body)`, `bytes_response(status, payload, content_type, headers)`,
  or a `StreamedResponse` for a download produced on a thread.
- Bodies: `await request.body.json(limit)` (413 over the limit, 400 naming the problem if
  not JSON), `await request.body.read(limit)`, `async for piece in
  request.body.chunks(limit)`, or `await request.body.save(path, limit)` for uploads
  (streamed to a hidden file renamed into place when whole, with its sha256; a broken
  upload raises and leaves no file). Each body is read once; an unread body is skipped by
  closing the connection after the answer. `Expect: 100-continue` is answered when the
  handler starts reading, so a body refused for its Content-Length is never sent.
- Errors: raise a `tracklog.protocol.errors.ProtocolError` (NotFound 404, BadQuery and
  BadMessage 400, TooLarge 413, Unauthorized 401, Forbidden 403) and `error_response`
  answers `{"error": code, "message": ...}`; an API with another error shape catches in
  its handler and answers with its own `json_response`.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import msgspec
import structlog
from websockets.datastructures import Headers
from websockets.http11 import Response

from tracklog.protocol import errors
from tracklog.protocol.events import RunDeleted, RunRestored, finite_floats_as_strings
from tracklog.protocol.messages import Append, Query

from .exports import EXPORT_TYPES, EXPORTERS, export
from .filter_grammar import parse_run_query
from .http_connection import Answer, HttpRequest, StreamedResponse
from .prometheus import PROMETHEUS_TYPE, prometheus_text
from .storage import SqliteBackend
from .storage.readmodel import MAX_ITEMS, MAX_RUNS
from .webconsole import console_response, is_console_path

_json = msgspec.json.Encoder()
log = structlog.get_logger("tracklog.http")


class BadParameter(errors.BadQuery):
    """A URL parameter that is not what the endpoint takes (400)."""


def json_response(status: HTTPStatus, body: Any) -> Response:
    payload = _json.encode(finite_floats_as_strings(msgspec.to_builtins(body)))
    return bytes_response(status, payload, "application/json")


def bytes_response(
    status: HTTPStatus, payload: bytes, content_type: str, extra: Sequence[tuple[str, str]] = ()
) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(payload))),
            ("Cache-Control", "no-store"),
            *extra,
        ]
    )
    return Response(status.value, status.phrase, headers, payload)


def error_response(exc: errors.ProtocolError) -> Response:
    status = {
        errors.NOT_FOUND: HTTPStatus.NOT_FOUND,
        errors.BAD_QUERY: HTTPStatus.BAD_REQUEST,
        errors.BAD_MESSAGE: HTTPStatus.BAD_REQUEST,
        errors.BAD_FRAME: HTTPStatus.BAD_REQUEST,
        errors.TOO_LARGE: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        errors.UNAUTHORIZED: HTTPStatus.UNAUTHORIZED,
        errors.FORBIDDEN: HTTPStatus.FORBIDDEN,
    }.get(exc.code, HTTPStatus.INTERNAL_SERVER_ERROR)
    return json_response(status, {"error": exc.code, "message": exc.message})


# -- parameters -------------------------------------------------------------------------


class Params:
    """URL query parameters, read with checks that raise BadParameter naming the parameter."""

    def __init__(self, query: str) -> None:
        try:
            self.values = parse_qs(query, keep_blank_values=True, strict_parsing=False, max_num_fields=200)
        except ValueError as exc:
            raise BadParameter(f"query string: {exc}") from None

    def text(self, name: str) -> str | None:
        values = self.values.get(name)
        return values[-1] if values else None

    def texts(self, name: str) -> list[str] | None:
        """A list given as repeated parameters, or comma-separated in one."""
        values = self.values.get(name)
        if not values:
            return None
        return [part for value in values for part in value.split(",") if part]

    def integer(self, name: str, low: int | None = None, high: int | None = None) -> int | None:
        value = self.text(name)
        if value is None or value == "":
            return None
        try:
            number = int(value)
        except ValueError:
            raise BadParameter(f"{name}: expected an integer, got '{value[:40]}'") from None
        if (low is not None and number < low) or (high is not None and number > high):
            span = f"{low} to {high}" if high is not None else f"{low} or more"
            raise BadParameter(f"{name}: expected {span}, got {number}")
        return number


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def runs_query(params: Params) -> Query:
    """The `runs` query an /api/runs URL asks for: filter, order_by, page and simple fields."""
    text = params.text("filter")
    if text is not None:
        parse_run_query(text)  # report positions in the caller's filter, before it is combined
    clauses = [f"({text})"] if text and text.strip() else []
    for name in ("pipeline", "status", "user", "session"):
        value = params.text(name)
        if value is not None:
            clauses.append(f"{name} = {_quoted(value)}")
    date = params.text("date")
    if date is not None:
        try:
            day = dt.date.fromisoformat(date)
        except ValueError:
            raise BadParameter(f"date: expected YYYY-MM-DD, got '{date[:40]}'") from None
        clauses.append(
            f"started >= {_quoted(day.isoformat())}"
            f" and started < {_quoted((day + dt.timedelta(days=1)).isoformat())}"
        )
    order_by = params.texts("order_by")
    if order_by:
        parse_run_query(None, order_by)
    return Query(
        q="runs",
        filter=" and ".join(clauses) or None,
        order_by=order_by,
        limit=params.integer("limit", 1, MAX_RUNS),
        offset=params.integer("offset", 0),
        deleted=params.text("deleted") in ("1", "true", "yes"),
    )


def content_disposition(run: str, fmt: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", run)[:100] or "run"
    encoded = quote(f"run-{run}.{fmt}", safe="")
    return f"attachment; filename=\"run-{safe}.{fmt}\"; filename*=UTF-8''{encoded}"


# -- the router ---------------------------------------------------------------------------

#: A route's handler: the path's named parts (URL-decoded), the query parameters, and
#: the request (headers, body).
Handler = Callable[[dict[str, str], "Params", HttpRequest], Awaitable[Answer]]


@dataclass(frozen=True)
class Route:
    """A path pattern and the handler of each method it takes (others: 405 with Allow)."""

    pattern: re.Pattern[str]
    methods: Mapping[str, Handler]


def method_not_allowed(method: str, allowed: Iterable[str]) -> Response:
    allow = ", ".join(allowed)
    payload = _json.encode(
        {"error": "method_not_allowed", "message": f"{method[:20]} not allowed; allowed: {allow}"}
    )
    return bytes_response(HTTPStatus.METHOD_NOT_ALLOWED, payload, "application/json", [("Allow", allow)])


class HttpApi:
    """Answers the HTTP paths of PROTOCOL.md; `daemon` gives readers, writer, hub and counts."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        #: Downloads being sent, stopped at shutdown.
        self.streams: set[StreamedResponse] = set()
        run = r"/api/runs/(?P<run>[^/]+)"
        # Each route declares its methods; a method is one more entry in its map.
        self.routes: list[Route] = [
            Route(re.compile(r"/metrics"), {"GET": self._prometheus}),
            Route(re.compile(r"/api/stats"), {"GET": self._stats}),
            Route(re.compile(r"/api/runs/?"), {"GET": self._runs}),
            Route(re.compile(run), {"GET": self._run, "DELETE": self._delete}),
            Route(re.compile(run + r"/restore"), {"POST": self._restore}),
            Route(re.compile(run + r"/metrics"), {"GET": self._metrics}),
            Route(re.compile(run + r"/stats"), {"GET": self._run_stats}),
            Route(re.compile(run + r"/items"), {"GET": self._items}),
            Route(re.compile(run + r"/export/(?P<format>[^/]+)"), {"GET": self._export}),
        ]

    def stop_streams(self, abort: bool = False) -> None:
        for stream in list(self.streams):
            stream.stop(abort)

    async def respond(self, request: HttpRequest) -> Answer:
        parts = urlsplit(request.path)
        path = parts.path
        try:
            params = Params(parts.query)
            if is_console_path(path):
                if request.method not in ("GET", "HEAD"):
                    return method_not_allowed(request.method, ["GET"])
                page = console_response(path, params.text("token"), params.text("v"), request.headers)
                if page is not None:
                    return page
            for route in self.routes:
                match = route.pattern.fullmatch(path)
                if match is None:
                    continue
                handler = route.methods.get(request.method)
                if handler is None and request.method == "HEAD":
                    handler = route.methods.get("GET")  # the same answer; its body is dropped
                if handler is None:
                    return method_not_allowed(request.method, route.methods)
                args = {name: unquote(value) for name, value in match.groupdict().items()}
                if "run" in args:
                    # An id prefix or a name works too (daemon/runref.py); an unknown run is a 404.
                    resolved = await self.daemon.readers.query(Query(q="resolve", run=args["run"]))
                    args["run"] = resolved.rows[0]["id"]
                return await handler(args, params, request)
        except errors.ProtocolError as exc:
            return error_response(exc)
        return json_response(
            HTTPStatus.NOT_FOUND, {"error": "not_found", "message": f"no such path: {path[:200]}"}
        )

    async def _prometheus(self, _args: dict[str, str], _params: Params, _request: HttpRequest) -> Answer:
        size = None
        if not isinstance(self.daemon.backend, SqliteBackend):  # SQLite's file is measured without a reader
            size = await self.daemon.readers.call(lambda model: model.database_bytes())
        return bytes_response(HTTPStatus.OK, prometheus_text(self.daemon, size).encode(), PROMETHEUS_TYPE)

    async def _stats(self, _args: dict[str, str], _params: Params, _request: HttpRequest) -> Answer:
        result = await self.daemon.readers.query(Query(q="stats"))
        row = dict(result.rows[0])
        row["daemon"] = self.daemon_stats()
        return json_response(HTTPStatus.OK, row)

    async def _runs(self, _args: dict[str, str], params: Params, _request: HttpRequest) -> Answer:
        result = await self.daemon.readers.query(runs_query(params))
        return json_response(HTTPStatus.OK, {"seq": result.seq, "total": result.total, "runs": result.rows})

    async def _run(self, args: dict[str, str], _params: Params, _request: HttpRequest) -> Answer:
        result = await self.daemon.readers.query(Query(q="run", run=args["run"]))
        return json_response(HTTPStatus.OK, {"seq": result.seq, "run": result.rows[0]})

    async def _delete(self, args: dict[str, str], _params: Params, _request: HttpRequest) -> Answer:
        """`DELETE /api/runs/RUN`: append `run.deleted` (the run is hidden from queries, kept in the log)."""
        return await self._mark(args["run"], deleted=True)

    async def _restore(self, args: dict[str, str], _params: Params, _request: HttpRequest) -> Answer:
        """`POST /api/runs/RUN/restore`: append `run.restored` (its status is kept)."""
        return await self._mark(args["run"], deleted=False)

    async def _mark(self, run: str, deleted: bool) -> Answer:
        found = (await self.daemon.readers.query(Query(q="resolve", run=run))).rows[0]
        event = RunDeleted(run=found["id"]) if deleted else RunRestored(run=found["id"])
        result = await (await self.daemon.writer.submit(Append(events=[event])))
        if isinstance(result, errors.ProtocolError):
            raise result
        return json_response(
            HTTPStatus.OK,
            {"seq": result.ack.last_seq, "run": found["id"], "name": found["name"], "deleted": deleted},
        )

    async def _run_stats(self, args: dict[str, str], _params: Params, _request: HttpRequest) -> Answer:
        result = await self.daemon.readers.query(Query(q="stats", run=args["run"]))
        return json_response(HTTPStatus.OK, {"seq": result.seq, "stats": result.rows[0]})

    async def _metrics(self, args: dict[str, str], params: Params, _request: HttpRequest) -> Answer:
        q = Query(
            q="metrics",
            run=args["run"],
            names=params.texts("names"),
            max_points=params.integer("max_points", 2),
            step_from=params.integer("step_from"),
            step_to=params.integer("step_to"),
        )
        result = await self.daemon.readers.query(q)
        return json_response(HTTPStatus.OK, {"seq": result.seq, "metrics": result.rows})

    async def _items(self, args: dict[str, str], params: Params, _request: HttpRequest) -> Answer:
        run = args["run"]
        readers = self.daemon.readers
        await readers.query(Query(q="artifacts", run=run))  # 404 for an unknown run
        q = Query(
            q="items",
            run=run,
            stage=params.text("stage"),
            status=params.text("status"),
            limit=params.integer("limit", 0, MAX_ITEMS),
            offset=params.integer("offset", 0),
        )
        result = await readers.query(q)
        return json_response(HTTPStatus.OK, {"seq": result.seq, "total": result.total, "items": result.rows})

    async def _export(self, args: dict[str, str], _params: Params, _request: HttpRequest) -> Answer:
        run, fmt = args["run"], args["format"]
        if fmt not in EXPORTERS:
            raise BadParameter(
                f"format: '{fmt[:40]}' is not supported; expected one of {', '.join(EXPORTERS)}"
            )
        await self.daemon.readers.query(Query(q="artifacts", run=run))  # 404 for an unknown run
        backend = self.daemon.backend

        def produce() -> Iterator[bytes]:
            # Read once, front to back, on a model of its own (not a reader's: a long
            # download must not hold a reader thread).
            model = backend.open_read_model(scan=True)
            try:
                yield from export(model, run, fmt)
            finally:
                model.close()

        headers = [
            ("Content-Type", EXPORT_TYPES[fmt]),
            ("Cache-Control", "no-store"),
            ("Content-Disposition", content_disposition(run, fmt)),
        ]
        return StreamedResponse(headers, produce, self.streams)

    # -- metrics ----------------------------------------------------------------------

    def daemon_stats(self) -> dict[str, Any]:
        daemon = self.daemon
        stats = daemon.writer.stats
        hub = getattr(daemon, "hub", None)
        return {
            "connections": daemon.connections,
            "subscribers": hub.subscribers if hub is not None else 0,
            "events_appended": stats.events,
            "appends": stats.appends,
            "commits": stats.commits,
            "uptime": max(0.0, time.time() - daemon.started_at),
        }
