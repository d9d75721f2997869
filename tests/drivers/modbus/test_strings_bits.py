"""Decoding strings and bits of a register, against hand-written register vectors."""

from __future__ import annotations

from typing import Any

import pytest

from drivers.modbus import ModbusTcpDevice, compile_plan, decode_value, encode_value


def device(*tags: dict[str, Any], **kw: Any) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate(
        {"protocol": "modbus_tcp", "name": "d", "host": "127.0.0.1", "tags": list(tags), **kw}
    )


# "PUMP-7" as the device sends it: big (AB) = first character in the high byte.
PUMP_AB = [0x5055, 0x4D50, 0x2D37]  # P U | M P | - 7
PUMP_BA = [0x5550, 0x504D, 0x372D]


@pytest.mark.parametrize(
    ("order", "registers", "length", "expected"),
    [
        ("AB", PUMP_AB, 6, "PUMP-7"),
        ("BA", PUMP_BA, 6, "PUMP-7"),
        ("AB", [*PUMP_AB, 0x0000, 0x0000], 10, "PUMP-7"),  # trailing NULs
        ("AB", [*PUMP_AB, 0x2020, 0x2020], 10, "PUMP-7"),  # trailing spaces
        ("AB", [0x2041, 0x2000], 4, " A"),  # leading space kept
        ("AB", [0x4142, 0x0043], 4, "AB"),  # cut at the first NUL, garbage after it dropped
        ("AB", [0x4142, 0x4344], 3, "ABC"),  # odd length: half of the last register
        ("AB", [0x41FF], 2, "A\ufffd"),  # not ASCII: replacement character, still good
    ],
)
def test_strings_decode_with_byte_order_and_trimming(
    order: str, registers: list[int], length: int, expected: str
) -> None:
    dev = device({"name": "s", "address": 0, "type": "string", "length": length, "order": order})
    assert decode_value(dev.tags[0], dev, registers) == expected


def test_device_byte_order_applies_to_strings() -> None:
    dev = device({"name": "s", "address": 0, "type": "string", "length": 6}, byte_order="little")
    assert decode_value(dev.tags[0], dev, PUMP_BA) == "PUMP-7"


def test_string_encode_is_the_inverse_and_pads_with_nul() -> None:
    dev = device({"name": "s", "address": 0, "type": "string", "length": 7, "order": "BA"})
    assert encode_value(dev.tags[0], dev, "PUMP-7") == [*PUMP_BA, 0x0000]
    with pytest.raises(ValueError, match="not ASCII"):
        encode_value(dev.tags[0], dev, "Pümp")


@pytest.mark.parametrize(
    ("register", "bits"),
    [
        (0x0000, set()),
        (0x0001, {0}),
        (0x8000, {15}),
        (0x0100, {8}),  # bit 8 is the low bit of the high byte
        (0xA5C3, {0, 1, 6, 7, 8, 10, 13, 15}),
    ],
)
def test_bits_of_a_register_count_from_the_least_significant(register: int, bits: set[int]) -> None:
    dev = device(
        *({"name": f"b{i}", "register": 40001, "type": "bool", "bit": i} for i in range(16))
    )
    (req,) = compile_plan(dev).requests
    got = {r[0]: r[2] for r in req.decoder.decode([register], 7)}
    assert got == {f"d/b{i}": i in bits for i in range(16)}
    assert all(type(v) is bool for v in got.values())


def test_one_request_holds_numbers_strings_and_bits() -> None:
    """Strings, bits and numbers of different orders decode side by side from one response."""
    dev = device(
        {"name": "f", "address": 0, "type": "float32", "order": "CDAB"},
        {"name": "serial", "address": 2, "type": "string", "length": 6},
        {"name": "run", "address": 5, "type": "bool", "bit": 0},
        {"name": "alarm", "address": 5, "type": "bool", "bit": 15},
        {"name": "status", "address": 5, "type": "uint16"},
        {"name": "tag", "address": 6, "type": "string", "length": 3, "order": "BA"},
    )
    (req,) = compile_plan(dev).requests
    regs = [0x0000, 0x4120, *PUMP_AB, 0x8001, 0x4241, 0x0043]
    assert {r[0][2:]: r[2] for r in req.decoder.decode(regs, 1)} == {
        "f": 10.0,
        "serial": "PUMP-7",
        "run": True,
        "alarm": True,
        "status": 0x8001,
        "tag": "ABC",
    }


def test_bit_encode_gives_only_its_bit() -> None:
    dev = device({"name": "b", "address": 0, "type": "bool", "bit": 4})
    assert encode_value(dev.tags[0], dev, True) == [0x0010]
    assert encode_value(dev.tags[0], dev, False) == [0]
