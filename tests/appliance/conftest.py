"""Fixtures for the appliance tests: TLS material for a real mosquitto TLS listener, and
a way to call one command module the way the CLI would."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def run_command(module: ModuleType, *argv: str) -> int:
    """Parse ``argv`` with only ``module``'s sub-command registered, and run it."""
    parser = argparse.ArgumentParser(prog="edgegw")
    sub = parser.add_subparsers(dest="command", required=True)
    module.register(sub)
    args = parser.parse_args(list(argv))
    return int(args.func(args))


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path  # a CA that did not sign the broker's certificate


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o644)
    return path


@pytest.fixture(scope="session")
def pki() -> Iterator[Pki]:
    """A CA, a broker certificate for ``::1``/``127.0.0.1``/``localhost``, and a stranger CA.

    In a world-readable folder of its own: mosquitto started by root may switch to user
    mosquitto before it reads them (test material only, never a real key)."""
    d = Path(tempfile.mkdtemp(prefix="edgegw-test-pki-"))
    d.chmod(0o755)
    try:
        yield _make_pki(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _make_pki(d: Path) -> Pki:
    ca_key, ca = _ca("edgegw test CA")
    _, other = _ca("some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("broker"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=90))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return Pki(
        ca=_pem(d / "ca.pem", ca.public_bytes(pem)),
        cert=_pem(d / "broker.pem", cert.public_bytes(pem)),
        key=_pem(
            d / "broker.key",
            key.private_bytes(
                pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            ),
        ),
        other_ca=_pem(d / "other-ca.pem", other.public_bytes(pem)),
    )


def make_snapshot(now_ns: int | None = None, **overrides: object) -> dict[str, object]:
    """A status snapshot shaped like ``Daemon.snapshot()`` (the integration test checks
    the real one has the same keys)."""
    import os
    import time

    now = time.time_ns() if now_ns is None else now_ns
    snap: dict[str, object] = {
        "gateway": "gw-test",
        "version": "0.1.0",
        "pid": os.getpid(),
        "boot": 7,
        "final": False,
        "time_ns": now,
        "started_ns": now - 100 * 10**9,
        "pipeline": {
            "points_polled": 5000,
            "points_sealed": 4990,
            "messages_sealed": 400,
            "last_seq": 1234,
            "seal_errors": 0,
        },
        "uplink": {
            "link_up": True,
            "connects": 2,
            "disconnects": 1,
            "published": 410,
            "acked": 398,
            "rejected": 0,
            "last_error": None,
        },
        "outbox": {
            "rows": 3,
            "bytes": 12_345,
            "first_seq": 1232,
            "last_seq": 1234,
            "oldest_created_ns": now - 2 * 10**9,
        },
        "devices": {
            "boiler": {
                "name": "boiler",
                "up": True,
                "reads": 1000,
                "errors": 2,
                "overruns": 1,
                "last_error": None,
                "last_latency_ms": 4.5,
                "last_read_ns": now - 300_000_000,
            },
            "press": {
                "name": "press",
                "up": False,
                "reads": 10,
                "errors": 40,
                "overruns": 0,
                "last_error": "connect [::1]:1502: connection refused",
                "last_latency_ms": None,
                "last_read_ns": None,
            },
        },
    }
    snap.update(overrides)
    return snap
