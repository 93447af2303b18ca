"""A test-only HTTP front for the MLflow handlers, until the daemon's HTTP layer mounts them:
a threaded `http.server` that hands each request to `handle` on the daemon's event loop.

It stands where the real HTTP layer will (parse the request, call `handle`, send the JSON),
so the real `mlflow` client can be pointed at the handlers now.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tracklog.daemon.mlflow import Download, MlflowContext, handle, handle_artifacts, matches_artifacts


class Bridge:
    def __init__(self, context: MlflowContext, loop: asyncio.AbstractEventLoop) -> None:
        self.context = context
        self.loop = loop
        self.calls: list[tuple[str, str]] = []
        bridge = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                bridge.calls.append((self.command, parts.path))
                if matches_artifacts(parts.path):

                    async def chunks() -> Any:
                        for start in range(0, len(raw), 65536):
                            yield raw[start : start + 65536]

                    call: Any = handle_artifacts(
                        self.command,
                        parts.path,
                        query,
                        chunks() if self.command == "PUT" else None,
                        bridge.context,
                    )
                else:
                    call = handle(
                        self.command, parts.path, query, json.loads(raw) if raw else None, bridge.context
                    )
                status, answer = asyncio.run_coroutine_threadsafe(call, bridge.loop).result(60)
                if isinstance(answer, Download):
                    self.send_response(status)
                    self.send_header("Content-Type", answer.content_type)
                    self.send_header("Content-Length", str(answer.size))
                    self.end_headers()
                    for chunk in answer.chunks:
                        self.wfile.write(chunk)
                    return
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Bridge:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(30)
