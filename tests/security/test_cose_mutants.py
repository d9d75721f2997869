"""Survivors of the mutation run over security/cose.py (`make mutate MUTANTS='security.cose*'`)
that mattered: the receiver's verify-and-digest step (its fast path) against real signed
messages, what each refusal says (the operator reads it in an alert), the bound on a
hostile kid in logs, and the unprotected header's deterministic encoding."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from security import DeviceKey, sign1
from security.cose import (
    KEYCHAIN,
    BadSignature,
    MalformedMessage,
    UnknownKid,
    encode_unprotected,
    parse1,
    verify1,
)

KEY = DeviceKey(Ed25519PrivateKey.generate())
TOPIC = b"edgegw/gw1/telemetry"
PAYLOAD = cbor2.dumps({"v": 2, "seq": 1})


def test_verify_digest_is_the_signed_digest_and_refuses_a_wrong_topic() -> None:
    """The receiver verifies each message once and keeps this digest (duplicate vs
    conflict): it must be the digest of what was signed, and a wrong topic must fail."""
    env = parse1(sign1(PAYLOAD, KEY, TOPIC))
    digest = env.verify_digest(KEY.public_key, TOPIC)
    assert digest == env.signed_digest(TOPIC)
    assert len(digest) == 32 and digest != env.signed_digest(b"edgegw/gw1/event")
    with pytest.raises(
        BadSignature, match=r"\(altered message, or wrong external AAD, i\.e\. topic\)$"
    ):
        env.verify_digest(KEY.public_key, b"edgegw/gw2/telemetry")
    other = DeviceKey(Ed25519PrivateKey.generate())
    with pytest.raises(BadSignature, match=f"kid {KEY.kid.hex()}"):
        env.verify_digest(other.public_key, TOPIC)


def test_a_bad_signature_says_what_may_be_wrong() -> None:
    with pytest.raises(
        BadSignature,
        match=r"kid [0-9a-f]{32} \(altered message, or wrong external AAD, i\.e\. topic\)$",
    ):
        verify1(sign1(PAYLOAD, KEY, TOPIC), {KEY.kid: KEY.public_key}, b"other/topic")


@pytest.mark.parametrize(
    ("kid", "shown"),
    [
        (b"\x01" * 16, "01" * 16),  # ours: shown whole
        (b"\x02" * 32, "02" * 32),  # the longest shown whole
        (b"\x03" * 33, "03" * 32 + "..."),  # longer: cut, and says so
        (b"\x04" * 10_000, "04" * 32 + "..."),  # a hostile kid does not flood the log
    ],
)
def test_an_unknown_kid_is_shown_bounded(kid: bytes, shown: str) -> None:
    assert str(UnknownKid(kid)) == f"unknown kid {shown} (not in the key set)"


def test_an_unknown_kid_from_a_message_is_named() -> None:
    with pytest.raises(UnknownKid) as exc:
        verify1(sign1(PAYLOAD, KEY, TOPIC), {}, TOPIC)
    assert exc.value.kid == KEY.kid and KEY.kid.hex() in str(exc.value)


def test_the_unprotected_header_encodes_the_same_whatever_its_order() -> None:
    chain = [b"c" * 20]
    a = encode_unprotected({KEYCHAIN: chain, 33: b"x"})
    b = encode_unprotected({33: b"x", KEYCHAIN: chain})
    assert a == b == cbor2.dumps({33: b"x", KEYCHAIN: chain}, canonical=True)
    assert encode_unprotected(None) == encode_unprotected({}) == b"\xa0"


@pytest.mark.parametrize("label", [1, 2, 4])
def test_protected_only_labels_in_the_unprotected_header_are_refused_with_why(label: int) -> None:
    with pytest.raises(ValueError, match=r"^alg, crit and kid belong in the protected header$"):
        encode_unprotected({label: 1})


def _with_protected(prot: bytes) -> bytes:
    """A message (wrongly signed: parse1 runs before any signature check) with these
    protected header bytes."""
    return (
        b"\xd2\x84" + cbor2.dumps(prot) + b"\xa0" + cbor2.dumps(PAYLOAD) + b"\x58\x40" + bytes(64)
    )


@pytest.mark.parametrize(
    ("protected", "says"),
    [
        ({1: 1, 4: b"k" * 16}, "alg 1 is not allowed"),
        ({1: -7, 4: b"k" * 16}, "alg -7 is not allowed"),
        ({1: "EdDSA", 4: b"k" * 16}, "alg 'EdDSA' is not allowed"),
        ({1: -8.0, 4: b"k" * 16}, "alg float is not allowed"),
        ({4: b"k" * 16}, "alg NoneType is not allowed"),
        ({1: -1000, 4: b"k" * 16}, "alg -1000 is not allowed"),
        ({1: 1000, 4: b"k" * 16}, "alg 1000 is not allowed"),
        ({1: -(2**64), 4: b"k" * 16}, f"alg {-(2**64)} is not allowed"),  # CBOR's lowest int
        ({1: "E" * 40, 4: b"k" * 16}, "alg '" + "E" * 32 + "' is not allowed"),  # cut at 32
    ],
)
def test_a_refused_alg_is_named(protected: dict[Any, Any], says: str) -> None:
    with pytest.raises(MalformedMessage, match=f"^{says}; only EdDSA"):
        parse1(_with_protected(cbor2.dumps(protected)))


def test_a_duplicate_label_is_named() -> None:
    # map(2) {7: 1, 7: 2} and {"x": 1, "x": 2}, written by hand (cbor2 cannot)
    for dup, shown in ((b"\xa2\x07\x01\x07\x02", "7"), (b"\xa2\x61x\x01\x61x\x02", "'x'")):
        with pytest.raises(MalformedMessage, match=f"^protected header: duplicate label {shown}$"):
            parse1(_with_protected(dup))


@pytest.mark.parametrize(
    ("unprotected", "says"),
    [
        (b"\xa1\xf9\x3c\x00\x01", "unprotected header: header labels must be integers or short"),
        (b"\xa1\x7f\x61a\xff\x01", "unprotected header: indefinite length or reserved value"),
    ],
)
def test_a_bad_label_is_refused_naming_the_header(unprotected: bytes, says: str) -> None:
    """A float label, and a text label of indefinite length."""
    body = b"\xd2\x84" + cbor2.dumps(cbor2.dumps({1: -8, 4: b"k" * 16})) + unprotected
    body += cbor2.dumps(PAYLOAD) + b"\x58\x40" + bytes(64)
    with pytest.raises(MalformedMessage, match=f"^{says}"):
        parse1(body)


# -- a valid message in another encoding than sign1's (another COSE library) -------------


def hand_signed(protected: bytes, keys_kid: bytes = KEY.kid, unprotected: Any = None) -> bytes:
    """Correctly signed with KEY, the protected header bytes as given."""
    tbs = cbor2.dumps(["Signature1", protected, TOPIC, PAYLOAD])
    body = [protected, unprotected or {}, PAYLOAD, KEY.sign(tbs)]
    return cbor2.dumps(cbor2.CBORTag(18, body))


@pytest.mark.parametrize(
    ("protected", "kid"),
    [
        (cbor2.dumps({4: KEY.kid, 1: -8}), KEY.kid),  # kid first: not sign1's bytes
        (cbor2.dumps({1: -8, 4: KEY.kid, 3: "application/cbor"}), KEY.kid),  # content type
        (cbor2.dumps({1: -8, 4: b"a-longer-key-id-of-24by"}), b"a-longer-key-id-of-24by"),
    ],
    ids=["kid-first", "content-type", "long-kid"],
)
def test_a_valid_message_not_written_by_sign1_verifies(protected: bytes, kid: bytes) -> None:
    message = hand_signed(protected, unprotected={33: b"x"})
    env = parse1(message)
    assert (env.kid, env.protected, env.payload) == (kid, protected, PAYLOAD)
    assert env.unprotected == {33: b"x"} and len(env.signature) == 64
    assert verify1(message, {kid: KEY.public_key}, TOPIC).payload == PAYLOAD
    with pytest.raises(BadSignature):
        verify1(message, {kid: KEY.public_key}, b"edgegw/gw1/event")


def test_the_protected_header_may_be_256_bytes_not_more() -> None:
    def prot(n: int) -> bytes:
        return cbor2.dumps({1: -8, 4: KEY.kid, 5: b"i" * n})

    n = next(n for n in range(200, 260) if len(prot(n)) == 256)
    assert verify1(hand_signed(prot(n)), {KEY.kid: KEY.public_key}, TOPIC).payload == PAYLOAD
    with pytest.raises(MalformedMessage, match=r"^protected header of 257 bytes is too large$"):
        parse1(hand_signed(prot(n + 1)))


def nested(depth: int) -> Any:
    v: Any = 0
    for _ in range(depth):
        v = [v]
    return v


def test_a_header_value_nests_four_deep_at_most() -> None:
    assert parse1(sign1(PAYLOAD, KEY, TOPIC, encode_unprotected({"x": nested(4)}))).unprotected
    with pytest.raises(MalformedMessage, match=r"^unprotected header: value of label 'x': max"):
        parse1(sign1(PAYLOAD, KEY, TOPIC, encode_unprotected({"x": nested(5)})))


# -- what each refusal says: the receiver's alert detail ------------------------------------

GOOD = sign1(PAYLOAD, KEY, TOPIC)
PROT = cbor2.dumps(cbor2.dumps({1: -8, 4: KEY.kid}))  # the protected bstr, as sent
SIG = cbor2.dumps(bytes(64))


@pytest.mark.parametrize(
    ("message", "says"),
    [
        (b"", "message: the message ends early (truncated)"),
        (b"\xd2", "message: the message ends early (truncated)"),
        (b"\xd2\x84\x58", "protected header: the message ends early (truncated)"),
        (b"\xd1" + GOOD[1:], "CBOR tag 17 is not COSE_Sign1 (18)"),
        (b"\xd2\x83" + PROT + b"\xa0" + cbor2.dumps(PAYLOAD), "COSE_Sign1 must be an array of 4"),
        (b"\xd2\x84\x61x\xa0", "protected header must be a byte string"),
        (b"\xd2\x84" + PROT + b"\x80", "unprotected header must be a map"),
        (b"\xd2\x84" + PROT, "unprotected header: the message ends early (truncated)"),
        (b"\xd2\x84" + PROT + b"\xa0", "payload: the message ends early (truncated)"),
        (b"\xd2\x84" + PROT + b"\xa0\xf6" + SIG, "payload must be a byte string (detached"),
        (b"\xd2\x84" + PROT + b"\xa0\x45abc", "payload: the message ends early (truncated)"),
        (b"\xd2\x84" + PROT + b"\xa0\x40\x61x", "signature must be a byte string"),
        (b"\xd2\x84" + PROT + b"\xa0\x40", "signature: the message ends early (truncated)"),
        (GOOD + b"\x00", "the message has trailing bytes after the CBOR item"),
        (b"\xd2\x84" + PROT + b"\xa0\x40" + cbor2.dumps(bytes(63)), "signature is 63 bytes; Ed"),
        (b"\xd2\x84" + PROT + b"\xa1\x01\x27\x40" + SIG, "alg, crit and kid must not appear in"),
        (
            b"\xd2\x84"
            + cbor2.dumps(cbor2.dumps({1: -8, 4: KEY.kid}) + b"\x00")
            + b"\xa0\x40"
            + SIG,
            "protected header has trailing bytes",
        ),
        (
            b"\xd2\x84" + cbor2.dumps(cbor2.dumps({1: -8, 4: KEY.kid, 2: [3]})) + b"\xa0\x40" + SIG,
            "crit header present; no extension headers are understood",
        ),
        (
            b"\xd2\x84" + cbor2.dumps(cbor2.dumps({1: -8, 4: "kid"})) + b"\xa0\x40" + SIG,
            "protected header must carry kid (label 4) as a byte string",
        ),
        (
            b"\xd2\x84" + cbor2.dumps(b"\x80") + b"\xa0\x40" + SIG,
            "protected header must be a map",
        ),
        (
            b"\xd2\x84" + cbor2.dumps(b"\xa1\x01") + b"\xa0\x40" + SIG,
            "protected header: value of label 1: ",
        ),
        (
            b"\xd2\x84" + cbor2.dumps(b"\xa1\xf6\x01") + b"\xa0\x40" + SIG,
            "protected header: header labels must be integers or short text strings",
        ),
    ],
)
def test_each_refusal_names_the_part_that_is_wrong(message: bytes, says: str) -> None:
    with pytest.raises(MalformedMessage) as exc:
        parse1(message)
    assert str(exc.value).startswith(says), str(exc.value)
