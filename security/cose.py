"""COSE_Sign1 (RFC 9052) with EdDSA/Ed25519: the envelope of every published message.

Only what edgegw needs: one signer, alg -8, ``kid`` in the protected header, an attached
payload and an external AAD (the MQTT topic). Messages are emitted tagged (CBOR tag 18);
tagged and untagged are both accepted. The algorithm is fixed, never taken from the message.

Verification never decodes more than it must before the signature is checked:
:func:`parse1` walks the envelope by its CBOR heads and decodes only the two header maps
(bounded, strictly), so a hostile message costs time linear in its size. The unprotected
``keychain`` header may carry the key certificates that lead from a gateway's enrolled key
to the key that signed (see security/keyring.py); it is a hint for finding the key, and
every certificate in it is verified on its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from security.strictcbor import CborError, decode_at

__all__ = [
    "ALG_EDDSA",
    "KEYCHAIN",
    "BadSignature",
    "CoseError",
    "Envelope",
    "MalformedMessage",
    "Signer",
    "UnknownKid",
    "Verified",
    "encode_unprotected",
    "parse1",
    "peek_kid",
    "sign1",
    "verify1",
]

ALG_EDDSA = -8
COSE_SIGN1_TAG = 18
ED25519_SIG_LEN = 64

# Header labels (RFC 9052 section 3.1).
_ALG = 1
_CRIT = 2
_KID = 4


class CoseError(Exception):
    """A message failed verification. Subclasses say why."""


class MalformedMessage(CoseError):
    """Not a COSE_Sign1 this module accepts: bad CBOR, wrong structure or types, alg not -8."""


class UnknownKid(CoseError):
    """The message names a key that is not in the verifier's key set."""

    def __init__(self, kid: bytes) -> None:
        # Bounded: the kid comes from an unverified message and ends up in logs.
        shown = kid[:32].hex() + ("..." if len(kid) > 32 else "")
        super().__init__(f"unknown kid {shown} (not in the key set)")
        self.kid = kid


class BadSignature(CoseError):
    """The signature does not match the message, key and external AAD."""


class Signer(Protocol):
    kid: bytes

    def sign(self, data: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Verified:
    kid: bytes
    payload: bytes


def _bstr_head(n: int) -> bytes:
    """CBOR head of a byte string of length ``n``, shortest form (deterministic encoding)."""
    if n < 24:
        return bytes((0x40 | n,))
    if n < 0x100:
        return bytes((0x58, n))
    if n < 0x10000:
        return b"\x59" + n.to_bytes(2, "big")
    if n < 0x100000000:
        return b"\x5a" + n.to_bytes(4, "big")
    return b"\x5b" + n.to_bytes(8, "big")


def _bstr(data: bytes) -> bytes:
    return _bstr_head(len(data)) + data


# Sig_structure = ["Signature1", body_protected, external_aad, payload]: array(4), tstr(10).
_SIG_STRUCTURE_HEAD = b"\x84\x6aSignature1"
# Tag 18, array(4): the start of every message we emit.
_MESSAGE_HEAD = b"\xd2\x84"
_EMPTY_MAP = b"\xa0"
# The protected header sign1 writes: map(2) {1: -8, 4: bstr(16) kid}.
_OUR_PROTECTED_HEAD = b"\xa2\x01\x27\x04\x50"


@lru_cache(maxsize=64)
def _prefixes(kid: bytes) -> tuple[bytes, bytes]:
    """Per-kid constant parts: (Sig_structure up to external_aad, message up to unprotected)."""
    protected = _bstr(cbor2.dumps({_ALG: ALG_EDDSA, _KID: kid}))
    return _SIG_STRUCTURE_HEAD + protected, _MESSAGE_HEAD + protected


def _sig_structure(
    prefix: bytes, external_aad: bytes, payload_head: bytes, payload: bytes
) -> bytes:
    """Encoded Sig_structure; ``prefix`` is its head plus the protected header as a bstr."""
    return b"".join((prefix, _bstr_head(len(external_aad)), external_aad, payload_head, payload))


def encode_unprotected(headers: Mapping[int | str, Any] | None) -> bytes:
    """The unprotected header map, encoded once (deterministically) for :func:`sign1`."""
    if not headers:
        return _EMPTY_MAP
    if any(label in headers for label in (_ALG, _CRIT, _KID)):
        raise ValueError("alg, crit and kid belong in the protected header")
    return bytes(cbor2.dumps(dict(headers), canonical=True))


def sign1(
    payload: bytes, signer: Signer, external_aad: bytes = b"", unprotected: bytes = _EMPTY_MAP
) -> bytes:
    """Sign ``payload`` into a tagged COSE_Sign1 with protected header {alg: -8, kid}.

    ``unprotected`` is the encoded unprotected header (:func:`encode_unprotected`; empty by
    default). The CBOR around the payload is written by hand from cached per-kid prefixes,
    so a call is two joins (Sig_structure and message) plus the signature.
    """
    tbs_prefix, msg_prefix = _prefixes(signer.kid)
    payload_head = _bstr_head(len(payload))
    signature = signer.sign(_sig_structure(tbs_prefix, external_aad, payload_head, payload))
    return b"".join((msg_prefix, unprotected, payload_head, payload, _bstr(signature)))


MAX_PROTECTED = 256  # bytes: ours is 21; bounds what is decoded before the signature check
MAX_LABELS = 16  # per header map
MAX_KEYCHAIN = 16  # key certificates in the keychain header
MAX_CERT = 512  # bytes per key certificate (ours are ~175)
KEYCHAIN = "keychain"  # unprotected label: key certificates from the root to the signer


def _show(value: object) -> str:
    """A short, safe rendering of a decoded value for error messages."""
    # repr() of a huge bignum raises ValueError, and a text value may be megabytes long.
    if type(value) is int and -(2**64) <= value < 2**64:
        return str(value)
    if type(value) is str:
        return repr(value[:32])
    return type(value).__name__


def _head(data: bytes, pos: int, what: str) -> tuple[int, int, int]:
    """(major type, argument, offset after the head) of the definite-length CBOR item at
    ``pos``. Reads a few bytes: the envelope is walked by its heads, never decoded whole."""
    if pos >= len(data):
        raise MalformedMessage(f"{what}: the message ends early (truncated)")
    ib = data[pos]
    major, info = ib >> 5, ib & 0x1F
    if info < 24:
        return major, info, pos + 1
    if info > 27:
        raise MalformedMessage(f"{what}: indefinite length or reserved value (0x{ib:02x})")
    end = pos + 1 + (1 << (info - 24))
    if end > len(data):
        raise MalformedMessage(f"{what}: the message ends early (truncated)")
    return major, int.from_bytes(data[pos + 1 : end], "big"), end


def _bytes_at(data: bytes, pos: int, what: str) -> tuple[bytes, int]:
    major, n, start = _head(data, pos, what)
    if major != 2:
        raise MalformedMessage(f"{what} must be a byte string")
    end = start + n
    if end > len(data):
        raise MalformedMessage(f"{what}: the message ends early (truncated)")
    return data[start:end], end


def _label(data: bytes, pos: int, what: str) -> tuple[int | str, int]:
    major, arg, end = _head(data, pos, what)
    if major == 0:
        return arg, end
    if major == 1:
        return -1 - arg, end
    if major == 3 and arg <= 64 and end + arg <= len(data):
        try:
            return data[end : end + arg].decode(), end + arg
        except UnicodeDecodeError:
            pass
    raise MalformedMessage(f"{what}: header labels must be integers or short text strings")


def _header_map(data: bytes, pos: int, what: str) -> tuple[dict[int | str, Any], int]:
    """A header map: at most MAX_LABELS labels (ints or text), each once; values decoded
    strictly (no tags, text keys only, shallow), so no value can cost more than its size."""
    major, count, pos = _head(data, pos, what)
    if major != 5:
        raise MalformedMessage(f"{what} must be a map")
    if count > MAX_LABELS:
        raise MalformedMessage(f"{what} has {count} labels; at most {MAX_LABELS} are accepted")
    out: dict[int | str, Any] = {}
    for _ in range(count):
        label, pos = _label(data, pos, what)
        if label in out:
            raise MalformedMessage(f"{what}: duplicate label {_show(label)}")
        try:
            out[label], pos = decode_at(data, pos, max_depth=4)
        except CborError as exc:
            raise MalformedMessage(f"{what}: value of label {_show(label)}: {exc}") from None
    return out, pos


@dataclass(frozen=True, slots=True)
class Envelope:
    """A COSE_Sign1 split into its parts, NOT verified. Only the headers were decoded (a
    few hundred bytes at most); the payload is still opaque bytes."""

    kid: bytes
    protected: bytes  # the protected header bstr's contents, as received
    unprotected: Mapping[int | str, Any]
    payload: bytes
    signature: bytes

    def to_be_signed(self, external_aad: bytes) -> bytes:
        """The Sig_structure (RFC 9052 section 4.4) in deterministic encoding."""
        return _sig_structure(
            _SIG_STRUCTURE_HEAD + _bstr(self.protected),
            external_aad,
            _bstr_head(len(self.payload)),
            self.payload,
        )

    def verify(self, key: Ed25519PublicKey, external_aad: bytes) -> Verified:
        try:
            key.verify(self.signature, self.to_be_signed(external_aad))
        except InvalidSignature:
            raise BadSignature(
                f"signature does not verify with kid {self.kid.hex()} (altered message, or "
                "wrong external AAD, i.e. topic)"
            ) from None
        return Verified(kid=self.kid, payload=self.payload)

    def verify_digest(self, key: Ed25519PublicKey, external_aad: bytes) -> bytes:
        """Verify, and return :meth:`signed_digest` from the same Sig_structure (built once)."""
        tbs = self.to_be_signed(external_aad)
        try:
            key.verify(self.signature, tbs)
        except InvalidSignature:
            raise BadSignature(
                f"signature does not verify with kid {self.kid.hex()} (altered message, or "
                "wrong external AAD, i.e. topic)"
            ) from None
        return hashlib.sha256(tbs).digest()

    def signed_digest(self, external_aad: bytes) -> bytes:
        """SHA-256 of what the signature covers (protected header, AAD, payload): equal for
        every re-encoding of one signed message (tag or not, unprotected headers added)."""
        return hashlib.sha256(self.to_be_signed(external_aad)).digest()

    @property
    def keychain(self) -> list[bytes]:
        """Key certificates offered in the unprotected header (not authenticated: each one
        must verify on its own before it is believed)."""
        chain = self.unprotected.get(KEYCHAIN)
        if chain is None:
            return []
        if (
            not isinstance(chain, list)
            or len(chain) > MAX_KEYCHAIN
            or any(type(c) is not bytes or len(c) > MAX_CERT for c in chain)
        ):
            raise MalformedMessage(
                f"unprotected {KEYCHAIN!r} must be a list of at most {MAX_KEYCHAIN} key "
                f"certificates of at most {MAX_CERT} bytes"
            )
        return chain


def parse1(message: bytes) -> Envelope:
    """Split a COSE_Sign1 (tagged or not) into its parts without verifying it.

    Linear and bounded: the envelope is walked by its CBOR heads; only the two header maps
    are decoded, strictly. Raises MalformedMessage for anything else."""
    major, arg, pos = _head(message, 0, "message")
    if major == 6:
        if arg != COSE_SIGN1_TAG:
            raise MalformedMessage(f"CBOR tag {arg} is not COSE_Sign1 (18)")
        major, arg, pos = _head(message, pos, "message")
    if major != 4 or arg != 4:
        raise MalformedMessage("COSE_Sign1 must be an array of 4 elements")
    protected, pos = _bytes_at(message, pos, "protected header")
    unprotected, pos = _header_map(message, pos, "unprotected header")
    major, _, _ = _head(message, pos, "payload")
    if major != 2:
        raise MalformedMessage("payload must be a byte string (detached payloads unsupported)")
    payload, pos = _bytes_at(message, pos, "payload")
    signature, pos = _bytes_at(message, pos, "signature")
    if pos != len(message):
        raise MalformedMessage("the message has trailing bytes after the CBOR item")
    if len(signature) != ED25519_SIG_LEN:
        raise MalformedMessage(f"signature is {len(signature)} bytes; EdDSA needs 64")

    # A label may not appear in both buckets; alg, crit and kid are only trusted protected.
    if unprotected and any(label in unprotected for label in (_ALG, _CRIT, _KID)):
        raise MalformedMessage("alg, crit and kid must not appear in the unprotected header")
    if len(protected) == 21 and protected[:5] == _OUR_PROTECTED_HEAD:
        # {1: -8, 4: h'<16 bytes>'}, as sign1 writes it: nothing else to check.
        return Envelope(protected[5:], protected, unprotected, payload, signature)
    if len(protected) > MAX_PROTECTED:
        raise MalformedMessage(f"protected header of {len(protected)} bytes is too large")
    headers, end = _header_map(protected, 0, "protected header")
    if end != len(protected):
        raise MalformedMessage("protected header has trailing bytes")
    alg = headers.get(_ALG)
    # `type(...) is`: in Python True == 1 and -8.0 == -8, and CBOR can encode both.
    if type(alg) is not int or alg != ALG_EDDSA:
        raise MalformedMessage(f"alg {_show(alg)} is not allowed; only EdDSA (-8)")
    if _CRIT in headers:
        raise MalformedMessage("crit header present; no extension headers are understood")
    kid = headers.get(_KID)
    if type(kid) is not bytes:
        raise MalformedMessage("protected header must carry kid (label 4) as a byte string")
    return Envelope(kid, protected, unprotected, payload, signature)


def verify1(
    message: bytes, keys: Mapping[bytes, Ed25519PublicKey], external_aad: bytes = b""
) -> Verified:
    """Verify a COSE_Sign1 (tagged or not) against ``keys`` (kid -> public key).

    Raises MalformedMessage, UnknownKid or BadSignature, never another exception for bad input.
    """
    env = parse1(message)
    key = keys.get(env.kid)
    if key is None:
        raise UnknownKid(env.kid)
    return env.verify(key, external_aad)


def peek_kid(message: bytes) -> bytes:
    """The kid of a well-formed message, WITHOUT verifying it: for routing and diagnostics."""
    return parse1(message).kid
