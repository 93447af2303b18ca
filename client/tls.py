"""TLS for the client: `wss://` and `https://` URLs, with a custom CA when one is named.

A daemon served with `--tls-cert/--tls-key` is reached as `wss://HOST:PORT/ws`. Its
certificate is checked against the system's CAs, or against the PEM file named by
`$TRACKLOG_CA` (a private CA, or a self-signed certificate itself), which the command
line's `--ca FILE` also sets. Every connection the client opens takes its options from
`connect_options`, so all of them (the sender, requests, queries, subscriptions, watch,
exports) agree on what is trusted.
"""

from __future__ import annotations

import os
import ssl
from typing import Any, Final
from urllib.parse import urlsplit

#: The environment variable naming a PEM file of certificates to trust instead of the system's.
CA_VARIABLE: Final = "TRACKLOG_CA"
SECURE_SCHEMES: Final = frozenset({"wss", "https"})


def is_secure(url: str) -> bool:
    return urlsplit(url).scheme.lower() in SECURE_SCHEMES


def ssl_context(url: str, ca_file: str | None = None) -> ssl.SSLContext | None:
    """The TLS context for `url` (None for ws:// and http://): the system's CAs, or only
    the certificates in `ca_file` (default `$TRACKLOG_CA`). Host names are always checked."""
    if not is_secure(url):
        return None
    ca = ca_file or os.environ.get(CA_VARIABLE) or None
    return ssl.create_default_context(cafile=ca)


def connect_options(url: str) -> dict[str, Any]:
    """Keyword arguments for websockets' `connect` to `url`: its TLS context, if it has one
    (websockets refuses an `ssl` argument for a ws:// URL, so none is given then)."""
    context = ssl_context(url)
    return {} if context is None else {"ssl": context}


def add_ca_option(parser: Any) -> None:
    """`--ca FILE` on a command that talks to the daemon (sets `$TRACKLOG_CA` for the command)."""
    parser.add_argument(
        "--ca",
        default=None,
        metavar="PEM",
        help=f"trust the certificates in this file for wss:// and https:// (also ${CA_VARIABLE})",
    )


def apply_ca_option(ca: str | None) -> None:
    """Make `--ca` the CA every connection of this command trusts."""
    if ca:
        os.environ[CA_VARIABLE] = ca
