"""The web console's files (`GET /`, `/static/*`), served from the package's static folder.

The page is static: it follows the daemon over the WebSocket like any other client. With
tokens configured, a browser cannot send a bearer header on a page load, so the console's
own paths also take the token as a `?token=` URL parameter; the page passes it on in its
`hello` and in its asset URLs. Only these paths take it from the URL.
"""

from __future__ import annotations

import functools
from http import HTTPStatus
from pathlib import Path
from typing import Final
from urllib.parse import parse_qs, quote, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Response

STATIC_DIR: Final = Path(__file__).parent / "static"

CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

#: The page loads only its own files and talks only to its own daemon; the token may be
#: in the URL, so no Referer carries it anywhere.
SECURITY_HEADERS: Final = (
    ("X-Content-Type-Options", "nosniff"),
    (
        "Content-Security-Policy",
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'",
    ),
    ("Referrer-Policy", "no-referrer"),
)

#: Where index.html puts the query string its asset URLs carry (the token, when given).
ASSET_QUERY: Final = b"__ASSET_QUERY__"


def is_console_path(path: str) -> bool:
    return path in ("/", "/index.html") or path.startswith("/static/")


def console_token(target: str) -> str | None:
    """The `?token=` of a request for one of the console's paths (None for any other path)."""
    parts = urlsplit(target)
    if not is_console_path(parts.path):
        return None
    values = parse_qs(parts.query).get("token")
    return values[-1] if values else None


@functools.cache
def _read(name: str) -> bytes | None:
    """A file of the static folder by plain name (no folders, so no way out of it)."""
    if (
        not name
        or "/" in name
        or "\\" in name
        or name.startswith(".")
        or Path(name).suffix not in CONTENT_TYPES
    ):
        return None
    try:
        return (STATIC_DIR / name).read_bytes()
    except OSError:
        return None


def console_response(path: str, token: str | None) -> Response | None:
    """The file a console path names, or None when there is no such file (a 404 for the caller)."""
    name = "index.html" if path in ("/", "/index.html") else path.removeprefix("/static/")
    payload = _read(name)
    if payload is None:
        return None
    if name == "index.html":
        query = ("?token=" + quote(token, safe="")) if token else ""
        payload = payload.replace(ASSET_QUERY, query.encode())
    headers = Headers(
        [
            ("Content-Type", CONTENT_TYPES[Path(name).suffix]),
            ("Content-Length", str(len(payload))),
            ("Cache-Control", "no-store"),
            *SECURITY_HEADERS,
        ]
    )
    return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, payload)
