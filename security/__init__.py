"""Device keys and COSE_Sign1 signing/verification (see docs/wire-format.md)."""

from security.cose import (
    ALG_EDDSA,
    BadSignature,
    CoseError,
    MalformedMessage,
    Signer,
    UnknownKid,
    Verified,
    peek_kid,
    sign1,
    verify1,
)
from security.keys import DeviceKey, KeyFileError, kid_for, load_public_key

__all__ = [
    "ALG_EDDSA",
    "BadSignature",
    "CoseError",
    "DeviceKey",
    "KeyFileError",
    "MalformedMessage",
    "Signer",
    "UnknownKid",
    "Verified",
    "kid_for",
    "load_public_key",
    "peek_kid",
    "sign1",
    "verify1",
]
