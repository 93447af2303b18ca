"""The daemon's TLS certificate, loaded at start and again on SIGHUP.

A certificate is renewed every 60 to 90 days (Let's Encrypt); restarting the daemon for
it would drop every connection. So the context the listening socket was opened with
(`CertificateSwitch.listening`) never holds a certificate of its own choosing: its
`sni_callback`, which OpenSSL calls in every handshake (with or without SNI), moves the
new connection to the context of the certificate loaded last. A reload builds a whole new
context from the files and only then puts it in place: a missing, broken or mismatched
pair is refused before anything changes, and connections already open keep the
certificate they were made with.
"""

from __future__ import annotations

import datetime
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from tracklog.protocol import errors

_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----", re.DOTALL)


def load_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context serving `cert` (a PEM chain) with `key`; TracklogError naming both
    files when they cannot be read, are not PEM, or the key is not the certificate's."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise errors.TracklogError(f"cannot load the TLS certificate {cert} or key {key}: {exc}") from exc
    return context


@dataclass(frozen=True)
class Certificate:
    """A loaded certificate pair: its context, and its end of validity when it could be read."""

    context: ssl.SSLContext
    cert: Path
    key: Path
    #: notAfter of the chain's first certificate, ISO 8601 UTC (None: not read).
    not_after: str | None


def load_certificate(cert: Path, key: Path) -> Certificate:
    """`load_context`, with the certificate's notAfter for the logs."""
    context = load_context(cert, key)
    try:
        expires = not_after(cert.read_bytes())
    except OSError:
        expires = None  # the file changed under us: the context is loaded, only the log loses it
    return Certificate(context, cert, key, expires)


class CertificateSwitch:
    """The listening socket's TLS context, handing each new handshake the current certificate."""

    def __init__(self, first: Certificate) -> None:
        self.current = first
        #: The context given to the server: it is `first`'s, with the switch as its callback.
        self.listening = first.context
        self.listening.sni_callback = self._choose

    def _choose(self, connection: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        """In each handshake: serve the certificate loaded last (None: go on)."""
        current = self.current.context
        if current is not context:
            connection.context = current

    def reload(self, cert: Path, key: Path) -> Certificate:
        """Load the pair again; new handshakes get it. TracklogError (the old certificate
        stays) when it cannot be loaded."""
        loaded = load_certificate(cert, key)
        self.current = loaded
        return loaded


def not_after(pem: bytes) -> str | None:
    """The notAfter (ISO 8601, UTC) of the first certificate in a PEM file; None when it
    cannot be read. Read from the DER without a dependency: Certificate, tbsCertificate,
    then past version, serial, signature and issuer, validity's second time."""
    found = _PEM_CERTIFICATE.search(pem)
    if found is None:
        return None
    try:
        der = ssl.PEM_cert_to_DER_cert(found.group().decode("ascii"))
        _, body, _ = _der_item(der, 0)  # Certificate
        _, at, _ = _der_item(der, body)  # tbsCertificate
        tag, _, end = _der_item(der, at)
        if tag == 0xA0:  # [0] version, absent in v1 certificates
            at = end
        for _ in range(3):  # serialNumber, signature, issuer
            at = _der_item(der, at)[2]
        _, validity, _ = _der_item(der, at)
        after = _der_item(der, _der_item(der, validity)[2])
        tag, start, end = after
        text = der[start:end].decode("ascii")
        if tag == 0x17:  # UTCTime: YYMMDDHHMMSSZ, years 1950 to 2049
            year = int(text[:2])
            text = str(1900 + year if year >= 50 else 2000 + year) + text[2:]
        elif tag != 0x18:  # GeneralizedTime: YYYYMMDDHHMMSSZ
            return None
        moment = datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=datetime.UTC)
    except (ValueError, IndexError, UnicodeDecodeError):
        return None
    return moment.isoformat().replace("+00:00", "Z")


def _der_item(der: bytes, at: int) -> tuple[int, int, int]:
    """The DER item at `at`: its tag, where its content starts and where it ends."""
    tag, first = der[at], der[at + 1]
    if first < 0x80:
        start, length = at + 2, first
    else:
        width = first & 0x7F
        start, length = at + 2 + width, int.from_bytes(der[at + 2 : at + 2 + width])
    if start + length > len(der):
        raise ValueError("truncated DER")
    return tag, start, start + length
