"""The device's Ed25519 signing key: generated on the device, kept in the state directory.

Layout under the state directory::

    keys/                    0700
    keys/device.ed25519.pem  0600  PKCS#8 PEM, unencrypted (file permissions protect it)
    keys/device.pub.pem      0644  SubjectPublicKeyInfo PEM, to register with the platform

The private key is the device's identity. It is created once, atomically, and never
replaced by this module: a damaged or unsafe key file is an error for a person to look at,
not something to paper over with a fresh identity.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import ClassVar

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

__all__ = ["DeviceKey", "KeyFileError", "kid_for", "load_public_key"]

log = logging.getLogger(__name__)

KID_LEN = 16


class KeyFileError(Exception):
    """A key file is missing, unreadable, unsafe or does not hold the expected key.

    The message names the file, says what is wrong and how to fix it.
    """


def kid_for(public_key: Ed25519PublicKey) -> bytes:
    """Key id: the first 16 bytes of SHA-256 over the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:KID_LEN]


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: {what} file does not exist") from None
    except OSError as exc:
        raise KeyFileError(
            f"{path}: cannot read {what} file ({exc.strerror}); check the path and that "
            "the edgegw service user may read it"
        ) from None


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Load an Ed25519 public key from a PEM SubjectPublicKeyInfo file."""
    p = Path(path)
    data = _read(p, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(
            f"{p}: not a PEM public key ({exc}); expected '-----BEGIN PUBLIC KEY-----' as "
            "written to keys/device.pub.pem on the gateway"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(
            f"{p}: holds a {type(key).__name__}, not an Ed25519 public key; use the gateway's "
            "keys/device.pub.pem"
        )
    return key


def _parse_private(path: Path, data: bytes) -> Ed25519PrivateKey:
    fix = (
        "if the file is damaged, move it away and restart edgegw to generate a new device "
        "key (the new public key must then be registered with the platform)"
    )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        # cryptography raises TypeError when the key is encrypted but no password was given.
        raise KeyFileError(
            f"{path}: private key is encrypted with a passphrase; edgegw needs an unencrypted "
            "PKCS#8 key protected by file permissions (or systemd-creds): decrypt it with "
            f"`openssl pkey -in {path} -out {path}.new` and move it into place"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a PEM private key ({exc}); {fix}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(
            f"{path}: holds a {type(key).__name__}, but device keys are Ed25519; {fix}"
        )
    return key


def _exists(path: Path) -> bool:
    try:
        path.stat()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise KeyFileError(
            f"{path}: cannot access ({exc.strerror}); the state directory must be accessible "
            "to the edgegw service user"
        ) from None
    return True


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable (fsync the folder)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(directory: Path, name: str, data: bytes, mode: int) -> Path:
    """Write ``data`` to a new temp file beside its final name, synced, with exact ``mode``."""
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp creates the file 0600, so a private key is never readable by others, even
            # briefly; fchmod then sets the final mode exactly, whatever the umask.
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


class DeviceKey:
    """The device's Ed25519 private key, its public key and kid. Implements ``Signer``."""

    PRIVATE_KEY_FILE: ClassVar[str] = "keys/device.ed25519.pem"
    PUBLIC_KEY_FILE: ClassVar[str] = "keys/device.pub.pem"

    __slots__ = ("_private_key", "kid", "public_key")

    kid: bytes
    public_key: Ed25519PublicKey

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.kid = kid_for(self.public_key)

    def __repr__(self) -> str:  # never show key material
        return f"DeviceKey(kid={self.kid.hex()})"

    def sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data)

    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DeviceKey:
        """Load an existing private key file, refusing one that others may read (like ssh)."""
        p = Path(path)
        try:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KeyFileError(f"{p}: private key file does not exist") from None
        except OSError as exc:
            raise KeyFileError(
                f"{p}: cannot open private key file ({exc.strerror}); it must be readable by "
                "the edgegw service user"
            ) from None
        # Check the mode of the file we opened, not of whatever the path names a moment later.
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise KeyFileError(f"{p}: private key path is not a regular file")
            if st.st_mode & 0o077:
                raise KeyFileError(
                    f"{p}: private key file is accessible by group or others "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}); refusing to use it. "
                    f"Run `chmod 600 {p}`, and consider the key exposed if others could read it"
                )
            with open(fd, "rb", closefd=False) as f:
                data = f.read()
        except OSError as exc:
            raise KeyFileError(f"{p}: cannot read private key file ({exc.strerror})") from None
        finally:
            os.close(fd)
        return cls(_parse_private(p, data))

    @classmethod
    def load_or_create(cls, state_dir: str | os.PathLike[str]) -> tuple[DeviceKey, bool]:
        """Load the device key from ``state_dir``, generating it on first start.

        Returns ``(key, created)``. Also (re)writes the public key file when it is missing
        or does not match the private key, since it is derived data.
        """
        state = Path(state_dir)
        priv_path = state / cls.PRIVATE_KEY_FILE
        if _exists(priv_path):
            key, created = cls.load(priv_path), False
        else:
            try:
                key, created = cls._create(priv_path), True
            except FileExistsError:
                # Another process created it between our check and our link(): use that one.
                key, created = cls.load(priv_path), False
            except OSError as exc:
                raise KeyFileError(
                    f"{priv_path}: cannot create the device key ({exc.strerror}); the state "
                    f"directory {state} must be writable by the edgegw service user"
                ) from None
        key._ensure_public_file(state / cls.PUBLIC_KEY_FILE)
        return key, created

    @classmethod
    def _create(cls, priv_path: Path) -> DeviceKey:
        keys_dir = priv_path.parent
        if not keys_dir.is_dir():
            keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(keys_dir, 0o700)  # mkdir's mode is reduced by the umask; be exact
        private_key = Ed25519PrivateKey.generate()
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = _write_temp(keys_dir, priv_path.name, pem, 0o600)
        try:
            # link() publishes the complete file atomically and, unlike replace(), fails if a
            # key already exists: a concurrent start must not swap the identity under the other.
            os.link(tmp, priv_path)
        finally:
            tmp.unlink()
        fsync_dir(keys_dir)
        return cls(private_key)

    def _ensure_public_file(self, pub_path: Path) -> None:
        pem = self.public_pem()
        try:
            current: bytes | None = pub_path.read_bytes()
        except FileNotFoundError:
            current = None
        except OSError as exc:
            raise KeyFileError(
                f"{pub_path}: cannot read public key file ({exc.strerror}); delete it and it "
                "is re-created from the private key"
            ) from None
        if current == pem:
            return
        if current is not None:
            log.warning("%s does not match device key %s; rewriting it", pub_path, self.kid.hex())
        try:
            tmp = _write_temp(pub_path.parent, pub_path.name, pem, 0o644)
            try:
                os.replace(tmp, pub_path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            fsync_dir(pub_path.parent)
        except OSError as exc:
            raise KeyFileError(
                f"{pub_path}: cannot write public key file ({exc.strerror}); the directory "
                f"{pub_path.parent} must be writable by the edgegw service user"
            ) from None
