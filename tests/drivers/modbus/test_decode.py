"""Decoding: every type and byte/word order against hand-written register vectors.

The vectors are literal register values worked out by hand (and checked against a
datasheet-style byte listing), never produced by ``encode_value``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from drivers.modbus import ModbusTcpDevice, compile_plan, decode_value, encode_value
from drivers.modbus.decode import DecodeError

# (type, value, {order: registers}); order = byte_order/word_order, ABCD notation.
# fmt: off
MULTI: list[tuple[str, Any, dict[str, list[int]]]] = [
    ("int32", -123456789, {  # 0xF8A432EB
        "ABCD": [0xF8A4, 0x32EB], "CDAB": [0x32EB, 0xF8A4],
        "BADC": [0xA4F8, 0xEB32], "DCBA": [0xEB32, 0xA4F8],
    }),
    ("uint32", 0x12345678, {
        "ABCD": [0x1234, 0x5678], "CDAB": [0x5678, 0x1234],
        "BADC": [0x3412, 0x7856], "DCBA": [0x7856, 0x3412],
    }),
    ("int64", -72623859790382856, {  # 0xFEFDFCFBFAF9F8F8
        "ABCD": [0xFEFD, 0xFCFB, 0xFAF9, 0xF8F8], "CDAB": [0xF8F8, 0xFAF9, 0xFCFB, 0xFEFD],
        "BADC": [0xFDFE, 0xFBFC, 0xF9FA, 0xF8F8], "DCBA": [0xF8F8, 0xF9FA, 0xFBFC, 0xFDFE],
    }),
    ("int64", 0x0102030405060708, {
        "ABCD": [0x0102, 0x0304, 0x0506, 0x0708], "CDAB": [0x0708, 0x0506, 0x0304, 0x0102],
        "BADC": [0x0201, 0x0403, 0x0605, 0x0807], "DCBA": [0x0807, 0x0605, 0x0403, 0x0201],
    }),
    ("uint64", 0xFEDCBA9876543210, {
        "ABCD": [0xFEDC, 0xBA98, 0x7654, 0x3210], "CDAB": [0x3210, 0x7654, 0xBA98, 0xFEDC],
        "BADC": [0xDCFE, 0x98BA, 0x5476, 0x1032], "DCBA": [0x1032, 0x5476, 0x98BA, 0xDCFE],
    }),
    ("float32", 10.0, {  # 0x41200000
        "ABCD": [0x4120, 0x0000], "CDAB": [0x0000, 0x4120],
        "BADC": [0x2041, 0x0000], "DCBA": [0x0000, 0x2041],
    }),
    ("float32", 123.45600128173828, {  # 0x42F6E979, the float32 nearest 123.456
        "ABCD": [0x42F6, 0xE979], "CDAB": [0xE979, 0x42F6],
        "BADC": [0xF642, 0x79E9], "DCBA": [0x79E9, 0xF642],
    }),
    ("float64", 3.141592653589793, {  # 0x400921FB54442D18
        "ABCD": [0x4009, 0x21FB, 0x5444, 0x2D18], "CDAB": [0x2D18, 0x5444, 0x21FB, 0x4009],
        "BADC": [0x0940, 0xFB21, 0x4454, 0x182D], "DCBA": [0x182D, 0x4454, 0xFB21, 0x0940],
    }),
]

# (type, value, big-byte register, little-byte register)
SINGLE: list[tuple[str, int, int, int]] = [
    ("int16", -2, 0xFFFE, 0xFEFF),
    ("int16", -32768, 0x8000, 0x0080),
    ("int16", 0x1234, 0x1234, 0x3412),
    ("uint16", 0x1234, 0x1234, 0x3412),
    ("uint16", 65535, 0xFFFF, 0xFFFF),
]

ORDERS = {"ABCD": ("big", "big"), "CDAB": ("big", "little"),
          "BADC": ("little", "big"), "DCBA": ("little", "little")}
# fmt: on


def device(*tags: dict[str, Any], **kw: Any) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate(
        {"protocol": "modbus_tcp", "name": "d", "host": "127.0.0.1", "tags": list(tags), **kw}
    )


MULTI_CASES = [
    pytest.param(t, v, o, regs, id=f"{t}-{v}-{o}")
    for t, v, by_order in MULTI
    for o, regs in by_order.items()
]


@pytest.mark.parametrize(("dtype", "value", "order", "registers"), MULTI_CASES)
def test_multi_register_types_decode_per_tag_order(
    dtype: str, value: Any, order: str, registers: list[int]
) -> None:
    """Tag-level byte/word order selects the right byte arrangement."""
    byte, word = ORDERS[order]
    tag = {"name": "t", "address": 0, "type": dtype, "byte_order": byte, "word_order": word}
    dev = device(tag)
    got = decode_value(dev.tags[0], dev, registers)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(("dtype", "value", "order", "registers"), MULTI_CASES)
def test_multi_register_types_decode_device_default_order(
    dtype: str, value: Any, order: str, registers: list[int]
) -> None:
    """With no order on the tag, the device's byte/word order applies."""
    byte, word = ORDERS[order]
    dev = device({"name": "t", "address": 0, "type": dtype}, byte_order=byte, word_order=word)
    assert decode_value(dev.tags[0], dev, registers) == value


@pytest.mark.parametrize(("dtype", "value", "big", "little"), SINGLE)
@pytest.mark.parametrize("word", ["big", "little"])
def test_single_register_types_follow_byte_order_only(
    dtype: str, value: int, big: int, little: int, word: str
) -> None:
    """16-bit types: byte order swaps the two bytes; the device word order is irrelevant."""
    for byte, reg in (("big", big), ("little", little)):
        dev = device(
            {"name": "t", "address": 0, "type": dtype, "byte_order": byte}, word_order=word
        )
        assert decode_value(dev.tags[0], dev, [reg]) == value


def test_integers_stay_integers_without_scaling() -> None:
    dev = device({"name": "t", "address": 0, "type": "uint16"})
    got = decode_value(dev.tags[0], dev, [42])
    assert got == 42 and type(got) is int


@pytest.mark.parametrize(
    ("dtype", "registers", "scale", "offset", "expected"),
    [
        ("uint16", [1234], 0.1, 0.0, 123.4),
        ("int16", [0xFFF6], 0.5, 100.0, 95.0),  # -10 * 0.5 + 100
        ("int32", [0xFFFF, 0xFF38], 0.01, 0.0, -2.0),  # -200 * 0.01
        ("uint16", [0], 1.0, -40.0, -40.0),
        ("float32", [0x4120, 0x0000], 2.0, 1.0, 21.0),
        ("float64", [0x4009, 0x21FB, 0x5444, 0x2D18], -1.0, 0.0, -3.141592653589793),
    ],
)
def test_scale_and_offset(
    dtype: str, registers: list[int], scale: float, offset: float, expected: float
) -> None:
    """value = raw * scale + offset."""
    tag = {"name": "t", "address": 0, "type": dtype, "scale": scale, "offset": offset}
    dev = device(tag)
    assert decode_value(dev.tags[0], dev, registers) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("register", "expected"),
    [(0, False), (1, True), (0x8000, True), (0x0100, True), (0xFFFF, True)],
)
def test_bool_in_register_means_nonzero(register: int, expected: bool) -> None:
    dev = device({"name": "t", "address": 0, "type": "bool"})
    assert decode_value(dev.tags[0], dev, [register]) is expected


@pytest.mark.parametrize("bit", [False, True])
def test_bool_in_coil_table(bit: bool) -> None:
    dev = device({"name": "t", "table": "coil", "address": 7})
    assert decode_value(dev.tags[0], dev, [bit]) is bit


def test_nan_and_infinity_decode_as_good_values() -> None:
    dev = device({"name": "n", "address": 0, "type": "float32"})
    assert math.isnan(decode_value(dev.tags[0], dev, [0x7FC0, 0x0000]))
    assert decode_value(dev.tags[0], dev, [0xFF80, 0x0000]) == -math.inf


def test_wrong_register_count_is_a_decode_error() -> None:
    dev = device({"name": "t", "address": 0, "type": "float32"})
    with pytest.raises(DecodeError, match="got 1 registers, expected 2"):
        decode_value(dev.tags[0], dev, [0x4120])


def test_one_request_decodes_mixed_orders_overlaps_and_gaps() -> None:
    """A request holding tags of different orders, overlapping and with gaps decodes
    each tag as if alone (one struct call per group of like tags)."""
    dev = device(
        {"name": "f", "address": 0, "type": "float32"},
        {"name": "f_swapped", "address": 2, "type": "float32", "word_order": "little"},
        {"name": "hi", "address": 4, "type": "uint16"},
        {"name": "both", "address": 4, "type": "uint32"},  # overlaps 'hi'
        {"name": "lo_le", "address": 5, "type": "uint16", "byte_order": "little"},
        {"name": "on", "address": 9, "type": "bool"},
        {"name": "scaled", "address": 10, "type": "int16", "scale": 0.1},
    )
    plan = compile_plan(dev)
    (req,) = plan.requests
    regs = [0x4120, 0x0000, 0xE979, 0x42F6, 0x1234, 0x5678, 0, 0, 0, 0x0002, 0xFF9C]
    readings = {r[0]: r[2] for r in req.decoder.decode(regs, 1)}
    assert readings == {
        "d/f": 10.0,
        "d/f_swapped": 123.45600128173828,
        "d/hi": 0x1234,
        "d/both": 0x12345678,
        "d/lo_le": 0x7856,
        "d/on": True,
        "d/scaled": pytest.approx(-10.0),
    }


@pytest.mark.parametrize(("dtype", "value", "order", "registers"), MULTI_CASES)
def test_encode_is_the_inverse_of_decode(
    dtype: str, value: Any, order: str, registers: list[int]
) -> None:
    """The simulator's encoder writes exactly the hand-written vectors."""
    byte, word = ORDERS[order]
    dev = device({"name": "t", "address": 0, "type": dtype}, byte_order=byte, word_order=word)
    assert encode_value(dev.tags[0], dev, value) == registers


def test_encode_rejects_values_outside_the_type() -> None:
    dev = device({"name": "t", "address": 0, "type": "uint16", "scale": 0.1})
    assert encode_value(dev.tags[0], dev, 6553.5) == [65535]
    with pytest.raises(ValueError, match="outside the range of uint16"):
        encode_value(dev.tags[0], dev, 6553.6)
