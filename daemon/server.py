"""The daemon: WebSocket connections, the handshake, dispatch, HTTP, start and stop.

A connection's handler only moves frames: the protocol's ServerConnection (hello, token,
decoding, refs, encoding of replies) says what each frame asks; the handler hands
appends to the writer and queries to the readers, and sends what comes back. Acks go
out in the order the appends came in; queries answer as they finish, so a slow query
never holds back an ack.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import ipaddress
import itertools
import math
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, assert_never
from urllib.parse import urlsplit

import msgspec
import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response

from tracklog.protocol import errors
from tracklog.protocol.connection import AppendFrame, Close, Greeted, Send
from tracklog.protocol.connection import ServerConnection as Connection
from tracklog.protocol.limits import DEFAULT_HOST, DEFAULT_PORT
from tracklog.protocol.messages import Check, Codec, Query, StoredEvent, Subscribe, Unsubscribe
from tracklog.protocol.version import __version__

from . import logs, memdebug
from .artifacts import ArtifactStore
from .auth import OPEN_GRANT, READ, Grant, TokenSet, grant, http_scope
from .catchup import SharedPages
from .certificates import CertificateSwitch, load_certificate
from .follow import Sequencer
from .guard import ConnectionGuard, Limits
from .http import HttpApi, method_not_allowed
from .http_blobs import BlobRoutes
from .http_connection import HttpConnection, HttpRequest, HttpService, StreamedResponse
from .http_mlflow import REFUSAL_CODES, MlflowRoutes, is_mlflow_path, mlflow_refusal
from .hub import Filter, Hub, Subscription
from .liveness import RUNNING, LostMark, lost_event
from .mlflow import MlflowContext
from .notify import Notifier
from .queries import READERS, Readers
from .ratelimit import ConnectionLimiter, RatePolicy, TokenBuckets, http_query
from .service import Supervisor, load_reloadable
from .storage import Durability, PgBackend, open_backend
from .storage.eventlog import AppendResult, CheckResult

if TYPE_CHECKING:
    from .storage.postgres.follow import LogWatcher
from .webconsole import console_token
from .writer import Writer

log = structlog.get_logger("tracklog.server")

#: Appends of one connection waiting for their ack before it stops reading frames.
MAX_INFLIGHT_APPENDS: Final = 64
HELLO_TIMEOUT: Final = 30.0
#: Seconds shutdown gives connections to close cleanly (and each close handshake); then
#: they are aborted. Also the bound for stopping subscriptions.
CLOSE_TIMEOUT: Final = 2.0
_json = msgspec.json.Encoder()
#: A subscription's read of a shared database is tried this many times, this far apart,
#: before it fails (a PostgreSQL restart takes seconds).
READ_RETRIES: Final = 300
READ_RETRY_SECONDS: Final = 0.2
#: Runs named in the log line of one mark of runs whose daemon is gone (the rest counted).
MARKED_RUNS_LOGGED: Final = 20


def default_db_path() -> Path:
    home = os.environ.get("TRACKLOG_HOME")
    if home:
        return Path(home) / "tracklog.db"
    return Path.home() / ".local" / "share" / "tracklog" / "tracklog.db"


@dataclass
class Settings:
    #: The database: a path, or a URL (`sqlite:///PATH`, `postgresql://...`).
    db: Path | str = field(default_factory=default_db_path)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    durability: Durability = "normal"
    tokens: tuple[str, ...] = ()
    insecure: bool = False
    #: Seconds a running run may have no connected writer before it is marked `lost`.
    lost_after: float = 300.0
    #: Web origins (`http://host:port`) whose pages may use the daemon besides its own.
    allow_origins: tuple[str, ...] = ()
    #: Host names accepted in `Host` besides localhost, 127.0.0.1 and ::1 (on loopback).
    allow_hosts: tuple[str, ...] = ()
    #: Tokens, one a line, re-read on SIGHUP (added to `tokens`).
    tokens_file: Path | None = None
    #: A `KEY=VALUE` file whose TRACKLOG_TOKENS and TRACKLOG_LOG_LEVEL are re-read on SIGHUP.
    env_file: Path | None = None
    log_level: str = "info"
    log_format: logs.LogFormat = "auto"
    #: An append acked, or a query answered, after this many seconds is logged as slow.
    slow_request_seconds: float = 1.0
    #: Every token with its scopes: `tokens` (all scopes) and the files' (set at start and reload).
    grants: tuple[Grant, ...] = ()
    #: The limits on frames, appends, connections, subscriptions, query rows, fields.
    limits: Limits = field(default_factory=Limits)
    #: Rate limits per connection and per token (all off by default).
    rates: RatePolicy = field(default_factory=RatePolicy)
    #: A certificate chain and its key (PEM): serve wss:// and https:// instead.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: The artifact store's folder (`--artifacts-dir`); None: beside an SQLite database
    #: (`<db>.artifacts/`), and none at all on PostgreSQL (artifact uploads are refused).
    artifacts_dir: Path | None = None


#: The names a loopback daemon answers to in `Host` (any port): others may be DNS rebinding.
LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})


def split_host(value: str) -> tuple[str, int | None] | None:
    """A `Host` value (or an origin's netloc) as (lowercase name, port); None when malformed."""
    try:
        parts = urlsplit("//" + value)
        name, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not name or parts.username is not None or parts.path:
        return None
    return name.lower(), port


def normal_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_tokens(tokens: Iterable[str]) -> None:
    """Refuse empty or blank tokens: `--token "$VAR"` with VAR unset must not count as protection."""
    for token in tokens:
        if not token.strip():
            raise errors.TracklogError(
                "refusing an empty token (is the variable passed to --token or $TRACKLOG_TOKENS set?)"
            )


class Daemon:
    """One tracklog daemon: start(), then wait for stop(); or `run()` to do both."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        #: The clock of the rate limits (tests give one they move).
        self.clock = clock
        #: The tokens given at start (command line); a reload adds those read from files.
        self._static_tokens = settings.tokens
        settings = self._with_reloaded(settings)
        self.settings = settings
        limits = settings.limits
        self.codec = Codec(limits.max_events_per_append, limits.max_depth, limits.max_field_chars)
        self.tokens = TokenSet(settings.grants)
        self.token_buckets = TokenBuckets(settings.rates, clock)
        #: The TLS certificate, swapped on SIGHUP (None: plain ws:// and http://).
        self.certificates = server_tls(settings)
        #: Requests the guard refused, by error code (forbidden, rate_limited, too_large).
        self.refused: collections.Counter[str] = collections.Counter()
        backend = open_backend(settings.db, settings.durability)
        #: Where the log lives; readers and exports open their read models through it.
        self.backend = backend
        self.writer = Writer(backend, self.codec)
        #: The database as logs name it (a URL without its password).
        self.db_name = str(backend)
        # On PostgreSQL, `pool_size` (a URL setting) is how many reader connections to keep.
        readers = backend.settings.pool_size if isinstance(backend, PgBackend) else READERS
        self.readers = Readers(backend.open_read_model, readers)
        self.http = HttpApi(self)
        artifacts_root = settings.artifacts_dir or backend.artifacts_dir
        #: The content-addressed artifact store (None: uploads are refused, see --artifacts-dir).
        self.artifacts = ArtifactStore(artifacts_root) if artifacts_root is not None else None
        #: MLflow's tracking and artifact APIs on this port (daemon/http_mlflow.py).
        self.mlflow = MlflowContext(self.writer, self.readers, artifacts=self.artifacts)
        self.http.routes += MlflowRoutes(self.mlflow, self.http.streams).routes()
        #: tracklog's own uploads and downloads of blobs (daemon/http_blobs.py).
        self.http.routes += BlobRoutes(self, self.artifacts, self.http.streams).routes()
        #: HTTP/1.1 on the port (h11), handing `/ws` requests to websockets' handshake.
        self.http_service = HttpService(
            self._process_request, limits.max_http_connections, limits.http_head_timeout
        )
        self.started_at = time.time()
        self.port = settings.port
        self.connections = 0
        self._server: Server | None = None
        self._stopping = asyncio.Event()
        self._conn_ids = itertools.count(1)
        self._pending_acks: dict[int, int] = {}
        self.hub = Hub(self.codec)
        #: The log's pages, shared by the subscriptions catching up (daemon/catchup.py).
        self.log_pages = SharedPages(self._scan_log, lambda: self.hub.published_seq)
        #: Which connections have written to each run (for `lost` runs), and the timers.
        self._run_writers: dict[str, set[int]] = {}
        self._lost_timers: dict[str, asyncio.Task[None]] = {}
        #: On a shared database: the mark of runs whose daemon is gone, while one is queued.
        self._unserved_mark: asyncio.Task[None] | None = None
        self.notifier = Notifier()
        self.supervisor = Supervisor(self, self.notifier)
        #: On a database other daemons share: what follows their commits (see `follow.py`).
        self.sequencer: Sequencer | None = None
        self.watcher: LogWatcher | None = None

    def _with_reloaded(self, settings: Settings) -> Settings:
        """Settings with the tokens and log level read from the files again; TracklogError
        (and nothing changed) when a file cannot be read or the result would be unsafe."""
        reloaded = load_reloadable(settings.tokens_file, settings.env_file)
        tokens = self._static_tokens + reloaded.tokens
        check_tokens(tokens)
        if not is_loopback(settings.host) and not tokens and not settings.insecure:
            raise errors.TracklogError(
                f"refusing to listen on {settings.host} without tokens: set --token, or --insecure"
            )
        grants = tuple(grant(token) for token in self._static_tokens) + reloaded.grants
        return replace(
            settings, tokens=tokens, grants=grants, log_level=reloaded.log_level or settings.log_level
        )

    def reload(self) -> bool:
        """SIGHUP: re-read tokens, log level and the TLS certificate. New tokens and the
        new certificate apply to connections opened from now on; on an error the old
        settings (or the old certificate) stay and the error is logged."""
        self.notifier.reloading()
        certificate_ok = self._reload_certificate()
        try:
            settings = self._with_reloaded(self.settings)
            if self.tokens.configured and not settings.grants:
                # An emptied tokens file would open the daemon to anyone: a mistake, surely.
                raise errors.TracklogError("the reload found no tokens; the daemon would accept anyone")
        except errors.TracklogError as exc:
            log.error("reload failed; settings unchanged", error=str(exc))
            self.notifier.ready(self.supervisor.status())
            return False
        if settings.log_level != self.settings.log_level:
            logs.configure(settings.log_level, settings.log_format)
        self.settings = settings
        self.tokens = TokenSet(settings.grants)
        log.info("reloaded", tokens=len(settings.tokens), log_level=settings.log_level)
        log.debug("reload read", tokens_file=str(settings.tokens_file), env_file=str(settings.env_file))
        self.notifier.ready(self.supervisor.status())
        return certificate_ok

    def _reload_certificate(self) -> bool:
        """Load `--tls-cert`/`--tls-key` again for the handshakes from now on (renewed
        certificates need no restart); on an error the old certificate goes on serving."""
        switch, cert, key = self.certificates, self.settings.tls_cert, self.settings.tls_key
        if switch is None or cert is None or key is None:
            return True
        try:
            loaded = switch.reload(cert, key)
        except errors.TracklogError as exc:
            log.error("TLS certificate reload failed; the old certificate stays", error=str(exc))
            return False
        log.info("TLS certificate loaded", cert=str(loaded.cert), not_after=loaded.not_after)
        return True

    # -- life cycle -------------------------------------------------------------

    async def start(self) -> None:
        if self.artifacts is not None:
            # Uploads a crash left half-written, removed before any new one can start.
            cleared = await asyncio.to_thread(self.artifacts.clear_tmp)
            if cleared:
                log.info("removed unfinished artifact uploads", uploads=cleared)
        else:
            log.warning(
                "no artifact store: artifact uploads (MLflow's log_artifact, tracklog's upload=True)"
                " are refused; set --artifacts-dir or $TRACKLOG_ARTIFACTS_DIR",
                db=self.db_name,
            )
        replayed = await self.writer.start()
        self.hub.published_seq = self.writer.head
        self.hub.pipeline_of, self.hub.status_of = await self.readers.call(
            lambda model: model.run_pipelines()
        )
        # Runs left running by the last daemon have no writer yet: each gets the grace
        # period for one to come back, like a run whose writers just disconnected.
        for run, status in self.hub.status_of.items():
            if status == RUNNING:
                self._lost_timers[run] = asyncio.create_task(self._mark_lost_later(run))
        if isinstance(self.backend, PgBackend):
            self._follow_log(self.backend)
        else:
            self.writer.listeners.append(self.hub.publish)
        if replayed:
            log.info("projections caught up from the log", events=replayed)
        self._server = await serve(
            self._handle,
            self.settings.host,
            self.settings.port,
            # Not a websockets `process_request`: HttpConnection.handshake gets it and runs
            # the connection's HTTP/1.1 (h11) until a request for /ws, then websockets' handshake.
            process_request=self.http_service,  # type: ignore[arg-type]
            # HttpConnection bounds each request head and the WebSocket handshake itself.
            create_connection=HttpConnection,
            open_timeout=None,
            max_size=self.settings.limits.max_frame_bytes,
            max_queue=64,
            ssl=self.certificates.listening if self.certificates is not None else None,
            compression=None,
            ping_interval=20,
            ping_timeout=60,
            # A client that stopped reading must not hold up shutdown for long.
            close_timeout=CLOSE_TIMEOUT,
            server_header=f"tracklog/{__version__}",
        )
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]
        log.info(
            "listening",
            host=self.settings.host,
            port=self.port,
            tls=self.settings.tls_cert is not None,
            tls_not_after=self.certificates.current.not_after if self.certificates is not None else None,
            db=self.db_name,
            head=self.writer.head,
        )

    def _follow_log(self, backend: PgBackend) -> None:
        """Publish every daemon's commits in seq order: this one's from the writer, the
        others' read from the log when notified (and at a bounded interval)."""
        from .storage.postgres.follow import LogWatcher

        loop = asyncio.get_running_loop()
        hub = self.hub

        def deliver(events: list[Any]) -> None:
            loop.call_soon_threadsafe(sequencer.from_log, events)

        def unserved(runs: list[str]) -> None:
            loop.call_soon_threadsafe(self._mark_unserved, runs)

        watcher = LogWatcher(
            backend.conn_url,
            backend.daemon_id,
            lambda: hub.published_seq,
            deliver,
            renew_seconds=min(30.0, max(0.05, self.settings.lost_after / 4)),
            lost_after=self.settings.lost_after,
            unserved=unserved,
        )
        sequencer = Sequencer(hub, watcher.poke)
        self.watcher, self.sequencer = watcher, sequencer
        self.writer.listeners.append(sequencer.from_writer)
        watcher.start()

    async def stop(self) -> None:
        """Stop accepting, commit and ack what is queued, close connections, checkpoint."""
        self._stopping.set()
        if self._server is not None:
            self._server.server.close()  # stop listening; open connections stay for their acks
        await self.writer.drain()
        # Let handlers send the acks for what was just committed.
        for _ in range(100):
            if not any(self._pending_acks.values()):
                break
            await asyncio.sleep(0.01)
        timers = list(self._lost_timers.values())
        if self._unserved_mark is not None:
            timers.append(self._unserved_mark)
        for task in timers:
            task.cancel()
        for task in timers:
            with contextlib.suppress(BaseException):
                await task
        # Subscriptions stop first: none is left blocked in a send to a client that stopped
        # reading (in catch-up or live), which would hold its connection's close.
        await self.hub.close(CLOSE_TIMEOUT)
        if self._server is not None:
            await self._close_connections()
        if self.watcher is not None:
            await asyncio.to_thread(self.watcher.stop)
        await self.writer.stop()
        self.readers.close()
        self.notifier.close()
        log.info("stopped", head=self.writer.head)

    async def _close_connections(self) -> None:
        """Close every connection, each with its close handshake, within CLOSE_TIMEOUT in all.

        A client that stopped reading cannot take the close frame; past the deadline its
        connection (and any download still being sent) is aborted, so shutdown is bounded
        whatever state the clients are in.
        """
        assert self._server is not None
        self.http.stop_streams()
        self.http_service.close_idle()
        self._server.close(close_connections=True)
        closing = asyncio.ensure_future(self._server.wait_closed())
        try:
            await asyncio.wait_for(asyncio.shield(closing), CLOSE_TIMEOUT)
        except TimeoutError:
            stuck = list(self._server.all_connections)
            log.warning("aborting connections that did not close in time", connections=len(stuck))
            for connection in stuck:
                connection.transport.abort()
            self.http.stop_streams(abort=True)
            self.http_service.abort()
            await closing

    def memory_sizes(self) -> dict[str, int]:
        """The sizes of the daemon's per-connection and per-run structures: every one of the
        per-connection ones is back to 0 when no client is connected (memdebug, tests)."""
        return {
            "connections": self.connections,
            "http_connections": len(self.http_service.connections) + len(self.http_service.refusing),
            "pending_acks": len(self._pending_acks),
            "run_writers": len(self._run_writers),
            "lost_timers": len(self._lost_timers),
            "subscriptions": self.hub.subscribers,
            "subscriptions_live": self.hub.live_count,
            "subscription_buffered_events": self.hub.buffered_events(),
            "runs_known_to_hub": len(self.hub.status_of),
            "writer_unanswered": self.writer.unanswered,
        }

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then shut down cleanly; SIGHUP reloads.

        The handlers are in place before start: a SIGTERM while the projections catch up
        still stops cleanly (exit 0) once they have, rather than killing the process.
        """
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        memdebug.install(loop, self.memory_sizes)
        await self.start()
        supervisor: asyncio.Task[None] | None = None
        try:
            if not stop.is_set():
                self.notifier.ready(self.supervisor.status())
                supervisor = asyncio.create_task(self.supervisor.run(stop))
                await stop.wait()
        finally:
            log.info("stopping", connections=self.connections, head=self.writer.head)
            self.notifier.stopping()
            stop.set()
            if supervisor is not None:
                await supervisor
            loop.remove_signal_handler(signal.SIGHUP)
            await self.stop()

    # -- HTTP ---------------------------------------------------------------------

    def _host_ok(self, host: str | None) -> bool:
        """Bound to loopback, only loopback names (and configured ones) are accepted in Host.

        A page from anywhere could otherwise reach the daemon through DNS rebinding: its
        own name, resolved to 127.0.0.1, with the daemon's port.
        """
        if not is_loopback(self.settings.host):
            return True
        parsed = split_host(host) if host else None
        if parsed is None:
            return False
        name = parsed[0]
        return name in LOOPBACK_NAMES or name in {h.lower() for h in self.settings.allow_hosts}

    def _origin_ok(self, origin: str, host: str | None) -> bool:
        """The daemon's own origin (as it is addressed) or a configured one.

        Browsers send Origin on WebSocket upgrades and cross-origin requests; clients that
        are not browsers send none and are not checked here.
        """
        origin = normal_origin(origin)
        if origin in {normal_origin(o) for o in self.settings.allow_origins}:
            return True
        scheme, _, netloc = origin.partition("://")
        parsed = split_host(netloc) if scheme in ("http", "https") else None
        if parsed is None:
            return False  # "null" (sandboxed pages, files) and anything malformed
        name, port = parsed
        port = port if port is not None else (443 if scheme == "https" else 80)
        if port != self.port:
            return False
        if is_loopback(self.settings.host):
            return name in LOOPBACK_NAMES or name in {h.lower() for h in self.settings.allow_hosts}
        addressed = split_host(host) if host else None
        return addressed is not None and addressed[0] == name

    def _refusal(self, request: HttpRequest) -> Response | None:
        """403 for a Host that may be DNS rebinding, or an Origin of another web page."""
        host = request.headers.get("Host")
        if not self._host_ok(host):
            return _json_response(
                HTTPStatus.FORBIDDEN,
                {
                    "error": "forbidden",
                    "message": f"Host '{(host or '')[:100]}' not accepted; see --allow-host",
                },
            )
        origin = request.headers.get("Origin")
        if origin is not None and not self._origin_ok(origin, host):
            return _json_response(
                HTTPStatus.FORBIDDEN,
                {"error": "forbidden", "message": f"Origin '{origin[:100]}' not allowed; see --allow-origin"},
            )
        return None

    async def _process_request(
        self, connection: ServerConnection, request: HttpRequest
    ) -> Response | StreamedResponse | None:
        """The answer to an HTTP request; None for a `/ws` request that may go on to the
        WebSocket handshake."""
        response = await self._route_request(connection, request)
        if (
            isinstance(response, Response)
            and response.status_code in REFUSAL_CODES
            and is_mlflow_path(request.path.split("?", 1)[0])
        ):
            response = mlflow_refusal(response)  # in MLflow's shape, for MLflow's client
        if isinstance(response, Response) and response.status_code in (401, 403):
            log.info(
                "request refused",
                peer=_peer(connection),
                path=request.path.split("?", 1)[0],
                status=response.status_code,
                reason=_json_reason(bytes(response.body)),
            )
        return response

    async def _route_request(
        self, connection: ServerConnection, request: HttpRequest
    ) -> Response | StreamedResponse | None:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        path = request.path.split("?", 1)[0]
        if path == "/ws" and request.method != "GET":
            return method_not_allowed(request.method, ["GET"])
        if path == "/healthz" and request.method not in ("GET", "HEAD"):
            return method_not_allowed(request.method, ["GET"])
        if path == "/ws":
            if self.settings.tokens:
                token = _bearer(request.headers)
                if token is not None and not self._token_ok(token):
                    return _json_response(
                        HTTPStatus.UNAUTHORIZED, {"error": "unauthorized", "message": "bad token"}
                    )
            return None
        if self.tokens.configured:
            refused = self._http_auth_refusal(
                request.method, path, _bearer(request.headers) or console_token(request.path)
            )
            if refused is not None:
                return refused
        if path == "/healthz":
            return self.health_response()
        return await self.http.respond(request)

    def health_response(self) -> Response:
        """`/healthz`: 200 `{"status": "ok"}` while appends can be committed; 503 with a
        status and a reason when they cannot (the writer is down or stuck, the disk is full),
        so a supervisor or a load balancer sees what a client would only see as silence."""
        problem = self.writer.problem()
        if problem is None:
            return _json_response(HTTPStatus.OK, {"status": "ok", "head": self.writer.head})
        status, reason = problem
        body = {"status": status, "reason": reason, "head": self.writer.head}
        return _json_response(HTTPStatus.SERVICE_UNAVAILABLE, body)

    def _token_ok(self, token: str | None) -> bool:
        """Whether `token` is a configured one (any scopes; an empty one never is)."""
        return self.tokens.find(token) is not None

    def _http_auth_refusal(self, method: str, path: str, token: str | None) -> Response | None:
        """401 without a valid bearer token, 403 when its scopes do not cover the request, 429
        when a read is over its token's query rate (`--rate-token-queries`)."""
        found = self.tokens.find(token)
        if found is None:
            return _json_response(
                HTTPStatus.UNAUTHORIZED, {"error": "unauthorized", "message": "a bearer token is required"}
            )
        scope = http_scope(method, path)
        if not found.allows(scope):
            message = (
                f"{method[:10]} {path[:100]}: needs the '{scope}' scope, which {found.name} does not have"
            )
            return _json_response(HTTPStatus.FORBIDDEN, {"error": "forbidden", "message": message})
        limited = http_query(self.token_buckets, found.name, path[:100]) if scope == READ else None
        if limited is not None:
            self.refused[limited.code] += 1
            body = {"error": limited.code, "message": limited.message, "retry_after": limited.retry_after}
            response = _json_response(HTTPStatus.TOO_MANY_REQUESTS, body)
            response.headers["Retry-After"] = str(math.ceil(limited.retry_after))
            return response
        return None

    # -- WebSocket ----------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        too_many = self.settings.limits.too_many_connections(self.connections)
        if too_many is not None:
            log.warning("connection refused", peer=_peer(ws), reason=too_many)
            await ws.close(1013, too_many)  # "try again later"
            return
        conn_id = next(self._conn_ids)
        # The handler runs in a task of its own, so these stay on this connection's lines.
        structlog.contextvars.bind_contextvars(conn_id=conn_id, peer=_peer(ws))
        stats = ConnectionStats()
        _connection_stats.set(stats)
        log.info("connection opened", connections=self.connections + 1)
        self.connections += 1
        try:
            await self._serve_connection(ws, conn_id)
        except ConnectionClosed:
            pass
        finally:
            self.connections -= 1
            self._pending_acks.pop(conn_id, None)
            stats.log_close(ws)
            structlog.contextvars.unbind_contextvars("conn_id", "peer")

    def _authorizer(self, ws: ServerConnection, granted: list[Grant]) -> Callable[[str | None], bool] | None:
        """The token check of this connection's hello: the hello's token, else the upgrade's
        `Authorization: Bearer`; None when no tokens are configured. The grant found goes
        into `granted`."""
        if not self.tokens.configured:
            return None
        headers = ws.request.headers if ws.request else Headers()

        def authorize(token: str | None) -> bool:
            found = self.tokens.find(token if token is not None else _bearer(headers))
            if found is not None:
                granted.append(found)
            return found is not None

        return authorize

    def _guard(self, found: Grant, ws: ServerConnection) -> ConnectionGuard:
        """What the connection of a token may do (OPEN_GRANT: no tokens are configured). Its
        rate limits start where its address's last connection with that token left them."""
        rates = self.settings.rates
        limiter = None
        if rates.enabled:
            token = found.name if found is not OPEN_GRANT else None
            address = ws.remote_address
            peer = str(address[0]) if address else None
            limiter = ConnectionLimiter(rates, self.token_buckets, token, self.clock, peer)
        return ConnectionGuard(found, self.settings.limits, limiter)

    async def _hello(self, ws: ServerConnection, granted: list[Grant] | None = None) -> Connection | None:
        """Wait for hello and answer it; the open connection, or None if refused."""
        granted = granted if granted is not None else []
        conn = Connection(
            self.codec, f"tracklog/{__version__}", self._authorizer(ws, granted), self.hub.frames
        )
        try:
            frame = await asyncio.wait_for(ws.recv(), HELLO_TIMEOUT)
        except TimeoutError:
            await ws.close(1008, "hello expected")
            return None
        outcome = conn.receive(frame)
        if isinstance(outcome, Close):
            await self._send(ws, outcome.data, conn.binary)
            await ws.close(outcome.code, outcome.reason)
            return None
        assert isinstance(outcome, Greeted)
        await self._send(ws, conn.welcome(self.writer.head, *self.settings.limits.told()), conn.binary)
        log.debug("hello", client=outcome.hello.client)
        return conn

    async def _serve_connection(self, ws: ServerConnection, conn_id: int) -> None:
        granted: list[Grant] = []
        conn = await self._hello(ws, granted)
        if conn is None:
            return
        guard = self._guard(granted[0] if granted else OPEN_GRANT, ws)
        binary = conn.binary
        stats = _connection_stats.get() or ConnectionStats()
        acks: asyncio.Queue[PendingAck | None] = asyncio.Queue(MAX_INFLIGHT_APPENDS)
        self._pending_acks[conn_id] = 0
        written: set[str] = set()
        ack_task = asyncio.create_task(self._send_acks(ws, acks, conn, conn_id, written))
        tasks: set[asyncio.Task[None]] = set()
        # Per (namespace, kind): the last check of this connection waiting for its dedup index.
        waiting: dict[tuple[str, str], asyncio.Task[None]] = {}
        subscriptions: dict[int, Subscription] = {}
        try:
            async for frame in ws:
                if self._stopping.is_set():
                    break
                stats.frames += 1
                received = conn.receive(frame)
                refused = guard.refusal(received, len(conn.subscriptions))
                if refused is not None:
                    await self._refuse(ws, conn, conn_id, received, refused, acks)
                    continue
                match received:
                    case AppendFrame():
                        # Decoded on the writer's thread with the rest of its group.
                        future = await self.writer.submit_frame(received.frame)
                        self._pending_acks[conn_id] += 1
                        await acks.put((future, time.perf_counter()))
                    case Send():
                        await self._send(ws, received.data, binary)
                    case Query():
                        task = asyncio.create_task(self._answer(ws, received, conn))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    case Check():
                        msg = received
                        loading = self.writer.dedup_ready(msg)
                        before = waiting.get((msg.namespace, msg.kind))
                        if loading is None and (before is None or before.done()):
                            # Queued here, in the connection's order; answered when committed.
                            checked = await self.writer.submit_check(msg)
                            task = asyncio.create_task(self._answer_check(ws, checked, msg.ref, conn))
                        else:
                            # Its index is still loading: wait for it alone (this connection's later
                            # checks of that index queue behind it; everything else goes on).
                            later = self._check_when_loaded(ws, msg, conn, loading, before)
                            task = waiting[(msg.namespace, msg.kind)] = asyncio.create_task(later)
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    case Subscribe():
                        await self._subscribe(ws, received, conn, subscriptions)
                    case Unsubscribe():
                        sub = subscriptions.pop(received.sub, None)
                        if sub is not None:
                            await self.hub.unsubscribe([sub])
                        await self._send(ws, conn.unsubscribed(received), binary)
                    case Greeted() | Close():
                        raise AssertionError("the handshake is over")  # pragma: no cover
                    case _:
                        assert_never(received)
        finally:
            conn.close()
            if guard.limiter is not None:
                guard.limiter.close()
            await self.hub.unsubscribe(subscriptions.values())
            await acks.put(None)
            # Acks for appends already handed to the writer are still sent if the
            # connection is open; then the sender ends by itself.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ack_task, 30)
            if not ack_task.done():
                ack_task.cancel()
            # After the acks: the ack sender is what records the runs this connection wrote.
            self._forget_writer(conn_id, written)
            for task in list(tasks):
                task.cancel()
            for task in list(tasks):
                with contextlib.suppress(BaseException):
                    await task

    # -- subscriptions ----------------------------------------------------------------

    async def _subscribe(
        self, ws: ServerConnection, msg: Subscribe, conn: Connection, subscriptions: dict[int, Subscription]
    ) -> None:
        flt = Filter(msg.filter)
        binary = conn.binary

        async def send(frame: bytes) -> None:
            await ws.send(frame, text=not binary)

        async def read_log(after: int, limit: int, f: Filter) -> tuple[list[Any], int, int]:
            if f.everything:
                return await self.log_pages.read(after, limit)
            return await self._scan_log(after, limit, f)

        # `subscribed` goes out before the subscription's task can send anything.
        state, frame = conn.subscribed(msg, self.hub.next_id(), self.hub.published_seq)
        await self._send(ws, frame, binary)
        subscriptions[state.sub] = self.hub.subscribe(state, flt, send, read_log)

    async def _scan_log(
        self, after: int, limit: int, f: Filter | None = None
    ) -> tuple[list[StoredEvent], int, int]:
        """A subscription's read of the log (`ReadModel.scan_events`). On a shared PostgreSQL
        database, a read that fails while the server restarts is tried again (the reader
        reconnects) rather than ending the subscription. No `f`: every event."""
        runs, types, pipelines = (f.runs, f.types, f.pipelines) if f is not None else (None, None, None)
        for attempt in itertools.count():
            try:
                result: tuple[list[StoredEvent], int, int] = await self.readers.call(
                    lambda model: model.scan_events(after, limit, runs, types, pipelines)
                )
                return result
            except errors.TracklogError:
                if self.watcher is None or attempt >= READ_RETRIES or self._stopping.is_set():
                    raise
                if attempt == 0:
                    log.warning("a subscription's read of the log failed; trying again", after=after)
                await asyncio.sleep(READ_RETRY_SECONDS)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- liveness: runs whose writers are all gone become `lost` -----------------------

    async def _note_runs(self, conn_id: int, runs: Iterable[str], written: set[str]) -> None:
        """This connection writes to these runs, so none of them is without a writer.

        (A run already marked `lost` is resumed by the store, in the transaction of the
        events that come for it.)
        """
        for run in runs:
            if run in written:
                continue
            written.add(run)
            self._run_writers.setdefault(run, set()).add(conn_id)
            timer = self._lost_timers.pop(run, None)
            if timer is not None:
                timer.cancel()
        if self.watcher is not None:
            self.watcher.leased_runs = frozenset(self._run_writers)

    def _forget_writer(self, conn_id: int, written: set[str]) -> None:
        for run in written:
            writers = self._run_writers.get(run)
            if writers is None:
                continue
            writers.discard(conn_id)
            if not writers:
                del self._run_writers[run]
                if not self._stopping.is_set() and run not in self._lost_timers:
                    self._lost_timers[run] = asyncio.create_task(self._mark_lost_later(run))
        if self.watcher is not None:
            self.watcher.leased_runs = frozenset(self._run_writers)

    async def _mark_lost_later(self, run: str) -> None:
        """Mark `run` lost after `lost_after` without a writer. On a shared database the
        store appends the mark only if no other daemon serves a writer of the run (its
        lease, under the log's lock); if one does, this daemon looks again later."""
        lost_after = self.settings.lost_after
        daemon_id = getattr(self.backend, "daemon_id", "")
        try:
            while True:
                await asyncio.sleep(lost_after)
                if run in self._run_writers or self.hub.status_of.get(run) != RUNNING:
                    return
                mark = LostMark(events=[lost_event(run)], daemon=daemon_id, lost_after=lost_after)
                result = await (await self.writer.submit(mark))
                if isinstance(result, errors.ProtocolError):  # not committed (the database is away)
                    log.warning("marking a run lost failed; trying again later", run=run, error=str(result))
                    continue
                if result.ack.accepted == 0 and self.watcher is not None:
                    log.debug("run written through another daemon: not lost", run=run)
                    continue
                log.info("run lost: no writer came back", run=run, after=lost_after)
                return
        finally:
            if self._lost_timers.get(run) is asyncio.current_task():
                del self._lost_timers[run]

    def _mark_unserved(self, runs: list[str]) -> None:
        """Mark lost the runs the log watcher found with no lease renewed for `lost_after`
        (their daemon is gone), except those this daemon serves or times itself. One mark
        at a time: a scan while one is queued is dropped (the next finds the runs again)."""
        if self._stopping.is_set() or (self._unserved_mark is not None and not self._unserved_mark.done()):
            return
        runs = [r for r in runs if r not in self._run_writers and r not in self._lost_timers]
        if runs:
            self._unserved_mark = asyncio.create_task(self._mark_runs_of_gone_daemons(runs))

    async def _mark_runs_of_gone_daemons(self, runs: list[str]) -> None:
        """Append the lost marks, counting every daemon's leases (this one's too): of the
        daemons that found the same runs, the first marks them, and the others' marks find
        them no longer running, all decided under the log's lock."""
        lost_after = self.settings.lost_after
        mark = LostMark(events=[lost_event(run) for run in runs], daemon="", lost_after=lost_after)
        result = await (await self.writer.submit(mark))
        if isinstance(result, errors.ProtocolError):  # not committed: the next scan tries again
            log.warning("marking runs of a gone daemon lost failed", runs=len(runs), error=str(result))
        elif result.ack.accepted:
            marked = sorted({e.run for e in result.events if e.type == "run.finished" and e.run})
            log.info(
                "runs lost: no daemon serves their writers any more",
                runs=marked[:MARKED_RUNS_LOGGED],
                marked=result.ack.accepted,
                after=lost_after,
            )
        else:
            log.debug("runs of a gone daemon already ended or served again: not marked", runs=runs)

    async def _send_acks(
        self,
        ws: ServerConnection,
        acks: asyncio.Queue[PendingAck | None],
        conn: Connection,
        conn_id: int,
        written: set[str],
    ) -> None:
        closed = False
        stats = _connection_stats.get() or ConnectionStats()
        while True:
            pending = await acks.get()
            if pending is None:
                return
            future, submitted = pending
            result = await future
            self._pending_acks[conn_id] = self._pending_acks.get(conn_id, 1) - 1
            stats.count(result)
            waited = time.perf_counter() - submitted
            if waited > self.settings.slow_request_seconds:
                _log_slow("append", waited, result)
            if isinstance(result, AppendResult) and result.runs:
                await self._note_runs(conn_id, result.runs, written)
            # Made even when closed: the connection counts the appends still to be acked.
            frame = conn.ack(result.ack if isinstance(result, AppendResult) else result)
            if closed:
                continue
            try:
                await self._send(ws, frame, conn.binary)
            except ConnectionClosed:
                closed = True  # keep draining: the appends are committed either way

    async def _refuse(
        self,
        ws: ServerConnection,
        conn: Connection,
        conn_id: int,
        request: object,
        refused: errors.ProtocolError,
        acks: asyncio.Queue[PendingAck | None],
    ) -> None:
        """Answer a request the guard refused: an append in its turn among the acks (a
        connection's appends are answered in order), anything else at once."""
        self.refused[refused.code] += 1
        # Rate limits can refuse many requests a second: those only at debug level.
        (log.debug if refused.code == errors.RATE_LIMITED else log.info)(
            "request refused", code=refused.code, reason=refused.message
        )
        if isinstance(request, AppendFrame):
            done: asyncio.Future[AppendResult | errors.ProtocolError] = (
                asyncio.get_running_loop().create_future()
            )
            done.set_result(refused)
            self._pending_acks[conn_id] += 1
            await acks.put((done, time.perf_counter()))
        else:
            await self._send(ws, conn.error(refused), conn.binary)

    async def _answer(self, ws: ServerConnection, q: Query, conn: Connection) -> None:
        started = time.perf_counter()
        try:
            frame = conn.answer(self.settings.limits.check_rows(await self.readers.query(q), q))
            took = time.perf_counter() - started
            if took > self.settings.slow_request_seconds:
                log.warning("slow request", op="query", q=q.q, ref=q.ref, ms=round(took * 1000, 1))
        except errors.ProtocolError as exc:
            frame = conn.error(exc, q.ref)
        except Exception as exc:
            log.exception("query failed", q=q.q)
            frame = conn.error(errors.InternalError(f"query failed: {type(exc).__name__}"), q.ref)
        with contextlib.suppress(ConnectionClosed):
            await self._send(ws, frame, conn.binary)

    async def _answer_check(
        self,
        ws: ServerConnection,
        future: asyncio.Future[CheckResult | errors.ProtocolError],
        ref: int | None,
        conn: Connection,
    ) -> None:
        result = await future
        if isinstance(result, CheckResult):
            frame = conn.answer(result.checked)
        else:
            result.ref = ref
            frame = conn.error(result)
        with contextlib.suppress(ConnectionClosed):
            await self._send(ws, frame, conn.binary)

    async def _check_when_loaded(
        self,
        ws: ServerConnection,
        msg: Check,
        conn: Connection,
        loading: asyncio.Event | None,
        before: asyncio.Task[None] | None,
    ) -> None:
        """Queue a check once its dedup index is loaded and the connection's earlier checks are queued."""
        if before is not None:
            with contextlib.suppress(BaseException):
                await before
        if loading is not None:
            await loading.wait()
        checked = await self.writer.submit_check(msg)
        await self._answer_check(ws, checked, msg.ref, conn)

    @staticmethod
    async def _send(ws: ServerConnection, frame: bytes, binary: bool) -> None:
        await ws.send(frame, text=not binary)


#: An append handed to the writer: its future, and when it was submitted (for slow ones).
PendingAck = tuple[asyncio.Future[AppendResult | errors.ProtocolError], float]


class ConnectionStats:
    """What one connection did, for its close line: frames read, events accepted, rejected."""

    __slots__ = ("appends", "duplicates", "errors", "events", "frames", "opened", "rejected")

    def __init__(self) -> None:
        self.opened = time.perf_counter()
        self.frames = 0
        self.appends = 0
        self.events = 0
        self.duplicates = 0
        self.rejected = 0
        self.errors = 0

    def count(self, result: AppendResult | errors.ProtocolError) -> None:
        if isinstance(result, AppendResult):
            ack = result.ack
            self.appends += 1
            self.events += ack.accepted
            if ack.duplicates:
                self.duplicates += len(ack.duplicates)
            if ack.rejected:
                self.rejected += len(ack.rejected)
        else:
            self.errors += 1

    def log_close(self, ws: ServerConnection) -> None:
        """One line per connection: "connection rejected" when the daemon refused it (a
        policy close: no hello, a bad token; or a frame too large), else "connection closed"."""
        code = ws.close_code
        sent = ws.protocol.close_sent
        refused = sent is not None and sent.code in (1008, 1009) and ws.protocol.close_rcvd_then_sent is False
        (log.warning if refused else log.info)(
            "connection rejected" if refused else "connection closed",
            seconds=round(time.perf_counter() - self.opened, 3),
            frames=self.frames,
            appends=self.appends,
            events=self.events,
            duplicates=self.duplicates,
            rejected=self.rejected,
            errors=self.errors,
            code=code,
            reason=ws.close_reason or None,
        )


#: The stats of the connection whose handler is running (each handler is a task of its own).
#: (None for handlers run some other way, as tests may: they count into stats of their own.)
_connection_stats: contextvars.ContextVar[ConnectionStats | None] = contextvars.ContextVar(
    "connection_stats", default=None
)


def _log_slow(op: str, seconds: float, result: AppendResult | errors.ProtocolError) -> None:
    ref = result.ack.ref if isinstance(result, AppendResult) else result.ref
    log.warning("slow request", op=op, ref=ref, ms=round(seconds * 1000, 1))


def _peer(connection: ServerConnection) -> str | None:
    address = connection.remote_address
    if not address:
        return None
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _json_reason(body: bytes) -> str | None:
    try:
        message = msgspec.json.decode(body or b"{}").get("message")
    except (msgspec.DecodeError, AttributeError):
        return None
    return message if isinstance(message, str) else None


def server_tls(settings: Settings) -> CertificateSwitch | None:
    """The TLS certificate of `--tls-cert`/`--tls-key` (None: plain ws:// and http://).
    Raises TracklogError naming the file when it cannot be loaded."""
    if settings.tls_cert is None and settings.tls_key is None:
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise errors.TracklogError("TLS needs both --tls-cert and --tls-key")
    return CertificateSwitch(load_certificate(settings.tls_cert, settings.tls_key))


def _bearer(headers: Headers) -> str | None:
    value = headers.get("Authorization")
    if value and value.lower().startswith("bearer "):
        return value[7:].strip()
    return None


def _json_response(status: HTTPStatus, body: Any) -> Response:
    payload = _json.encode(body)
    headers = Headers(
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
            ("Cache-Control", "no-store"),
        ]
    )
    return Response(status.value, status.phrase, headers, payload)
