"""COSE_Sign1 (RFC 9052) with EdDSA/Ed25519: the envelope of every published message.

Only what edgegw needs: one signer, alg -8, ``kid`` in the protected header, an attached
payload and an external AAD (the MQTT topic). Messages are emitted tagged (CBOR tag 18);
tagged and untagged are both accepted. The algorithm is fixed, never taken from the message.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import IO, Any, Protocol

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "ALG_EDDSA",
    "BadSignature",
    "CoseError",
    "MalformedMessage",
    "Signer",
    "UnknownKid",
    "Verified",
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


@lru_cache(maxsize=64)
def _prefixes(kid: bytes) -> tuple[bytes, bytes]:
    """Per-kid constant parts: (Sig_structure up to external_aad, message up to payload)."""
    protected = _bstr(cbor2.dumps({_ALG: ALG_EDDSA, _KID: kid}))
    return _SIG_STRUCTURE_HEAD + protected, _MESSAGE_HEAD + protected + _EMPTY_MAP


def _sig_structure(
    prefix: bytes, external_aad: bytes, payload_head: bytes, payload: bytes
) -> bytes:
    """Encoded Sig_structure; ``prefix`` is its head plus the protected header as a bstr."""
    return b"".join((prefix, _bstr_head(len(external_aad)), external_aad, payload_head, payload))


def sign1(payload: bytes, signer: Signer, external_aad: bytes = b"") -> bytes:
    """Sign ``payload`` into a tagged COSE_Sign1 with protected header {alg: -8, kid}.

    The CBOR around the payload is written by hand from cached per-kid prefixes, so a call
    is two joins (Sig_structure and message) plus the signature.
    """
    tbs_prefix, msg_prefix = _prefixes(signer.kid)
    payload_head = _bstr_head(len(payload))
    signature = signer.sign(_sig_structure(tbs_prefix, external_aad, payload_head, payload))
    return b"".join((msg_prefix, payload_head, payload, _bstr(signature)))


def _show(value: object) -> str:
    """A short, safe rendering of a decoded value for error messages."""
    # repr() of a huge bignum raises ValueError, and a text value may be megabytes long.
    if type(value) is int and -(2**64) <= value < 2**64:
        return str(value)
    if type(value) is str:
        return repr(value[:32])
    return type(value).__name__


def _strict_decoder() -> Callable[[IO[bytes]], cbor2.CBORDecoder]:
    # RFC 9052 section 3: a label that appears twice in a header map makes the message
    # malformed. cbor2 >= 6 can refuse duplicate map keys while decoding; cbor2 5 cannot,
    # and then only the protected header is checked for them (see _map_head_count).
    strict = partial(cbor2.CBORDecoder, allow_duplicate_keys=False)
    try:
        strict(io.BytesIO(b""))
    except TypeError:
        return cbor2.CBORDecoder
    return strict


_new_decoder = _strict_decoder()


def _decode_one(data: bytes, what: str) -> Any:
    """Decode exactly one CBOR item; anything else, trailing bytes included, is malformed."""
    decoder = _new_decoder(io.BytesIO(data))
    try:
        obj = decoder.decode()
    # cbor2 raises many types on hostile input (decode errors, ValueError from semantic tags,
    # RecursionError, ...): all of them mean "not a message".
    except Exception as exc:
        raise MalformedMessage(f"{what} is not valid CBOR: {exc}") from None
    try:
        decoder.read(1)
    except cbor2.CBORDecodeEOF:
        return obj
    except Exception as exc:
        raise MalformedMessage(f"{what}: cannot check for trailing data: {exc}") from None
    raise MalformedMessage(f"{what} has trailing bytes after the CBOR item")


def _map_head_count(data: bytes) -> int | None:
    """Declared entry count of a definite-length CBOR map at the start of ``data``."""
    if not data or data[0] >> 5 != 5:
        return None
    info = data[0] & 0x1F
    if info < 24:
        return info
    size = {24: 1, 25: 2, 26: 4, 27: 8}.get(info)
    if size is None or len(data) < 1 + size:
        return None  # indefinite length (31) or reserved
    return int.from_bytes(data[1 : 1 + size], "big")


def _parse(message: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """Check structure and headers; return (kid, protected bstr contents, payload, signature)."""
    obj = _decode_one(message, "message")
    if isinstance(obj, cbor2.CBORTag):
        if obj.tag != COSE_SIGN1_TAG:
            raise MalformedMessage(f"CBOR tag {obj.tag} is not COSE_Sign1 (18)")
        obj = obj.value
    if not isinstance(obj, list | tuple) or len(obj) != 4:
        raise MalformedMessage("COSE_Sign1 must be an array of 4 elements")
    protected, unprotected, payload, signature = obj
    if type(protected) is not bytes:
        raise MalformedMessage("protected header must be a byte string")
    if not isinstance(unprotected, Mapping):  # cbor2 6 gives a frozendict inside a tag
        raise MalformedMessage("unprotected header must be a map")
    if type(payload) is not bytes:
        raise MalformedMessage("payload must be a byte string (detached payloads unsupported)")
    if type(signature) is not bytes:
        raise MalformedMessage("signature must be a byte string")
    if len(signature) != ED25519_SIG_LEN:
        raise MalformedMessage(f"signature is {len(signature)} bytes; EdDSA needs 64")

    headers = _decode_one(protected, "protected header")
    if not isinstance(headers, Mapping):
        raise MalformedMessage("protected header must be an encoded map")
    # Duplicate labels make a message malformed (RFC 9052 section 3). Older cbor2 keeps the
    # last one silently, so compare the declared entry count with what was decoded.
    if _map_head_count(protected) != len(headers):
        raise MalformedMessage("protected header has duplicate labels or is indefinite-length")
    # `type(...) is`: in Python True == 1 and -8.0 == -8, and CBOR can encode both.
    if any(type(label) is not int and type(label) is not str for label in headers):
        raise MalformedMessage("header labels must be integers or text strings")
    alg = headers.get(_ALG)
    if type(alg) is not int or alg != ALG_EDDSA:
        raise MalformedMessage(f"alg {_show(alg)} is not allowed; only EdDSA (-8)")
    if _CRIT in headers:
        raise MalformedMessage("crit header present; no extension headers are understood")
    kid = headers.get(_KID)
    if type(kid) is not bytes:
        raise MalformedMessage("protected header must carry kid (label 4) as a byte string")
    # A label may not appear in both buckets; alg, crit and kid are only trusted protected.
    if any(label in unprotected for label in (_ALG, _CRIT, _KID)):
        raise MalformedMessage("alg, crit and kid must not appear in the unprotected header")
    return kid, protected, payload, signature


def verify1(
    message: bytes, keys: Mapping[bytes, Ed25519PublicKey], external_aad: bytes = b""
) -> Verified:
    """Verify a COSE_Sign1 (tagged or not) against ``keys`` (kid -> public key).

    Raises MalformedMessage, UnknownKid or BadSignature, never another exception for bad input.
    """
    kid, protected, payload, signature = _parse(message)
    key = keys.get(kid)
    if key is None:
        raise UnknownKid(kid)
    tbs = _sig_structure(
        _SIG_STRUCTURE_HEAD + _bstr(protected), external_aad, _bstr_head(len(payload)), payload
    )
    try:
        key.verify(signature, tbs)
    except InvalidSignature:
        raise BadSignature(
            f"signature does not verify with kid {kid.hex()} (altered message, or wrong "
            "external AAD, i.e. topic)"
        ) from None
    return Verified(kid=kid, payload=payload)


def peek_kid(message: bytes) -> bytes:
    """The kid of a well-formed message, WITHOUT verifying it: for routing and diagnostics."""
    return _parse(message)[0]
