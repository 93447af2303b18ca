"""Uploading a file's bytes to the daemon's artifact store, and downloading them back.

`run.log_artifact(kind, path, upload=True)` calls `upload_file`: the file is hashed first
(SHA-256, read a block at a time), then sent with `PUT /api/blobs/sha256:<hex>` streamed
from the file, never whole in memory. The daemon checks the bytes against that digest
(other bytes are refused, nothing kept) and stores them once: uploading what is already
there is answered at once. `download_blob` streams a blob into a hidden file beside the
destination, checks its digest, and renames it into place, so a broken download leaves
nothing at the destination.

These are blocking HTTP calls on the daemon's port (ws://HOST:PORT/ws becomes
http://HOST:PORT, wss:// https://, with the client's TLS settings and token).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import uuid
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit

from tracklog.protocol import errors

from .tls import ssl_context

#: Bytes read from the file (or the socket) at a time.
BLOCK_BYTES: Final = 1024 * 1024
#: Seconds without progress before an upload or download is given up.
TIMEOUT: Final = 60.0


class ArtifactTransferError(errors.TracklogError):
    """An upload or a download the daemon refused or that broke; the message says which."""


def file_digest(path: str | os.PathLike[str]) -> tuple[str, int]:
    """`sha256:<hex>` and the size of a file, read a block at a time."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK_BYTES):
            digest.update(block)
            size += len(block)
    return "sha256:" + digest.hexdigest(), size


def _connection(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port
    context = ssl_context(url)
    if context is not None:
        return http.client.HTTPSConnection(host, port, timeout=TIMEOUT, context=context)
    return http.client.HTTPConnection(host, port, timeout=TIMEOUT)


def _headers(token: str | None, **extra: str) -> dict[str, str]:
    headers = dict(extra)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _refusal(response: http.client.HTTPResponse, what: str) -> ArtifactTransferError:
    body = response.read(64 * 1024)
    try:
        message = json.loads(body).get("message") or body.decode(errors="replace")
    except (ValueError, AttributeError):
        message = body.decode(errors="replace")
    return ArtifactTransferError(f"{what}: the daemon answered {response.status}: {message[:500]}")


def upload_file(url: str, token: str | None, path: str | os.PathLike[str]) -> tuple[str, int]:
    """Store the file's bytes in the daemon's artifact store; its digest and size."""
    digest, size = file_digest(path)
    connection = _connection(url)
    try:
        with open(path, "rb") as handle:
            headers = _headers(
                token, **{"Content-Length": str(size), "Content-Type": "application/octet-stream"}
            )
            # http.client sends a file object a block at a time.
            connection.request("PUT", f"/api/blobs/{digest}", body=handle, headers=headers)
            response = connection.getresponse()
            if response.status not in (200, 201):
                raise _refusal(response, f"uploading {os.fspath(path)}")
            answer: dict[str, Any] = json.loads(response.read())
    except OSError as exc:
        raise ArtifactTransferError(f"uploading {os.fspath(path)}: {type(exc).__name__}: {exc}") from exc
    finally:
        connection.close()
    if answer.get("blob") != digest:
        raise ArtifactTransferError(f"uploading {os.fspath(path)}: the daemon stored {answer.get('blob')}")
    return digest, size


def download_blob(url: str, token: str | None, digest: str, dest: str | os.PathLike[str]) -> Path:
    """Stream a blob into `dest` (whole, checked against its digest, or not at all)."""
    target = Path(dest)
    part = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    connection = _connection(url)
    try:
        connection.request("GET", f"/api/blobs/{quote(digest, safe=':')}", headers=_headers(token))
        response = connection.getresponse()
        if response.status != 200:
            raise _refusal(response, f"downloading {digest}")
        hashed = hashlib.sha256()
        with open(part, "xb") as out:
            while block := response.read(BLOCK_BYTES):
                hashed.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if "sha256:" + hashed.hexdigest() != digest:
            raise ArtifactTransferError(
                f"downloading {digest}: the bytes received are sha256:{hashed.hexdigest()}"
            )
        os.replace(part, target)
    except OSError as exc:
        raise ArtifactTransferError(f"downloading {digest}: {type(exc).__name__}: {exc}") from exc
    finally:
        connection.close()
        part.unlink(missing_ok=True)
    return target


def http_base(url: str) -> str:
    """The daemon's HTTP URL of its WebSocket URL (scheme and host; the path is not used)."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    return f"{scheme}://{parts.netloc}"
