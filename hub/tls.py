"""TLS for listeners (MLLP, alarm receivers): one place that decides the server settings."""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(cert_file: Path | None, key_file: Path | None,
                   client_ca_file: Path | None = None) -> ssl.SSLContext | None:
    """A server-side context (TLS 1.2 or newer), or None when no certificate is set.

    With `client_ca_file` the peer must present a certificate issued by one of those CAs
    (mutual TLS).
    """
    if cert_file is None or key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file is not None:
        context.load_verify_locations(cafile=str(client_ca_file))
        context.verify_mode = ssl.CERT_REQUIRED
    return context
