"""The web console's files (`GET /`, `/static/*`), served from the package's static folder.

The page is static: it follows the daemon over the WebSocket like any other client. Its
charts are drawn by uPlot (https://github.com/leeoniya/uPlot, MIT), vendored in the static
folder with its licence (`uPlot-LICENSE`): no PyPI package ships it, and plotly.js, which
the `plotly` package ships, took 1 to 3 s to compile (4.8 MB) and 25 to 130 ms to redraw a
20-line chart where uPlot takes about 50 KB and a few milliseconds (bench/console.py).
Nothing is fetched from a CDN: the page works offline.

Caching: index.html names each asset with its content's hash (`/static/app.js?v=HASH`);
a request carrying the current hash is answered as immutable for a year, so a second visit
takes every script from the browser's cache (and Chromium's compiled-code cache); any other
request gets `no-cache` with an ETag, answered 304 while the file is unchanged. Text assets
are sent gzip-compressed to a browser that accepts it.

With tokens configured, a browser cannot send a bearer header on a page load, so the
console's own paths also take the token as a `?token=` URL parameter; the page passes it on
in its `hello` and in its asset URLs. Only these paths take it from the URL.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import re
from dataclasses import dataclass
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
#: Types worth compressing (the images are compressed already).
COMPRESSIBLE: Final = frozenset({".html", ".js", ".css", ".svg"})

#: The page loads only its own files and talks only to its own daemon; the token may be
#: in the URL, so no Referer carries it anywhere.
SECURITY_HEADERS: Final = (
    ("X-Content-Type-Options", "nosniff"),
    (
        "Content-Security-Policy",
        # Scripts are 'self' alone (no eval); the page sets a few inline styles (colour
        # swatches, the readout's position).
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:;"
        " style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    ),
    ("Referrer-Policy", "no-referrer"),
)

#: In index.html, after each asset's path: where its `?v=HASH` (and the token) go.
ASSET_QUERY: Final = b"__ASSET_QUERY__"
_ASSET_REF: Final = re.compile(rb"/static/([A-Za-z0-9._-]+)" + re.escape(ASSET_QUERY))
#: Long-lived caching for a URL that names its content's hash.
IMMUTABLE: Final = "public, max-age=31536000, immutable"
#: Anything else may be cached but is checked with the daemon (ETag) before each use.
REVALIDATE: Final = "no-cache"


def is_console_path(path: str) -> bool:
    return path in ("/", "/index.html") or path.startswith("/static/")


def console_token(target: str) -> str | None:
    """The `?token=` of a request for one of the console's paths (None for any other path)."""
    parts = urlsplit(target)
    if not is_console_path(parts.path):
        return None
    values = parse_qs(parts.query).get("token")
    return values[-1] if values else None


@dataclass(frozen=True)
class StaticFile:
    """A file of the static folder as served: its bytes, gzip-compressed bytes and hash."""

    payload: bytes
    compressed: bytes | None
    digest: str

    @property
    def etag(self) -> str:
        return f'"{self.digest}"'


@functools.cache
def static_file(name: str) -> StaticFile | None:
    """A file of the static folder by plain name (no folders, so no way out of it), read once."""
    if (
        not name
        or "/" in name
        or "\\" in name
        or name.startswith(".")
        or Path(name).suffix not in CONTENT_TYPES
    ):
        return None
    try:
        payload = (STATIC_DIR / name).read_bytes()
    except OSError:
        return None
    compressed = None
    if Path(name).suffix in COMPRESSIBLE and len(payload) > 1024:
        # mtime=0: the same bytes on every start, so the ETag of the compressed form is stable.
        compressed = gzip.compress(payload, compresslevel=9, mtime=0)
    return StaticFile(payload, compressed, hashlib.sha256(payload).hexdigest()[:16])


def _index(token: str | None) -> bytes | None:
    """index.html with each asset's URL naming its hash (and the token, when given)."""
    page = static_file("index.html")
    if page is None:
        return None
    extra = ("&token=" + quote(token, safe="")) if token else ""

    def versioned(match: re.Match[bytes]) -> bytes:
        asset = static_file(match.group(1).decode())
        digest = asset.digest if asset is not None else "missing"
        return b"/static/" + match.group(1) + f"?v={digest}{extra}".encode()

    return _ASSET_REF.sub(versioned, page.payload)


def _accepts_gzip(accept_encoding: str) -> bool:
    for part in accept_encoding.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def console_response(
    path: str, token: str | None, version: str | None = None, request_headers: Headers | None = None
) -> Response | None:
    """The file a console path names, or None when there is no such file (a 404 for the caller).

    `version` is the request's `?v=`; `request_headers` give Accept-Encoding and If-None-Match.
    """
    accept = request_headers.get("Accept-Encoding", "") if request_headers is not None else ""
    if path in ("/", "/index.html"):
        payload = _index(token)
        if payload is None:
            return None
        return _answer(HTTPStatus.OK, payload, "index.html", "no-store", [])
    name = path.removeprefix("/static/")
    asset = static_file(name)
    if asset is None:
        return None
    cache = IMMUTABLE if version == asset.digest else REVALIDATE
    gzipped = asset.compressed is not None and _accepts_gzip(accept)
    # The two encodings are two representations: each has its own ETag.
    etag = asset.etag[:-1] + '-gz"' if gzipped else asset.etag
    extra = [("ETag", etag)]
    if asset.compressed is not None:
        extra.append(("Vary", "Accept-Encoding"))
    if request_headers is not None and etag in _etags(request_headers.get("If-None-Match", "")):
        return _answer(HTTPStatus.NOT_MODIFIED, b"", name, cache, extra)
    if gzipped:
        assert asset.compressed is not None
        return _answer(HTTPStatus.OK, asset.compressed, name, cache, [*extra, ("Content-Encoding", "gzip")])
    return _answer(HTTPStatus.OK, asset.payload, name, cache, extra)


def _etags(header: str) -> set[str]:
    return {part.strip().removeprefix("W/") for part in header.split(",") if part.strip()}


def _answer(
    status: HTTPStatus, payload: bytes, name: str, cache: str, extra: list[tuple[str, str]]
) -> Response:
    length = [] if status == HTTPStatus.NOT_MODIFIED else [("Content-Length", str(len(payload)))]
    headers = Headers(
        [
            ("Content-Type", CONTENT_TYPES[Path(name).suffix]),
            *length,
            ("Cache-Control", cache),
            *extra,
            *SECURITY_HEADERS,
        ]
    )
    return Response(status.value, status.phrase, headers, payload)
