"""TLS context for the broker link: TLS 1.2 at least, host names verified, never
plaintext (there is no fallback path: a failed handshake is a failed connect)."""

from __future__ import annotations

import os
import ssl

StrPath = str | os.PathLike[str]


def client_context(
    ca_file: StrPath | None = None,
    cert_file: StrPath | None = None,
    key_file: StrPath | None = None,
) -> ssl.SSLContext:
    """Verify the broker against ``ca_file`` (the system store when None); present a
    client certificate when ``cert_file``/``key_file`` are given (mutual TLS)."""
    ctx = ssl.create_default_context(cafile=os.fspath(ca_file) if ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file and key_file:
        ctx.load_cert_chain(os.fspath(cert_file), os.fspath(key_file))
    return ctx
