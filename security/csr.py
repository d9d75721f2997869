"""The gateway's TLS client key and certificate request, for mutual TLS with the broker.

The TLS key is separate from the Ed25519 device key: broker PKIs (and TPMs, later) deal in
ECDSA P-256, and a TLS key can be re-issued without touching the identity that signs data.

    keys/tls.p256.pem   0600  PKCS#8 PEM, made on the device, never leaves it
    keys/tls.csr.pem    0644  the latest certificate request (PKCS#10), CN = gateway id

The signed certificate the platform's CA returns goes wherever ``uplink.tls.cert_file``
says, with ``uplink.tls.key_file`` pointing at keys/tls.p256.pem.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from security.keyring import _atomic_write
from security.keys import KeyFileError

__all__ = ["CSR_FILE", "TLS_KEY_FILE", "load_or_create_tls_key", "make_csr"]

TLS_KEY_FILE = "keys/tls.p256.pem"
CSR_FILE = "keys/tls.csr.pem"
# The gateway id rule of the config (gateway.config.ID_RE), repeated: security does not
# import gateway. An id is one MQTT topic level and a certificate CN.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _load_tls_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot open TLS key ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"{path}: TLS key is accessible by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}` and consider it exposed"
            )
        with open(fd, "rb", closefd=False) as f:
            data = f.read()
    finally:
        os.close(fd)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (TypeError, ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise KeyFileError(f"{path}: not an ECDSA P-256 key; move it away to make a new one")
    return key


def load_or_create_tls_key(
    state_dir: str | os.PathLike[str],
) -> tuple[ec.EllipticCurvePrivateKey, bool]:
    """The TLS client key, made on first use. Returns ``(key, created)``."""
    path = Path(state_dir) / TLS_KEY_FILE
    if path.exists():
        return _load_tls_key(path), False
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        _atomic_write(path, pem, 0o600, exclusive=True)
    except FileExistsError:  # made by a concurrent call: use that one
        return _load_tls_key(path), False
    return key, True


def make_csr(
    state_dir: str | os.PathLike[str],
    gateway_id: str,
    *,
    dns_names: tuple[str, ...] = (),
) -> bytes:
    """A PEM certificate request with CN = ``gateway_id`` for the TLS key (made if needed);
    also written to keys/tls.csr.pem. ``dns_names`` (names or IP literals) go in the SAN."""
    if not _ID_RE.fullmatch(gateway_id):
        raise ValueError(
            f"{gateway_id!r} is not a gateway id: 1-64 of A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit"
        )
    key, _ = load_or_create_tls_key(state_dir)
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)])
    )
    if dns_names:
        sans: list[x509.GeneralName] = []
        for n in dns_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    pem = csr.public_bytes(serialization.Encoding.PEM)
    _atomic_write(Path(state_dir) / CSR_FILE, pem, 0o644)
    return pem
