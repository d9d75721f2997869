"""Decoding: every type from hand-written big-endian byte vectors, and encoding back."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.contract import Quality
from drivers.s7 import DeviceConfig, S7Tag, compile_plan
from drivers.s7.decode import decode_value, encode_raw, encode_value
from tests.drivers.s7.vectors import SCALED, VECTORS, tag_at


def tag(dtype: str, extra: dict[str, Any]) -> S7Tag:
    return S7Tag.model_validate(tag_at("t", dtype, extra, "DB1", 0))


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b and type(a) is type(b)


@pytest.mark.parametrize(("dtype", "extra", "data", "value"), VECTORS + SCALED)
def test_every_type_decodes_exactly(
    dtype: str, extra: dict[str, Any], data: bytes, value: Any
) -> None:
    assert same(decode_value(tag(dtype, extra), data), value)


@pytest.mark.parametrize(("dtype", "extra", "data", "value"), VECTORS)
def test_encoding_is_the_inverse(
    dtype: str, extra: dict[str, Any], data: bytes, value: Any
) -> None:
    """What the simulator writes for a value is the PLC's layout (a BOOL: only its bit)."""
    t = tag(dtype, extra)
    encoded = encode_value(t, value)
    if dtype == "BOOL":
        assert encoded == bytes([1 << extra["bit"] if value else 0])
    else:
        assert encoded == data


def test_nan_is_a_good_value() -> None:
    assert math.isnan(decode_value(tag("REAL", {}), b"\x7f\xc0\x00\x00"))


def test_string_longer_than_its_declared_length_is_bad_config() -> None:
    """An actual-length byte above the tag's length means the address or length is wrong."""
    dev = DeviceConfig.model_validate(
        {
            "protocol": "s7",
            "name": "d",
            "host": "h",
            "tags": [tag_at("s", "STRING", {"length": 4}, "DB1", 0)],
        }
    )
    (r,) = compile_plan(dev).ranges
    (reading,) = r.decoder.decode(b"\x14\x09abcdefghi", 0, 7)
    assert reading[:4] == ("d/s", 7, None, int(Quality.BAD_CONFIG))
    assert reading[4] == (
        "STRING header says 9 characters (max-length byte 20) but the tag's length is 4: "
        "check the tag's address and length"
    )


def test_whole_range_decodes_from_an_offset_in_the_response() -> None:
    """The decoder reads straight out of the response PDU at the range's offset."""
    tags = [
        {"name": "r", "address": "DB1.DBD0", "type": "REAL"},
        {"name": "gap_int", "address": "DB1.DBW10", "type": "INT", "scale": 0.5},
        {"name": "x", "address": "DB1.DBX12.6"},
        {"name": "whole", "address": "DB1.DBD14"},
        {"name": "high", "address": "DB1.DBW14"},  # overlaps "whole"
    ]
    dev = DeviceConfig.model_validate({"protocol": "s7", "name": "d", "host": "h", "tags": tags})
    (r,) = compile_plan(dev).ranges
    data = struct.pack(">f6xhB1xI", 2.5, -8, 0x40, 0xDEADBEEF)
    got = {x[0]: x[2:] for x in r.decoder.decode(b"junk" + data, 4, 1)}
    assert got == {
        "d/r": (2.5, 0),
        "d/gap_int": (-4.0, 0),
        "d/x": (True, 0),
        "d/whole": (0xDEADBEEF, 0),
        "d/high": (0xDEAD, 0),
    }


@given(st.integers(-(2**31), 2**31 - 1), st.integers(0, 2**32 - 1), st.floats(width=32))
def test_round_trip_dint_dword_real(dint: int, dword: int, real: float) -> None:
    for dtype, value in (("DINT", dint), ("DWORD", dword), ("REAL", real)):
        t = tag(dtype, {})
        assert same(decode_value(t, encode_raw(t, value)), value)


def test_out_of_range_value_is_refused_by_the_encoder() -> None:
    with pytest.raises(ValueError, match="outside the range of INT"):
        encode_value(tag("INT", {}), 40000)
