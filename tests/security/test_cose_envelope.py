"""parse1: the COSE_Sign1 envelope is walked by its heads, never decoded whole, so no
unauthenticated input can make verification slow; the signed-content digest is the same
for every re-encoding of one signed message; the keychain header is bounded."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import cbor2
import pytest

from security import DeviceKey, sign1
from security.cose import (
    KEYCHAIN,
    BadSignature,
    MalformedMessage,
    encode_unprotected,
    parse1,
    verify1,
)
from security.strictcbor import CborError, strict_loads
from tests.security.strictcbor_paths import strict_cbor_path  # noqa: F401  (fixture)

# Every test here runs with both strict-CBOR decoders (tests/security/strictcbor_paths.py).
pytestmark = pytest.mark.usefixtures("strict_cbor_path")

TOPIC = b"edgegw/gw1/telemetry"
PAYLOAD = cbor2.dumps({"v": 1, "x": list(range(50))})


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> DeviceKey:
    return DeviceKey.load_or_create(tmp_path_factory.mktemp("k"))[0]


def reencode(message: bytes, *, tagged: bool = True, unprotected: dict | None = None) -> bytes:
    """The same signed parts in another envelope: what anyone on the broker can make."""
    env = parse1(message)
    body = [env.protected, unprotected or {}, env.payload, env.signature]
    return cbor2.dumps(cbor2.CBORTag(18, body) if tagged else body)


def test_parse1_splits_what_sign1_wrote(key: DeviceKey) -> None:
    m = sign1(PAYLOAD, key, TOPIC)
    env = parse1(m)
    assert (env.kid, env.payload, len(env.signature)) == (key.kid, PAYLOAD, 64)
    assert env.unprotected == {} and env.keychain == []
    assert env.verify(key.public_key, TOPIC).payload == PAYLOAD
    with pytest.raises(BadSignature):
        env.verify(key.public_key, b"edgegw/gw2/telemetry")


def test_signed_digest_ignores_everything_that_is_not_signed(key: DeviceKey) -> None:
    m = sign1(PAYLOAD, key, TOPIC)
    d = parse1(m).signed_digest(TOPIC)
    for variant in (
        m[1:],  # untagged
        reencode(m, unprotected={"note": "added by someone on the broker"}),
        reencode(m, tagged=False, unprotected={99: [1, 2, 3]}),
    ):
        assert variant != m
        env = parse1(variant)
        env.verify(key.public_key, TOPIC)
        assert env.signed_digest(TOPIC) == d
    # a different payload, or the same payload on another topic, is other signed content
    assert parse1(sign1(PAYLOAD + b"\x00", key, TOPIC)).signed_digest(TOPIC) != d
    assert parse1(m).signed_digest(b"edgegw/gw1/event") != d


def test_keychain_header_is_carried_and_bounded(key: DeviceKey) -> None:
    certs = [b"c" * 100, b"d" * 200]
    m = sign1(PAYLOAD, key, TOPIC, encode_unprotected({KEYCHAIN: certs}))
    env = parse1(m)
    assert env.keychain == certs
    env.verify(key.public_key, TOPIC)  # the unprotected header is not signed
    for bad in ([b"x"] * 17, [b"x" * 513], ["text"], b"not a list"):
        env = parse1(reencode(m, unprotected={KEYCHAIN: bad}))
        with pytest.raises(MalformedMessage, match="keychain"):
            _ = env.keychain
    with pytest.raises(ValueError):
        encode_unprotected({4: b"kid"})


@pytest.mark.parametrize(
    "value",
    [
        cbor2.CBORTag(30, [2**4000 + 1, 3**2500]),  # rational: a gcd of bignums
        cbor2.CBORTag(35, "(a+)+$"),  # a regex to compile
        cbor2.CBORTag(5, [2**60, 2**4000]),  # bigfloat
        cbor2.CBORTag(28, [1]),  # shared reference
        2**5000,  # a bignum is a tag too
    ],
    ids=["rational", "regex", "bigfloat", "shareable", "bignum"],
)
def test_tags_in_headers_are_refused_not_evaluated(key: DeviceKey, value: object) -> None:
    m = reencode(sign1(PAYLOAD, key, TOPIC), unprotected={"x": value})
    with pytest.raises(MalformedMessage, match="tags are not allowed"):
        parse1(m)


def test_nesting_bomb_and_wide_maps_are_refused(key: DeviceKey) -> None:
    m = sign1(PAYLOAD, key, TOPIC)
    env = parse1(m)
    prefix = b"\xd2\x84" + cbor2.dumps(env.protected)
    tail = cbor2.dumps(env.payload) + cbor2.dumps(env.signature)
    deep = b"\xa1\x61x" + b"\x81" * 100_000 + b"\x00"  # {"x": [[[[...]]]]}
    with pytest.raises(MalformedMessage, match="depth"):
        parse1(prefix + deep + tail)
    wide = b"\xb9\x01\x00" + b"".join(cbor2.dumps(i) + b"\x00" for i in range(256))
    with pytest.raises(MalformedMessage, match="256 labels"):
        parse1(prefix + wide + tail)
    # a length that claims more than the message holds
    with pytest.raises(MalformedMessage, match="truncated"):
        parse1(b"\xd2\x84\x5b" + (2**62).to_bytes(8, "big"))


def test_hostile_megabytes_cost_milliseconds(key: DeviceKey) -> None:
    """Each hostile shape, 2 MiB of it, is rejected (or split) in linear time. The bound is
    ~100x what it costs here: it catches a quadratic parser (seconds), not noise."""
    m = sign1(PAYLOAD, key, TOPIC)
    env = parse1(m)
    prefix = b"\xd2\x84" + cbor2.dumps(env.protected)
    tail = cbor2.dumps(env.payload) + cbor2.dumps(env.signature)
    mib2 = 2 * 2**20
    shapes = {
        "long text value": prefix + cbor2.dumps({"x": "a" * mib2}) + tail,
        "many small items": prefix + b"\xa1\x61x" + cbor2.dumps([0] * mib2) + tail,
        "garbage": bytes(range(256)) * (mib2 // 256),
        "huge payload, bad signature": sign1(b"\x00" * mib2, key, TOPIC)[:-1] + b"\x00",
    }
    for name, data in shapes.items():
        t0 = time.process_time()
        with contextlib.suppress(MalformedMessage, BadSignature):
            verify1(data, {key.kid: key.public_key}, TOPIC)
        spent = time.process_time() - t0
        assert spent < 1.0, f"{name}: {spent:.2f} s of CPU for 2 MiB"


def test_strict_loads_refuses_what_our_formats_never_hold() -> None:
    assert strict_loads(cbor2.dumps({"a": [1, 2.5, "x", b"y", None, True]})) == {
        "a": [1, 2.5, "x", b"y", None, True]
    }
    for bad in (
        b"\xa2\x61a\x01\x61a\x02",  # duplicate key
        b"\xa1\x01\x01",  # integer key
        b"\x9f\x01\xff",  # indefinite length
        cbor2.dumps(cbor2.CBORTag(1, 0)),  # a tag
        b"\x81" * 20 + b"\x00",  # too deep
        cbor2.dumps(1) + b"\x00",  # trailing byte
        b"\x9b" + (2**40).to_bytes(8, "big"),  # an array longer than the input
    ):
        with pytest.raises(CborError):
            strict_loads(bad)


def test_key_certificates_and_audit_records_decode_strictly(tmp_path: Path) -> None:
    from security.checkpoint import FormatError, decode_record

    with pytest.raises(FormatError):
        decode_record(cbor2.dumps({"seq": cbor2.CBORTag(2, b"\x01" * 4000)}))
