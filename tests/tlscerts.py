"""Test PKI made with `cryptography`: a CA, broker certificates and a client certificate.

The certificates carry the extensions a strict verifier expects (basic constraints, key
usage, extended key usage, subject and authority key identifiers), so a failure in a TLS
test is about the property under test, not about a sloppy certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_NAMES = ("localhost", "::1", "127.0.0.1")


@dataclass(frozen=True)
class Pki:
    """Paths of the files written by :func:`make_pki`."""

    dir: Path
    ca: Path  # CA certificate (PEM): the trust anchor for both sides
    ca_key: Path  # CA private key: for signing requests (see sign_csr)
    server_cert: Path  # broker: localhost, ::1, 127.0.0.1
    server_key: Path
    other_cert: Path  # broker certificate for another name only (other.invalid)
    other_key: Path
    client_cert: Path  # client certificate for mutual TLS (CN = gateway id)
    client_key: Path
    rogue_ca: Path  # a second, unrelated CA
    rogue_client_cert: Path  # a client certificate issued by the rogue CA
    rogue_client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
    return cert, key


def issue(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    cn: str,
    names: tuple[str, ...],
    *,
    client: bool,
    valid: tuple[dt.datetime, dt.datetime] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate for ``names`` (DNS names or IP literals) signed by ``ca``;
    ``valid``: its notBefore and notAfter (default: from 5 minutes ago for 90 days)."""
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    start, end = valid or (now - dt.timedelta(minutes=5), now + dt.timedelta(days=90))
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(directory: Path, client_cn: str = "gw-test") -> Pki:
    """Write a complete test PKI into ``directory`` (created if needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca("edgegw test CA")
    rogue = _ca("rogue CA")
    files: dict[str, Path] = {}

    def save(stem: str, pair: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> None:
        files[f"{stem}_cert"] = directory / f"{stem}.crt"
        files[f"{stem}_key"] = directory / f"{stem}.key"
        _write_cert(files[f"{stem}_cert"], pair[0])
        _write_key(files[f"{stem}_key"], pair[1])

    _write_cert(directory / "ca.crt", ca[0])
    _write_key(directory / "ca.key", ca[1])
    _write_cert(directory / "rogue-ca.crt", rogue[0])
    save("server", issue(ca, "broker", LOOPBACK_NAMES, client=False))
    save("other", issue(ca, "other.invalid", ("other.invalid",), client=False))
    save("client", issue(ca, client_cn, (), client=True))
    save("rogue_client", issue(rogue, client_cn, (), client=True))
    return Pki(
        dir=directory,
        ca=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=files["server_cert"],
        server_key=files["server_key"],
        other_cert=files["other_cert"],
        other_key=files["other_key"],
        client_cert=files["client_cert"],
        client_key=files["client_key"],
        rogue_ca=directory / "rogue-ca.crt",
        rogue_client_cert=files["rogue_client_cert"],
        rogue_client_key=files["rogue_client_key"],
    )


def sign_csr(pki: Pki, csr_pem: bytes, out: Path) -> Path:
    """Issue a client certificate for a PEM certificate request (as the platform's CA
    would for `edgegw keys csr`); writes it to ``out``."""
    csr = x509.load_pem_x509_csr(csr_pem)
    assert csr.is_signature_valid
    ca_cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_cert(out, cert)
    return out
