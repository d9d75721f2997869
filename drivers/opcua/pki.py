"""The client's certificate and the server-certificate trust list, in one folder per device.

Layout of ``pki_dir`` (the gateway gives ``<state_dir>/pki/<device>``)::

    own/cert.der     this gateway's certificate for the device: give it to the server's
                     administrator to trust (generated on first use, valid 10 years)
    own/key.pem      its private key, mode 0600, never leaves the gateway
    trusted/         server certificates (or the CA certificates that signed them) to
                     trust, DER or PEM; a file here trusts itself and what it signed
    rejected/        certificates of servers that were refused, named by thumbprint:
                     move one into trusted/ to trust that server
    session.json     the open session's token, so a reconnect can close what a lost
                     link left behind (mode 0600; removed on a clean close)
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import CLIENT_CERTIFICATE

__all__ = [
    "ClientIdentity",
    "TrustList",
    "describe_certificate",
    "ensure_client_certificate",
    "ensure_server_certificate",
    "thumbprint",
]

log = logging.getLogger("edgegw.opcua")

_VALID_DAYS = 3650  # a server's trust list entry should not expire every year


def thumbprint(der: bytes) -> str:
    """SHA-1 thumbprint as OPC UA tools show it (e.g. UaExpert): ``AB:CD:...``."""
    return hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()


def _colons(tp: str) -> str:
    return ":".join(tp[i : i + 2] for i in range(0, len(tp), 2))


def describe_certificate(cert: x509.Certificate) -> str:
    """``'CN=...' (application URI ..., SHA-1 thumbprint AB:..., valid until ...)``."""
    der = cert.public_bytes(Encoding.DER)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    uri = f"application URI {uris[0]}, " if uris else ""
    return (
        f"{cert.subject.rfc4514_string()!r} ({uri}SHA-1 thumbprint {_colons(thumbprint(der))}, "
        f"valid until {cert.not_valid_after_utc:%Y-%m-%d})"
    )


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    cert_path: Path
    key_path: Path
    application_uri: str
    """Must equal the URI in the certificate: servers compare them."""
    thumbprint: str


def _write_private(path: Path, data: bytes) -> None:
    """Create a 0600 file atomically: never a moment with wider permissions or half a key."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def ensure_client_certificate(pki_dir: Path, device: str) -> ClientIdentity:
    """Load this device's client certificate, generating key and certificate if missing.

    A certificate that expired is re-issued for the same key (the server must then
    trust the new one; its thumbprint is logged).
    """
    own = pki_dir / "own"
    for d in (pki_dir, own, pki_dir / "trusted"):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path, cert_path = own / "key.pem", pki_dir / CLIENT_CERTIFICATE
    if key_path.is_file():
        loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise ValueError(f"{key_path} is not an RSA private key (OPC UA needs RSA)")
        key = loaded
    else:
        key = cert_gen.generate_private_key()
        _write_private(key_path, cert_gen.dump_private_key_as_pem(key))
    cert = None
    if cert_path.is_file():
        cert = x509.load_der_x509_certificate(cert_path.read_bytes())
        same_key = cert.public_key().public_numbers() == key.public_key().public_numbers()
        if not same_key or cert.not_valid_after_utc.timestamp() < time.time():
            cert = None
    if cert is None:
        host = socket.gethostname()
        uri = f"urn:{host}:edgegw:{device}"
        cert = cert_gen.generate_self_signed_app_certificate(
            key,
            f"edgegw {device}@{host}",
            {},
            [x509.UniformResourceIdentifier(uri), x509.DNSName(host)],
            extended=[ExtendedKeyUsageOID.CLIENT_AUTH],
            days=_VALID_DAYS,
        )
        tmp = cert_path.with_name("cert.der.tmp")
        tmp.write_bytes(cert.public_bytes(Encoding.DER))
        os.replace(tmp, cert_path)
        log.info(
            "opcua device %s: created client certificate %s: %s",
            device,
            cert_path,
            describe_certificate(cert),
        )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    der = cert.public_bytes(Encoding.DER)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    fallback = f"urn:edgegw:{cn[0].value if cn else device}"
    return ClientIdentity(cert_path, key_path, uris[0] if uris else fallback, thumbprint(der))


def _load_certificates(path: Path) -> list[x509.Certificate]:
    data = path.read_bytes()
    if b"-----BEGIN CERTIFICATE-----" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


class TrustList:
    """Server certificates trusted for one device: ``trusted/`` plus an optional pinned file.

    Read afresh at every check, so a certificate moved into ``trusted/`` counts at the
    next connect attempt without a restart.
    """

    def __init__(self, pki_dir: Path, extra: Path | None = None) -> None:
        self.trusted_dir = pki_dir / "trusted"
        self.rejected_dir = pki_dir / "rejected"
        self.extra = extra

    def _certificates(self) -> list[x509.Certificate]:
        files = sorted(p for p in self.trusted_dir.glob("*") if p.is_file())
        if self.extra is not None:
            files.append(self.extra)
        certs: list[x509.Certificate] = []
        for f in files:
            try:
                certs += _load_certificates(f)
            except (OSError, ValueError) as exc:
                log.warning("opcua: ignoring %s in the trust list: not a certificate (%s)", f, exc)
        return certs

    def is_trusted(self, cert: x509.Certificate) -> bool:
        """Trusted if listed itself, or directly signed by the key of a listed certificate."""
        der = cert.public_bytes(Encoding.DER)
        certs = self._certificates()
        if any(t.public_bytes(Encoding.DER) == der for t in certs):
            return True
        for t in certs:
            if t.subject != cert.issuer:
                continue
            try:
                cert.verify_directly_issued_by(t)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return True
        return False

    def reject(self, cert: x509.Certificate) -> Path:
        """Keep a refused certificate in ``rejected/`` so the operator can trust it by a move."""
        der = cert.public_bytes(Encoding.DER)
        self.rejected_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.rejected_dir / f"{thumbprint(der).lower()}.der"
        path.write_bytes(der)
        return path

    def trust(self, cert: x509.Certificate) -> Path:
        """Add a certificate to ``trusted/`` (trust on first use, for `edgegw browse`)."""
        der = cert.public_bytes(Encoding.DER)
        self.trusted_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.trusted_dir / f"{thumbprint(der).lower()}.der"
        path.write_bytes(der)
        return path


def ensure_server_certificate(pki_dir: Path, application_uri: str, name: str) -> tuple[Path, Path]:
    """A server key and self-signed certificate (for the simulator), made once; returns
    (key path, certificate path)."""
    key_path, cert_path = pki_dir / "server-key.pem", pki_dir / "server-cert.der"
    if not cert_path.exists():
        pki_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = cert_gen.generate_private_key()
        _write_private(key_path, cert_gen.dump_private_key_as_pem(key))
        cert = cert_gen.generate_self_signed_app_certificate(
            key,
            name,
            {},
            [x509.UniformResourceIdentifier(application_uri), x509.DNSName(socket.gethostname())],
            extended=[ExtendedKeyUsageOID.SERVER_AUTH],
            days=30,
        )
        cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    return key_path, cert_path
