"""Device key rotation with a signed chain, and the key sets that verifiers trust.

A rotation makes a new Ed25519 key and a **key certificate**: a COSE_Sign1, signed by the
old key, over ``{"v": 1, "n": n, "key": <new raw public key>, "kid": <new kid>, "ts_ns"}``.
A verifier that holds only the first (enrolled) public key follows the certificates to
trust every later key (:func:`verify_chain`), so nothing has to be re-enrolled. Old public
keys stay on the device; the old private key is replaced (erased) by the rotation.

Layout under the state directory (next to the files of :mod:`security.keys`)::

    keys/root.pub.pem            the first (enrolled) public key: the chain starts here
    keys/chain/NNNN-<kid>.cose   key certificate n, signed by key n-1 (key 0 is the root)
    keys/public/<kid>.pub.pem    every public key the device has had
    keys/next.ed25519.pem        0600, only while a rotation is in progress
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from security.cose import CoseError, Signer, UnknownKid, sign1, verify1
from security.keys import DeviceKey, KeyFileError, fsync_dir, kid_for, load_public_key
from security.strictcbor import CborError, strict_loads

if TYPE_CHECKING:
    from security.audit import AuditLog

__all__ = [
    "CHAIN_DIR",
    "KEYCERT_AAD",
    "PUBLIC_DIR",
    "ROOT_FILE",
    "Identity",
    "IdentityRefused",
    "KeyCertificate",
    "KeyChainError",
    "Keyring",
    "Rotation",
    "certify",
    "describe",
    "init_keys",
    "learn_keys",
    "load_keyring",
    "open_certificate",
    "open_identity",
    "read_chain",
    "recover",
    "rotate",
    "verify_chain",
]

# Distinct from telemetry (topic) and checkpoints: a certificate is never anything else.
KEYCERT_AAD = b"edgegw key certificate v1"
ROOT_FILE = "keys/root.pub.pem"
CHAIN_DIR = "keys/chain"
PUBLIC_DIR = "keys/public"
NEXT_FILE = "keys/next.ed25519.pem"


class KeyChainError(Exception):
    """A key certificate or chain that does not verify, or a keyring in a state that needs a
    person to look at it. The message says which file and what to do."""


class IdentityRefused(KeyChainError):
    """The device key cannot be justified from the enrolled root (missing, foreign, or a
    broken chain): the daemon refuses to start rather than sign as someone else."""


@dataclass(frozen=True, slots=True)
class KeyCertificate:
    n: int  # rotation number: 1 for the first key after the root
    kid: bytes  # the certified (new) key's id
    public_key: Ed25519PublicKey
    signer_kid: bytes  # the key that signed it (the one it replaced)
    ts_ns: int
    encoded: bytes


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def certify(old: Signer, new_public: Ed25519PublicKey, n: int, ts_ns: int | None = None) -> bytes:
    """A key certificate for ``new_public``, signed by ``old``."""
    payload = {
        "v": 1,
        "n": n,
        "key": _raw(new_public),
        "kid": kid_for(new_public),
        "ts_ns": time.time_ns() if ts_ns is None else ts_ns,
    }
    return sign1(cbor2.dumps(payload, canonical=True), old, KEYCERT_AAD)


def open_certificate(encoded: bytes, keys: Mapping[bytes, Ed25519PublicKey]) -> KeyCertificate:
    """Verify a key certificate against ``keys`` and parse it.

    Raises CoseError (UnknownKid when its signer is not in ``keys``) or KeyChainError."""
    v = verify1(encoded, keys, KEYCERT_AAD)
    try:
        obj: Any = strict_loads(v.payload, max_depth=2)
    except CborError as exc:
        raise KeyChainError(f"key certificate payload is not CBOR: {exc}") from None
    if not isinstance(obj, Mapping) or obj.get("v") != 1:
        raise KeyChainError("not a version 1 key certificate")
    n, raw, kid, ts = obj.get("n"), obj.get("key"), obj.get("kid"), obj.get("ts_ns")
    if type(n) is not int or n < 1 or type(ts) is not int or ts < 0:
        raise KeyChainError("key certificate n and ts_ns must be positive integers")
    if type(raw) is not bytes or len(raw) != 32:
        raise KeyChainError("key certificate key must be a raw 32-byte Ed25519 public key")
    key = Ed25519PublicKey.from_public_bytes(raw)
    if kid != kid_for(key):
        raise KeyChainError("key certificate kid does not match its key")
    return KeyCertificate(n, kid, key, v.kid, ts, encoded)


def learn_keys(
    trusted: Mapping[bytes, Ed25519PublicKey],
    certificates: Iterable[bytes],
    *,
    strict: bool = True,
) -> dict[bytes, Ed25519PublicKey]:
    """``trusted`` plus every key that a chain of certificates from it vouches for.

    Order does not matter. With ``strict``, a certificate that never verifies (signed by an
    unknown key, or altered) is an error; otherwise it is ignored."""
    keys = dict(trusted)
    pending = list(certificates)
    while pending:
        left: list[bytes] = []
        for cert in pending:
            try:
                c = open_certificate(cert, keys)
            except UnknownKid:
                left.append(cert)
                continue
            except (CoseError, KeyChainError, ValueError) as exc:
                if strict:
                    raise KeyChainError(f"key certificate does not verify: {exc}") from None
                continue
            keys[c.kid] = c.public_key
        if len(left) == len(pending):
            if strict:
                raise KeyChainError(
                    f"{len(left)} key certificate(s) are not signed by a trusted key or by a key "
                    "they lead to: wrong root key, or a certificate from another device"
                )
            break
        pending = left
    return keys


def verify_chain(
    root: Ed25519PublicKey | Mapping[bytes, Ed25519PublicKey],
    certificates: Iterable[bytes],
) -> dict[bytes, Ed25519PublicKey]:
    """Every key trusted from ``root`` (the enrolled key, or several) through certificates.

    This is what a receiver calls with the key a gateway was enrolled with and the
    certificates it has seen (from ``key_rotated`` audit records or a copy of keys/chain)."""
    trusted = root if isinstance(root, Mapping) else {kid_for(root): root}
    return learn_keys(trusted, certificates, strict=True)


def read_chain(state_dir: str | os.PathLike[str]) -> list[bytes]:
    """The key certificates in ``keys/chain``, in rotation order."""
    d = Path(state_dir) / CHAIN_DIR
    if not d.is_dir():
        return []
    return [p.read_bytes() for p in sorted(d.glob("*.cose"))]


def load_keyring(
    state_dir: str | os.PathLike[str], root: Ed25519PublicKey | None = None
) -> dict[bytes, Ed25519PublicKey]:
    """kid -> public key for every key of this device, verified from ``root``.

    ``root`` is the key the device was enrolled with. Without it the local
    ``keys/root.pub.pem`` is trusted: fine on the device itself, but a platform must pass
    the key it registered, or a thief of the state directory can write their own chain."""
    state = Path(state_dir)
    if root is None:
        root_file = state / ROOT_FILE
        if root_file.exists():
            root = load_public_key(root_file)
        else:  # never rotated: the current key is the root
            root = load_public_key(state / DeviceKey.PUBLIC_KEY_FILE)
    return verify_chain(root, read_chain(state))


# -- files ----------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes, mode: int, *, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` complete or not at all, with exactly ``mode``. With
    ``exclusive`` an existing file is an error (FileExistsError), never replaced."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # mkstemp made it 0600: never readable by others
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _write_public(state: Path, key: Ed25519PublicKey) -> None:
    p = state / PUBLIC_DIR / f"{kid_for(key).hex()}.pub.pem"
    if not p.exists():
        _atomic_write(p, _pem(key), 0o644)


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# -- operations -----------------------------------------------------------------------------


def init_keys(state_dir: str | os.PathLike[str]) -> tuple[DeviceKey, bool]:
    """Create the device key if there is none (else load it); record the root public key.

    Returns ``(key, created)``. The caller audits a created key as ``key_created`` (the
    audit log needs the key as its signer, so it is opened after this)."""
    state = Path(state_dir)
    key, created = DeviceKey.load_or_create(state)
    if not (state / ROOT_FILE).exists() and not read_chain(state):
        _atomic_write(state / ROOT_FILE, key.public_pem(), 0o644)
    _write_public(state, key.public_key)
    return key, created


@dataclass(frozen=True, slots=True)
class Identity:
    """The device key the daemon may sign with, and why it may."""

    key: DeviceKey
    created: bool  # made now, in a pristine state directory
    keyring: dict[bytes, Ed25519PublicKey]  # every key verified from the root
    keychain: list[bytes]  # certificates from the root to ``key`` (empty: key is the root)


# What shows that a state directory already belongs to an identity.
_IDENTITY_TRACES = (ROOT_FILE, CHAIN_DIR, PUBLIC_DIR, DeviceKey.PUBLIC_KEY_FILE)
_REENROL = (
    "To give this gateway a new identity on purpose, move {state}/keys and the audit log "
    "({state}/audit.cborseq*) aside, run `edgegw keys init`, and register the new public key "
    "with the platform"
)


def _traces(state: Path) -> list[str]:
    from security.audit import AUDIT_FILE  # security.audit imports this module

    found = [name for name in _IDENTITY_TRACES if (state / name).exists()]
    found += sorted(p.name for p in state.glob(f"{AUDIT_FILE}*"))
    return found


def open_identity(state_dir: str | os.PathLike[str], *, record: bool = True) -> Identity:
    """The device key, checked against the enrolled root before anything is signed with it.

    A key is made only in a pristine state directory. ``record=False`` (a check such as
    doctor) only reads: no key is made and the root and public key files are not written
    (a check run as root must not leave root-owned files in the service's state dir).

    Raises :class:`IdentityRefused` (with the files and the fix) when the key is missing
    where an identity exists (a root, a chain, public keys or an audit log), when it is not
    reached from ``keys/root.pub.pem`` through ``keys/chain``, or when that chain does not
    verify; KeyFileError for a key file that cannot be used (unreadable, unsafe mode)."""
    state = Path(state_dir)
    priv = state / DeviceKey.PRIVATE_KEY_FILE
    reenrol = _REENROL.format(state=state)
    if not priv.exists():
        found = _traces(state)
        if found:
            raise IdentityRefused(
                f"{priv}: the device key is missing, but {state} already holds this gateway's "
                f"identity ({', '.join(found)}); refusing to make a new key behind your back. "
                f"Restore {priv} (mode 0600) from a backup. {reenrol}"
            )
        if not record:
            raise IdentityRefused(f"{priv}: no device key yet (the daemon makes it at its start)")
        key, created = init_keys(state)
        return Identity(key, created, {key.kid: key.public_key}, [])
    key = DeviceKey.load(priv)
    root_file = state / ROOT_FILE
    certs = sorted((state / CHAIN_DIR).glob("*.cose")) if (state / CHAIN_DIR).is_dir() else []
    if root_file.exists():
        try:
            root = load_public_key(root_file)
        except KeyFileError as exc:
            raise IdentityRefused(f"{exc}; restore it from a backup or the platform") from None
        where = str(root_file)
    elif certs:
        raise IdentityRefused(
            f"{root_file} is missing but {state / CHAIN_DIR} holds certificates; restore the "
            "root public key (the one registered with the platform)"
        )
    else:  # never rotated, written before root.pub.pem existed: the registered key is it
        pub = state / DeviceKey.PUBLIC_KEY_FILE
        root = load_public_key(pub) if pub.exists() else key.public_key
        where = str(pub)
    keys = {kid_for(root): root}
    keychain: list[bytes] = []
    at_key = key.kid in keys
    for path in certs:
        try:
            c = open_certificate(path.read_bytes(), keys)
        except (CoseError, KeyChainError, OSError) as exc:
            raise IdentityRefused(
                f"{path}: key certificate does not verify from {root_file} ({exc}); the chain "
                "was altered or mixed with another device's. Restore keys/chain from a backup"
            ) from None
        keys[c.kid] = c.public_key
        if not at_key:
            keychain.append(c.encoded)
            at_key = c.kid == key.kid
    if not at_key:
        raise IdentityRefused(
            f"{priv}: the device key (kid {key.kid.hex()}) is not reached from {where} (kid "
            f"{kid_for(root).hex()}) through {state / CHAIN_DIR} ({len(certs)} certificates): "
            f"it was replaced or copied from another device. Restore the right key from a "
            f"backup. {reenrol}"
        )
    if not record:
        return Identity(key, False, keys, keychain)
    key, created = init_keys(state)  # records the root (first start) and the public key
    return Identity(key, created, keys, keychain)


@dataclass(frozen=True, slots=True)
class Rotation:
    n: int
    old_kid: bytes
    new_kid: bytes
    certificate: bytes
    certificate_file: Path
    key: DeviceKey  # the new key, to sign with from now on


def _cert_file(state: Path, n: int, kid: bytes) -> Path:
    return state / CHAIN_DIR / f"{n:04d}-{kid.hex()}.cose"


def _install(state: Path, new: DeviceKey) -> None:
    """Move the pending key into place (erasing the old one) and rewrite its public file."""
    os.replace(state / NEXT_FILE, state / DeviceKey.PRIVATE_KEY_FILE)
    fsync_dir(state / "keys")
    _atomic_write(state / DeviceKey.PUBLIC_KEY_FILE, new.public_pem(), 0o644)


def recover(state_dir: str | os.PathLike[str]) -> Rotation | None:
    """Finish or undo a rotation that a crash interrupted. Returns the finished rotation.

    The new key is written first (as keys/next), then its certificate, then it replaces the
    device key. With a certificate, the rotation happened as far as a verifier can tell:
    complete it. Without one, the new key was never announced: discard it."""
    state = Path(state_dir)
    nxt = state / NEXT_FILE
    if not nxt.exists():
        return None
    new = DeviceKey.load(nxt)
    old = DeviceKey.load(state / DeviceKey.PRIVATE_KEY_FILE)
    for path in sorted((state / CHAIN_DIR).glob(f"*-{new.kid.hex()}.cose")):
        cert = path.read_bytes()
        try:
            c = open_certificate(cert, {old.kid: old.public_key})
        except (CoseError, KeyChainError):
            continue
        _install(state, new)
        return Rotation(c.n, old.kid, new.kid, cert, path, new)
    nxt.unlink()
    fsync_dir(nxt.parent)
    return None


def rotate(state_dir: str | os.PathLike[str], *, audit: AuditLog | None = None) -> Rotation:
    """Replace the device key with a new one certified by it.

    With ``audit`` (opened with the current key as signer), a ``key_rotated`` record carrying
    the certificate is appended and later checkpoints are signed with the new key. A running
    daemon keeps signing with the key it loaded until it restarts: messages stay verifiable,
    since old public keys are kept."""
    state = Path(state_dir)
    done = recover(state)
    if done is not None and audit is not None:
        _audit_rotation(audit, done)
    old = DeviceKey.load(state / DeviceKey.PRIVATE_KEY_FILE)
    chain = read_chain(state)
    if not (state / ROOT_FILE).exists():
        if chain:
            raise KeyChainError(
                f"{state / ROOT_FILE} is missing but {state / CHAIN_DIR} holds certificates; "
                "restore the root public key (the one registered with the platform)"
            )
        _atomic_write(state / ROOT_FILE, old.public_pem(), 0o644)
    keys = load_keyring(state)
    if old.kid not in keys:
        raise KeyChainError(
            f"the device key {old.kid.hex()} is not reached by the chain from "
            f"{state / ROOT_FILE}; the key files were changed by hand"
        )
    _write_public(state, old.public_key)
    n = len(chain) + 1
    private = Ed25519PrivateKey.generate()
    new = DeviceKey(private)
    _atomic_write(state / NEXT_FILE, _private_pem(private), 0o600, exclusive=True)
    cert = certify(old, new.public_key, n)
    path = _cert_file(state, n, new.kid)
    _atomic_write(path, cert, 0o644, exclusive=True)
    _write_public(state, new.public_key)
    _install(state, new)
    rot = Rotation(n, old.kid, new.kid, cert, path, new)
    if audit is not None:
        _audit_rotation(audit, rot)
    return rot


def _audit_rotation(audit: AuditLog, rot: Rotation) -> None:
    audit.record(
        "key_rotated",
        old_kid=rot.old_kid.hex(),
        new_kid=rot.new_kid.hex(),
        n=rot.n,
        cert=rot.certificate,
    )
    audit.signer = rot.key  # later checkpoints: the new key, vouched for by the record


@dataclass(frozen=True, slots=True)
class Keyring:
    """What ``edgegw keys show`` prints."""

    current: DeviceKey | None
    root_kid: bytes | None
    chain: list[KeyCertificate]
    public_kids: list[bytes]
    problem: str | None  # why the chain does not verify, if it does not


def describe(state_dir: str | os.PathLike[str]) -> Keyring:
    state = Path(state_dir)
    try:
        current: DeviceKey | None = DeviceKey.load(state / DeviceKey.PRIVATE_KEY_FILE)
    except KeyFileError:
        current = None
    root_kid: bytes | None = None
    chain: list[KeyCertificate] = []
    problem: str | None = None
    try:
        if (state / ROOT_FILE).exists():
            root = load_public_key(state / ROOT_FILE)
        elif current is not None:
            root = current.public_key
        else:
            raise KeyChainError("no device key: run `edgegw keys init`")
        root_kid = kid_for(root)
        keys = {root_kid: root}
        for cert in read_chain(state):
            c = open_certificate(cert, keys)
            keys[c.kid] = c.public_key
            chain.append(c)
        if current is not None and current.kid not in keys:
            problem = f"the device key {current.kid.hex()} is not reached by the chain"
    except (KeyChainError, KeyFileError, CoseError) as exc:
        problem = str(exc)
    pub = state / PUBLIC_DIR
    kids = sorted(bytes.fromhex(p.name.split(".")[0]) for p in pub.glob("*.pub.pem"))
    return Keyring(current, root_kid, chain, kids, problem)
