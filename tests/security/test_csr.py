"""The TLS client key and certificate request for broker mutual TLS."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from security import KeyFileError
from security.csr import CSR_FILE, TLS_KEY_FILE, load_or_create_tls_key, make_csr


def test_csr_has_the_gateway_id_as_cn_and_a_p256_key(tmp_path: Path) -> None:
    pem = make_csr(tmp_path, "press-line-3")
    assert pem.startswith(b"-----BEGIN CERTIFICATE REQUEST-----\n")
    csr = x509.load_pem_x509_csr(pem)
    assert csr.is_signature_valid
    cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["press-line-3"]
    pub = csr.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"
    assert (tmp_path / CSR_FILE).read_bytes() == pem


def test_tls_key_is_private_and_reused(tmp_path: Path) -> None:
    key, created = load_or_create_tls_key(tmp_path)
    assert created and stat.S_IMODE((tmp_path / TLS_KEY_FILE).stat().st_mode) == 0o600
    again, created = load_or_create_tls_key(tmp_path)
    assert not created
    assert again.public_key().public_numbers() == key.public_key().public_numbers()
    a = x509.load_pem_x509_csr(make_csr(tmp_path, "gw1")).public_key()
    b = x509.load_pem_x509_csr(make_csr(tmp_path, "gw1")).public_key()
    assert a == b == key.public_key()  # a new request, never a new key


def test_subject_alternative_names(tmp_path: Path) -> None:
    csr = x509.load_pem_x509_csr(make_csr(tmp_path, "gw1", dns_names=("gw1.plant", "::1")))
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gw1.plant"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("::1")]


@pytest.mark.parametrize("bad", ["", "-gw", "a/b", "x" * 65, "gw 1", "gw+1"])
def test_invalid_gateway_id_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="not a gateway id"):
        make_csr(tmp_path, bad)
    assert not (tmp_path / TLS_KEY_FILE).exists()


def test_group_readable_tls_key_is_refused(tmp_path: Path) -> None:
    load_or_create_tls_key(tmp_path)
    (tmp_path / TLS_KEY_FILE).chmod(0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        make_csr(tmp_path, "gw1")


def test_non_p256_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    p = tmp_path / TLS_KEY_FILE
    p.parent.mkdir(parents=True)
    p.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    p.chmod(0o600)
    with pytest.raises(KeyFileError, match="P-256"):
        load_or_create_tls_key(tmp_path)
