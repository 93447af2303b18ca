"""The web console's files (`GET /`, `/static/*`), served from the package's static folder.

The page is static: it follows the daemon over the WebSocket like any other client. Its
charts are drawn by plotly.js, served from the `plotly` Python package the daemon extra
installs (never copied into this repository, never fetched from a CDN): the page works
offline, and its URL names the version, so a browser may cache it for good. With
tokens configured, a browser cannot send a bearer header on a page load, so the console's
own paths also take the token as a `?token=` URL parameter; the page passes it on in its
`hello` and in its asset URLs. Only these paths take it from the URL.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
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
        # plotly.js adds <style> elements of its own (hover labels, mode bar): inline styles
        # only; scripts stay 'self' alone (no eval: the console uses plotly's SVG traces).
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:;"
        " style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    ),
    ("Referrer-Policy", "no-referrer"),
)

#: Where index.html puts the query string its asset URLs carry (the token, when given).
ASSET_QUERY: Final = b"__ASSET_QUERY__"
#: Where index.html puts the installed plotly version, which names the chart library's file.
PLOTLY_VERSION_MARK: Final = b"__PLOTLY_VERSION__"
#: Long-lived caching for files whose name carries their version.
IMMUTABLE: Final = "public, max-age=31536000, immutable"


@functools.cache
def plotly_version() -> str | None:
    """The installed plotly package's version, or None when it is not installed."""
    try:
        return importlib.metadata.version("plotly")
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def _plotly_js() -> bytes | None:
    """plotly.min.js as the plotly package ships it (found without importing plotly)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        try:
            return (Path(folder) / "package_data" / "plotly.min.js").read_bytes()
        except OSError:
            continue
    return None


def plotly_file_name() -> str:
    """The name the page loads plotly.js under: `plotly-VERSION.min.js`."""
    return f"plotly-{plotly_version() or 'missing'}.min.js"


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
    cache = "no-store"
    if name == plotly_file_name() and plotly_version() is not None:
        payload = _plotly_js()
        cache = IMMUTABLE
    else:
        payload = _read(name)
    if payload is None:
        return None
    if name == "index.html":
        query = ("?token=" + quote(token, safe="")) if token else ""
        payload = payload.replace(ASSET_QUERY, query.encode())
        payload = payload.replace(PLOTLY_VERSION_MARK, (plotly_version() or "missing").encode())
    headers = Headers(
        [
            ("Content-Type", CONTENT_TYPES[Path(name).suffix]),
            ("Content-Length", str(len(payload))),
            ("Cache-Control", cache),
            *SECURITY_HEADERS,
        ]
    )
    return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, payload)
