"""The command format on its own: what `edgegw command` signs verifies with nothing but
cbor2 and cryptography (as docs/wire-format.md shows for telemetry), and the gateway's
decoder is strict about every field; the write block's value check is exact about
types (a bool is never a 1)."""

from __future__ import annotations

import hashlib

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from drivers.write import WriteSpec, value_problem
from gateway.downlink.wire import CommandError, decode_command, encode_command, sign_command
from security import DeviceKey

TOPIC = "edgegw/gw-01/command"


def test_a_signed_command_verifies_with_plain_cbor_and_cryptography() -> None:
    key = DeviceKey(Ed25519PrivateKey.generate())
    payload = encode_command(
        gw="gw-01", id="c-1", op="write", args={"tag": "b/sp", "value": 2.5}, lifetime_s=60
    )
    message = sign_command(payload, key, TOPIC)
    obj = cbor2.loads(message)
    assert obj.tag == 18
    protected, unprotected, body, signature = obj.value
    header = cbor2.loads(protected)
    raw = key.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert header == {1: -8, 4: hashlib.sha256(raw).digest()[:16]} and unprotected == {}
    key.public_key.verify(signature, cbor2.dumps(["Signature1", protected, TOPIC.encode(), body]))
    cmd = cbor2.loads(body)
    assert cmd["v"] == 1 and cmd["op"] == "write" and cmd["exp"] - cmd["iat"] == 60 * 10**9
    assert decode_command(body).args == {"tag": "b/sp", "value": 2.5}


GOOD = {"v": 1, "gw": "gw-01", "id": "c-1", "iat": 10, "exp": 20, "op": "write",
        "args": {"tag": "b/sp", "value": 1}}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"v": 2}, "v"),
        ({"v": True}, "v"),
        ({"extra": 1}, "unknown"),
        ({"id": "has space"}, "id"),
        ({"id": ""}, "id"),
        ({"iat": -1}, "iat"),
        ({"exp": 10}, "exp"),
        ({"op": "reboot"}, "op"),
        ({"args": {"tag": "b/sp"}}, "args"),
        ({"args": {"tag": "nodevice", "value": 1}}, "args.tag"),
        ({"args": {"tag": "b/sp", "value": [1]}}, "args.value"),
        ({"args": {"tag": "b/sp", "value": None}}, "args.value"),
        ({"op": "config", "args": {"version": -1, "config": "x"}}, "args.version"),
        ({"op": "config", "args": {"version": 1, "config": " "}}, "args.config"),
    ],
)
def test_the_decoder_names_the_field(change: dict[str, object], field: str) -> None:
    body = {**GOOD, **change}
    with pytest.raises(CommandError) as e:
        decode_command(cbor2.dumps(body))
    assert field in str(e.value)


def test_the_decoder_refuses_tags_duplicates_and_trailing_bytes() -> None:
    good = cbor2.dumps(GOOD)
    assert decode_command(good).id == "c-1"
    with pytest.raises(CommandError):
        decode_command(good + b"\x00")
    with pytest.raises(CommandError):
        decode_command(cbor2.dumps(cbor2.CBORTag(24, GOOD)))
    dup = b"\xa2\x61v\x01\x61v\x01"  # {"v": 1, "v": 1}
    with pytest.raises(CommandError):
        decode_command(dup)


def test_value_checks_are_exact_about_types() -> None:
    number = WriteSpec(min=0, max=10)
    enum = WriteSpec(values=[0, 1, 2])
    stop_only = WriteSpec(values=[False])
    assert value_problem(number, "int", True) is not None  # a bool is not a number
    assert value_problem(number, "int", 2.5) == (
        "bad_value",
        "the tag holds whole numbers; got 2.5",
    )
    assert value_problem(number, "float", 10.0) is None
    assert value_problem(number, "float", 10.01)[0] == "out_of_range"  # type: ignore[index]
    assert value_problem(number, "float", float("nan"))[0] == "bad_value"  # type: ignore[index]
    assert value_problem(enum, "int", 2.0) is None
    assert value_problem(enum, "int", 3)[0] == "not_allowed"  # type: ignore[index]
    assert value_problem(stop_only, "bool", 0)[0] == "bad_value"  # type: ignore[index]
    assert value_problem(stop_only, "bool", True)[0] == "not_allowed"  # type: ignore[index]
    assert value_problem(stop_only, "bool", False) is None
    off = WriteSpec(min=0, max=1, allowed=False)
    assert value_problem(off, "int", 1)[0] == "not_writable"  # type: ignore[index]
