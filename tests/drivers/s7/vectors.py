"""Hand-written S7 byte vectors (big-endian, as the PLC holds them) and their values.

Shared by the decoder tests and the driver tests, which write the same bytes into a real
snap7 server and read them back. Each entry: (type, extra tag fields, bytes, value).
"""

from __future__ import annotations

from typing import Any

VECTORS: list[tuple[str, dict[str, Any], bytes, Any]] = [
    ("BOOL", {"bit": 3}, bytes([0b0000_1000]), True),
    ("BOOL", {"bit": 2}, bytes([0b0000_1000]), False),
    ("BOOL", {"bit": 7}, bytes([0b1000_0000]), True),
    ("BOOL", {"bit": 0}, bytes([0b1111_1110]), False),
    ("BYTE", {}, b"\x00", 0),
    ("BYTE", {}, b"\x7f", 127),
    ("BYTE", {}, b"\xff", 255),
    ("WORD", {}, b"\x12\x34", 0x1234),
    ("WORD", {}, b"\xff\xff", 65535),
    ("DWORD", {}, b"\x12\x34\x56\x78", 0x12345678),
    ("DWORD", {}, b"\xff\xff\xff\xff", 4294967295),
    ("INT", {}, b"\xff\xfe", -2),
    ("INT", {}, b"\x80\x00", -32768),
    ("INT", {}, b"\x7f\xff", 32767),
    ("DINT", {}, b"\xff\xff\xff\xfe", -2),
    ("DINT", {}, b"\x80\x00\x00\x00", -2147483648),
    ("DINT", {}, b"\x00\x01\x86\xa0", 100000),
    ("REAL", {}, b"\x41\x20\x00\x00", 10.0),
    ("REAL", {}, b"\xc2\xf6\xe9\x79", -123.45600128173828),
    ("REAL", {}, b"\x3f\x80\x00\x00", 1.0),
    ("REAL", {}, b"\x7f\x80\x00\x00", float("inf")),
    ("LREAL", {}, b"\x40\x09\x21\xfb\x54\x44\x2d\x18", 3.141592653589793),
    ("LREAL", {}, b"\xc0\x24\x00\x00\x00\x00\x00\x00", -10.0),
    # STRING: max-length byte, actual-length byte, then the characters (padding after)
    ("STRING", {"length": 10}, b"\x0a\x05hello\x00\x00\x00\x00\x00", "hello"),
    ("STRING", {"length": 4}, b"\x04\x00\x00\x00\x00\x00", ""),
    ("STRING", {"length": 3}, b"\x03\x03Gr\xfc", "Grü"),
    ("STRING", {"length": 6}, b"\x06\x06ABCDEF", "ABCDEF"),
]

SCALED: list[tuple[str, dict[str, Any], bytes, Any]] = [
    ("WORD", {"scale": 0.1, "offset": -20}, b"\x03\xe8", 1000 * 0.1 - 20),
    ("INT", {"scale": 2}, b"\xff\xfe", -4.0),
    ("REAL", {"scale": 10, "offset": 1}, b"\x3f\x80\x00\x00", 11.0),
]

LETTER = {"BOOL": "X", "BYTE": "B", "WORD": "W", "DWORD": "D", "INT": "W", "DINT": "D"}
LETTER |= {"REAL": "D", "LREAL": "B", "STRING": "B"}


def tag_at(name: str, dtype: str, extra: dict[str, Any], area: str, byte: int) -> dict[str, Any]:
    """A tag dict of this type at ``byte`` of ``area`` ("DB1", "M", "E", "A", ...)."""
    fields = {k: v for k, v in extra.items() if k != "bit"}
    letter = LETTER[dtype]
    bit = f".{extra.get('bit', 0)}" if letter == "X" else ""
    if area.startswith("DB"):
        address = f"{area}.DB{letter}{byte}{bit}"
    else:
        address = f"{area}{'' if letter == 'X' else letter}{byte}{bit}"
    return {"name": name, "address": address, "type": dtype, **fields}
