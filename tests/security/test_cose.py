"""COSE_Sign1: round trips, the exact structure, tampering, strict parsing, and interop with
verifiers and signers written from RFC 9052 with only cbor2 + cryptography."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import re
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from security import (
    ALG_EDDSA,
    BadSignature,
    CoseError,
    DeviceKey,
    MalformedMessage,
    UnknownKid,
    Verified,
    kid_for,
    peek_kid,
    sign1,
    verify1,
)

PRIVATE = Ed25519PrivateKey.generate()
KEY = DeviceKey(PRIVATE)
KEYS = {KEY.kid: KEY.public_key}
OTHER = DeviceKey(Ed25519PrivateKey.generate())
TOPIC = b"edgegw/gw-1/telemetry"
PAYLOAD = cbor2.dumps({"v": 1, "gw": "gw-1", "seq": 1, "r": [["plc/t", 1, 20.5, 0]]})

DOC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"


def hand_sign1(
    protected: bytes,
    payload: Any = PAYLOAD,
    *,
    aad: bytes = TOPIC,
    unprotected: Any = None,
    tag: int | None = 18,
    private: Ed25519PrivateKey = PRIVATE,
) -> bytes:
    """A COSE_Sign1 written out from RFC 9052 section 4.4, correctly signed."""
    sig_structure = cbor2.dumps(["Signature1", protected, aad, payload])
    body = [protected, {} if unprotected is None else unprotected, payload]
    body.append(private.sign(sig_structure))
    return cbor2.dumps(body if tag is None else cbor2.CBORTag(tag, body))


def header(value: Any) -> bytes:
    """An encoded protected header (usually a map; some tests pass other things)."""
    return cbor2.dumps(value)


GOOD_PROTECTED = header({1: -8, 4: KEY.kid})


# --- round trip and structure ----------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 23, 24, 255, 256, 65535, 65536, 100_000])
def test_round_trip_across_length_encodings(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    aad = b"a" * size if size < 1000 else TOPIC  # AAD lengths cross the same boundaries
    assert verify1(sign1(payload, KEY, aad), KEYS, aad) == Verified(kid=KEY.kid, payload=payload)


@given(payload=st.binary(max_size=3000), aad=st.binary(max_size=300))
def test_round_trip_any_payload_and_aad(payload: bytes, aad: bytes) -> None:
    assert verify1(sign1(payload, KEY, aad), KEYS, aad).payload == payload


def test_default_external_aad_is_empty() -> None:
    assert verify1(sign1(PAYLOAD, KEY), KEYS).payload == PAYLOAD
    assert verify1(sign1(PAYLOAD, KEY, b""), KEYS).payload == PAYLOAD


def test_message_structure_decoded_with_cbor2() -> None:
    message = sign1(PAYLOAD, KEY, TOPIC)
    obj = cbor2.loads(message)

    assert isinstance(obj, cbor2.CBORTag)
    assert obj.tag == 18
    assert len(obj.value) == 4
    protected, unprotected, payload, signature = obj.value
    assert cbor2.loads(protected) == {1: -8, 4: KEY.kid}
    assert unprotected == {}
    assert payload == PAYLOAD
    assert len(signature) == 64
    # Deterministic: the canonical map encoding, alg first.
    assert protected == bytes.fromhex("a2012704") + b"\x50" + KEY.kid
    assert message.startswith(b"\xd2\x84")


def test_signers_with_different_kids_do_not_share_cached_headers() -> None:
    for _ in range(3):
        for signer in (KEY, OTHER):
            message = sign1(PAYLOAD, signer, TOPIC)
            assert peek_kid(message) == signer.kid
            keys = {KEY.kid: KEY.public_key, OTHER.kid: OTHER.public_key}
            assert verify1(message, keys, TOPIC).kid == signer.kid


def test_any_object_with_kid_and_sign_is_a_signer() -> None:
    class HsmLikeSigner:
        def __init__(self, private: Ed25519PrivateKey) -> None:
            self._private = private
            self.kid = kid_for(private.public_key())

        def sign(self, data: bytes) -> bytes:
            return self._private.sign(data)

    signer = HsmLikeSigner(PRIVATE)
    assert verify1(sign1(PAYLOAD, signer, TOPIC), KEYS, TOPIC).payload == PAYLOAD


def test_verified_is_frozen() -> None:
    verified = verify1(sign1(PAYLOAD, KEY, TOPIC), KEYS, TOPIC)
    with pytest.raises(dataclasses.FrozenInstanceError):
        verified.payload = b"other"  # type: ignore[misc]


def test_alg_constant() -> None:
    assert ALG_EDDSA == -8


# --- tampering -------------------------------------------------------------------------


def test_every_single_bit_flip_is_rejected() -> None:
    payload = bytes(range(40))
    message = sign1(payload, KEY, TOPIC)
    # d2 84 | 55 a2 01 27 04 50 <kid:16> | a0 | 58 28 <payload:40> | 58 40 <signature:64>
    kid_at = range(8, 24)
    payload_at = range(27, 67)
    signature_at = range(69, 133)
    assert message[kid_at.start : kid_at.stop] == KEY.kid
    assert message[payload_at.start : payload_at.stop] == payload
    assert len(message) == signature_at.stop

    for i in range(len(message)):
        for bit in range(8):
            flipped = bytearray(message)
            flipped[i] ^= 1 << bit
            with pytest.raises(CoseError) as err:
                verify1(bytes(flipped), KEYS, TOPIC)
            if i in kid_at:
                assert isinstance(err.value, UnknownKid)
            elif i in payload_at or i in signature_at:
                assert isinstance(err.value, BadSignature)


@pytest.mark.parametrize(
    "aad",
    [b"", b"edgegw/gw-2/telemetry", b"edgegw/gw-1/event", TOPIC + b"\x00", TOPIC[:-1]],
)
def test_wrong_external_aad_is_bad_signature(aad: bytes) -> None:
    with pytest.raises(BadSignature):
        verify1(sign1(PAYLOAD, KEY, TOPIC), KEYS, aad)


def test_unknown_kid_is_reported_with_the_kid() -> None:
    message = sign1(PAYLOAD, KEY, TOPIC)
    with pytest.raises(UnknownKid) as err:
        verify1(message, {OTHER.kid: OTHER.public_key}, TOPIC)
    assert err.value.kid == KEY.kid
    assert KEY.kid.hex() in str(err.value)
    with pytest.raises(UnknownKid):
        verify1(message, {}, TOPIC)


def test_right_kid_with_wrong_key_is_bad_signature() -> None:
    with pytest.raises(BadSignature):
        verify1(sign1(PAYLOAD, KEY, TOPIC), {KEY.kid: OTHER.public_key}, TOPIC)


def test_payload_swapped_between_two_valid_messages_is_rejected() -> None:
    a = cbor2.loads(sign1(b"first", KEY, TOPIC)).value
    b = cbor2.loads(sign1(b"second", KEY, TOPIC)).value
    spliced = cbor2.dumps(cbor2.CBORTag(18, [a[0], a[1], b[2], a[3]]))
    with pytest.raises(BadSignature):
        verify1(spliced, KEYS, TOPIC)


# --- strict parsing of correctly signed but unacceptable messages ----------------------

KID_BSTR = b"\x50" + KEY.kid


@pytest.mark.parametrize(
    "protected",
    [
        header({1: -7, 4: KEY.kid}),  # ES256
        header({1: -19, 4: KEY.kid}),  # Ed25519 (RFC 9864), not accepted yet
        header({1: -8.0, 4: KEY.kid}),  # float that equals -8 in Python
        header({1: "EdDSA", 4: KEY.kid}),
        header({1: 2**10000, 4: KEY.kid}),  # bignum: must not break the error message
        header({1: "x" * 100_000, 4: KEY.kid}),
        header({4: KEY.kid}),  # no alg
        header({1: -8}),  # no kid
        header({1: -8, 4: KEY.kid.hex()}),  # kid as text
        header({1: -8, 4: KEY.kid, 2: [99]}),  # crit
        header({True: -8, 4: KEY.kid}),  # CBOR true as label (True == 1 in Python)
        bytes.fromhex("a3012604") + KID_BSTR + bytes.fromhex("0127"),  # duplicate alg, last -8
        bytes.fromhex("bf012704") + KID_BSTR + b"\xff",  # indefinite-length map
        header([-8, KEY.kid]),  # array, not map
        b"",  # empty protected header
        header({1: -8, 4: KEY.kid}) + b"\x00",  # trailing byte in the protected bstr
        b"\xff",  # not CBOR
    ],
    ids=[
        "es256",
        "ed25519-19",
        "float-alg",
        "text-alg",
        "bignum-alg",
        "huge-text-alg",
        "no-alg",
        "no-kid",
        "text-kid",
        "crit",
        "bool-label",
        "duplicate-label",
        "indefinite-map",
        "array",
        "empty",
        "trailing-byte",
        "not-cbor",
    ],
)
def test_unacceptable_protected_header_is_malformed_even_if_signed(protected: bytes) -> None:
    message = hand_sign1(protected)
    with pytest.raises(MalformedMessage):
        verify1(message, KEYS, TOPIC)
    with pytest.raises(MalformedMessage):
        peek_kid(message)


@pytest.mark.parametrize("label", [1, 2, 4])
def test_alg_crit_or_kid_in_unprotected_header_is_malformed(label: int) -> None:
    value = {1: -8, 2: [4], 4: KEY.kid}[label]
    with pytest.raises(MalformedMessage):
        verify1(hand_sign1(GOOD_PROTECTED, unprotected={label: value}), KEYS, TOPIC)


@pytest.mark.skipif(
    int(importlib.metadata.version("cbor2").split(".")[0]) < 6,
    reason="cbor2 < 6 cannot report duplicate map keys",
)
def test_duplicate_label_in_unprotected_header_is_malformed() -> None:
    body = cbor2.dumps([GOOD_PROTECTED, {}, PAYLOAD, b"\x00" * 64])
    # Replace the empty map by {99: 1, 99: 2}: cbor2 cannot encode duplicates itself.
    at = 1 + len(GOOD_PROTECTED) + 1
    assert body[at : at + 1] == b"\xa0"
    message = body[:at] + bytes.fromhex("a2 1863 01 1863 02") + body[at + 1 :]
    with pytest.raises(MalformedMessage, match=r"[Dd]uplicate"):
        verify1(message, KEYS, TOPIC)


def test_other_unprotected_headers_are_ignored() -> None:
    """RFC 9052 allows them; they are not authenticated, so verify1 does not return them."""
    message = hand_sign1(GOOD_PROTECTED, unprotected={33: [b"x5chain"], "note": "hi"})
    assert verify1(message, KEYS, TOPIC) == Verified(kid=KEY.kid, payload=PAYLOAD)


def test_untagged_message_is_accepted() -> None:
    tagged = sign1(PAYLOAD, KEY, TOPIC)
    assert tagged[0] == 0xD2
    assert verify1(tagged[1:], KEYS, TOPIC).payload == PAYLOAD
    assert verify1(hand_sign1(GOOD_PROTECTED, tag=None), KEYS, TOPIC).payload == PAYLOAD
    assert peek_kid(tagged[1:]) == KEY.kid


@pytest.mark.parametrize("tag", [16, 17, 19, 61, 98])
def test_other_tags_are_malformed(tag: int) -> None:
    with pytest.raises(MalformedMessage, match=f"tag {tag}"):
        verify1(hand_sign1(GOOD_PROTECTED, tag=tag), KEYS, TOPIC)


def test_nested_tag_is_malformed() -> None:
    inner = cbor2.loads(sign1(PAYLOAD, KEY, TOPIC))
    with pytest.raises(MalformedMessage):
        verify1(cbor2.dumps(cbor2.CBORTag(18, inner)), KEYS, TOPIC)


@pytest.mark.parametrize(
    "body",
    [
        [GOOD_PROTECTED, {}, PAYLOAD],
        [GOOD_PROTECTED, {}, PAYLOAD, b"\x00" * 64, b""],
        [GOOD_PROTECTED, {}, None, b"\x00" * 64],  # detached payload
        [GOOD_PROTECTED, {}, PAYLOAD.hex(), b"\x00" * 64],
        [GOOD_PROTECTED, [], PAYLOAD, b"\x00" * 64],
        [cbor2.loads(GOOD_PROTECTED), {}, PAYLOAD, b"\x00" * 64],  # header not wrapped
        [GOOD_PROTECTED, {}, PAYLOAD, b"\x00" * 63],
        [GOOD_PROTECTED, {}, PAYLOAD, b"\x00" * 65],
        [GOOD_PROTECTED, {}, PAYLOAD, 0],
        {"protected": GOOD_PROTECTED},
        b"just bytes",
    ],
)
def test_wrong_shapes_are_malformed(body: Any) -> None:
    with pytest.raises(MalformedMessage):
        verify1(cbor2.dumps(cbor2.CBORTag(18, body)), KEYS, TOPIC)
    with pytest.raises(MalformedMessage):
        verify1(cbor2.dumps(body), KEYS, TOPIC)


def test_every_truncation_is_malformed() -> None:
    message = sign1(PAYLOAD, KEY, TOPIC)
    for n in range(len(message)):
        with pytest.raises(MalformedMessage):
            verify1(message[:n], KEYS, TOPIC)


@pytest.mark.parametrize("extra", [b"\x00", b"\xa0", sign1(b"x", KEY, TOPIC)])
def test_trailing_data_is_malformed(extra: bytes) -> None:
    with pytest.raises(MalformedMessage, match="trailing"):
        verify1(sign1(PAYLOAD, KEY, TOPIC) + extra, KEYS, TOPIC)


def test_peek_kid_reads_without_keys_and_rejects_garbage() -> None:
    assert peek_kid(sign1(PAYLOAD, OTHER, TOPIC)) == OTHER.kid
    with pytest.raises(MalformedMessage):
        peek_kid(b"\x00")


# --- fuzzing: hostile input only ever raises CoseError ---------------------------------

cbor_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.binary(max_size=70)
    | st.text(max_size=10)
)
cbor_values = st.recursive(
    cbor_leaves,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.integers(-3, 5) | st.text(max_size=2), inner, max_size=4)
        | st.builds(cbor2.CBORTag, st.integers(0, 300), inner)
    ),
    max_leaves=12,
)


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_cose_errors(data: bytes) -> None:
    with pytest.raises(CoseError):
        verify1(data, KEYS, TOPIC)
    with pytest.raises(CoseError):
        peek_kid(data)


@settings(max_examples=300)
@given(value=cbor_values, tagged=st.booleans())
def test_arbitrary_cbor_raises_only_cose_errors(value: Any, tagged: bool) -> None:
    data = cbor2.dumps(cbor2.CBORTag(18, value) if tagged else value)
    with pytest.raises(CoseError):
        verify1(data, KEYS, TOPIC)


@settings(max_examples=300)
@given(
    protected=st.one_of(
        st.dictionaries(st.sampled_from([1, 2, 3, 4, -1, "a"]), cbor_values, max_size=4).map(
            header
        ),
        cbor_values.map(cbor2.dumps),
        st.binary(max_size=40),
    ),
    rest=st.tuples(cbor_values, cbor_values, cbor_values),
)
def test_arbitrary_four_element_arrays_raise_only_cose_errors(
    protected: bytes, rest: tuple[Any, Any, Any]
) -> None:
    data = cbor2.dumps(cbor2.CBORTag(18, [protected, *rest]))
    with pytest.raises(CoseError):
        verify1(data, KEYS, TOPIC)


@settings(max_examples=500)
@given(st.data())
def test_mutated_message_never_verifies_to_another_payload(data: st.DataObject) -> None:
    original = sign1(PAYLOAD, KEY, TOPIC)
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(mutated)))
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        if op == "insert":
            mutated[at:at] = data.draw(st.binary(min_size=1, max_size=3))
        elif at < len(mutated):
            if op == "set":
                mutated[at] = data.draw(st.integers(0, 255))
            else:
                del mutated[at]
    try:
        verified = verify1(bytes(mutated), KEYS, TOPIC)
    except CoseError:
        return
    # Only re-encodings of the same content can verify (e.g. a length in a longer form).
    assert verified == Verified(kid=KEY.kid, payload=PAYLOAD)


# --- interop with an RFC 9052 implementation written out here ---------------------------


def test_sign1_output_verifies_with_hand_built_sig_structure() -> None:
    message = sign1(PAYLOAD, KEY, TOPIC)

    tag = cbor2.loads(message)
    assert tag.tag == 18
    protected, _unprotected, payload, signature = tag.value
    assert cbor2.loads(protected)[1] == -8
    kid = cbor2.loads(protected)[4]
    sig_structure = cbor2.dumps(["Signature1", protected, TOPIC, payload])
    public_key = {KEY.kid: KEY.public_key}[kid]
    public_key.verify(signature, sig_structure)  # raises if not valid
    with pytest.raises(InvalidSignature):
        public_key.verify(signature, cbor2.dumps(["Signature1", protected, b"x", payload]))


def test_hand_built_message_verifies_with_verify1() -> None:
    protected = cbor2.dumps({1: -8, 4: kid_for(PRIVATE.public_key())})
    sig_structure = cbor2.dumps(["Signature1", protected, TOPIC, PAYLOAD])
    signature = PRIVATE.sign(sig_structure)
    message = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, PAYLOAD, signature]))

    assert verify1(message, KEYS, TOPIC) == Verified(kid=KEY.kid, payload=PAYLOAD)
    assert message == sign1(PAYLOAD, KEY, TOPIC)  # Ed25519 is deterministic: same bytes


def _doc_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)


def test_verifier_in_wire_format_doc_verifies_real_messages() -> None:
    (code,) = [block for block in _doc_python_blocks() if "def verify(" in block]
    assert "edgegw" not in code.replace("edgegw/", "")  # no edgegw import in the example
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    verify, kid_of = namespace["verify"], namespace["kid_of"]

    topic = "edgegw/press-line-3/telemetry"
    body = {
        "v": 1,
        "gw": "press-line-3",
        "seq": 42,
        "boot": 3,
        "kind": "telemetry",
        "t": 1_763_700_000_123_456_789,
        "r": [
            ["plc1/temp", 1_763_700_000_100_000_000, 21.5, 0],
            ["plc1/state", 1_763_700_000_100_000_000, None, 1, "timeout"],
        ],
    }
    message = sign1(cbor2.dumps(body), KEY, topic.encode())
    keys = {kid_of(KEY.public_key): KEY.public_key}

    assert verify(message, topic, keys) == body
    with pytest.raises(InvalidSignature):
        verify(message, "edgegw/other-gw/telemetry", keys)
    with pytest.raises(KeyError):
        verify(message, topic, {})
