"""Parsing S7 addresses the way engineers write them (STEP 7 / TIA Portal absolute notation).

Accepted, case-insensitive, with an optional leading ``%`` (as TIA Portal shows them)::

    DB10.DBX0.3  DB10.DBB2  DB10.DBW6  DB10.DBD4     data block: bit, byte, word, dword
    DB3.STRING10.20                                  STRING at byte 10, 20 characters
    M0.1  MB5  MW10  MD20                            bit memory
    I0.1  IB0  IW2  ID4     (German: E0.1 EB0 EW2)   inputs
    Q0.0  QB1  QW4  QD8     (German: A0.0 AB1 AW4)   outputs

``MX0.1``/``IX0.1``/``QX0.0`` (PLC4X style) are accepted too. Each error quotes the address,
says what is wrong and shows the nearest correct form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .types import LETTERS, MAX_BYTE, MNEMONICS, STRING_MAX, Area

__all__ = ["Address", "AddressError", "parse_address", "parse_tsap"]

_DB = re.compile(r"DB(\d+)\.DB([XBWD])(\d+)(?:\.(\d+))?")
_DB_STRING = re.compile(r"DB(\d+)\.STRING(\d+)\.(\d+)")
_TSAP_DOTTED = re.compile(r"\s*([0-9A-Fa-f]{2})\.([0-9A-Fa-f]{2})\s*")
_AREA = re.compile(r"([MIEQA])([XBWD]?)(\d+)(?:\.(\d+))?")

EXAMPLES = (
    "DB1.DBX0.3, DB1.DBB2, DB1.DBW6, DB1.DBD4, DB3.STRING10.20, M0.1, MB5, MW10, MD20, "
    "I0.1 (E0.1), IB0, IW2, Q0.0 (A0.0), QB1, QW4"
)


class AddressError(ValueError):
    """An address that cannot be parsed; the message says why and how to fix it."""


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed address: where a tag's first byte (and bit) is."""

    area: Area
    db: int
    """DB number; 0 outside the DB area."""
    byte: int
    bit: int | None
    """Bit number 0..7 for ``X`` (bit) addresses, else None."""
    letter: str
    """Size letter: X (bit), B (byte), W (word), D (double word)."""
    string_length: int | None = None
    """Characters, when written as ``DB3.STRING10.20``."""

    def __str__(self) -> str:
        """Canonical STEP 7 form, e.g. ``DB1.DBX0.3``, ``MW10``, ``I0.1``."""
        bit = f".{self.bit}" if self.bit is not None else ""
        if self.area is Area.DB:
            return f"DB{self.db}.DB{self.letter}{self.byte}{bit}"
        letter = "" if self.letter == "X" else self.letter
        return f"{self.area.value}{letter}{self.byte}{bit}"

    def with_letter(self, letter: str) -> str:
        """This place with another size letter, for fix-it hints (``DB1.DBW6`` -> ``DB1.DBD6``)."""
        bit = ".0" if letter == "X" else ""
        if self.area is Area.DB:
            return f"DB{self.db}.DB{letter}{self.byte}{bit}"
        return f"{self.area.value}{'' if letter == 'X' else letter}{self.byte}{bit}"


def parse_address(text: str) -> Address:
    """Parse one address; raises :class:`AddressError` with a precise message."""
    if not isinstance(text, str) or not text.strip():
        raise AddressError(f"address {text!r} is empty; write e.g. {EXAMPLES}")
    raw = text
    s = "".join(text.split()).upper()
    if s.startswith("%"):
        s = s[1:]
    if m := _DB_STRING.fullmatch(s):
        db, byte, length = (int(g) for g in m.groups())
        _check_db(raw, db)
        _check_byte(raw, byte)
        if not 1 <= length <= STRING_MAX:
            raise AddressError(
                f"address {raw!r}: STRING length {length} is out of range; "
                f"accepted: 1..{STRING_MAX} characters"
            )
        return Address(Area.DB, db, byte, None, "B", length)
    if m := _DB.fullmatch(s):
        db = int(m[1])
        _check_db(raw, db)
        return _finish(raw, Area.DB, db, m[2], m[3], m[4])
    if m := _AREA.fullmatch(s):
        area = MNEMONICS[m[1]]
        return _finish(raw, area, 0, m[2] or "X", m[3], m[4], letter_given=bool(m[2]))
    raise AddressError(_why_not(raw, s))


def _finish(
    raw: str,
    area: Area,
    db: int,
    letter: str,
    byte_text: str,
    bit_text: str | None,
    *,
    letter_given: bool = True,
) -> Address:
    byte = int(byte_text)
    _check_byte(raw, byte)
    prefix = f"DB{db}.DB" if area is Area.DB else area.value
    bit_form = f"DB{db}.DBX{byte}" if area is Area.DB else f"{area.value}{byte}"
    if letter == "X":
        if bit_text is None:
            if not letter_given:  # e.g. "M10": a bit or a byte?
                raise AddressError(
                    f"address {raw!r} is incomplete: write {bit_form}.0 .. {bit_form}.7 for a "
                    f"bit, or {prefix}B{byte} / {prefix}W{byte} / {prefix}D{byte} for a byte / "
                    "word / double word"
                )
            raise AddressError(
                f"address {raw!r} is a bit address without its bit number; write "
                f"{bit_form}.0 .. {bit_form}.7"
            )
        bit = int(bit_text)
        if not 0 <= bit <= 7:
            raise AddressError(f"address {raw!r}: bit {bit} is out of range; accepted: 0..7")
        return Address(area, db, byte, bit, "X")
    if bit_text is not None:
        raise AddressError(
            f"address {raw!r}: only bit (X) addresses take a bit number, but {letter} reads "
            f"{LETTERS[letter].width}; write {prefix}{letter}{byte}, or {bit_form}.{bit_text} "
            "for a bit"
        )
    return Address(area, db, byte, None, letter)


def parse_tsap(value: object) -> int:
    """A TSAP as written in hardware configs: 0x0100, "0x0100", "01.00" or "0100"."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str) and (m := _TSAP_DOTTED.fullmatch(value)):
        n = int(m[1] + m[2], 16)
    elif isinstance(value, str) and re.fullmatch(r"\s*(0[xX])?[0-9A-Fa-f]{1,4}\s*", value):
        n = int(value, 16)
    else:
        raise AddressError(
            f"TSAP {value!r} is not valid; accepted: 16-bit hex as '0x0100', '01.00' or '0100'"
        )
    if not 0 <= n <= 0xFFFF:
        raise AddressError(f"TSAP {value!r} is out of range; accepted: 0x0000..0xFFFF")
    return n


def _check_db(raw: str, db: int) -> None:
    if not 1 <= db <= 65535:
        raise AddressError(f"address {raw!r}: DB number {db} is out of range; accepted: 1..65535")


def _check_byte(raw: str, byte: int) -> None:
    if byte > MAX_BYTE:
        raise AddressError(
            f"address {raw!r}: byte offset {byte} is out of range; accepted: 0..{MAX_BYTE}"
        )


def _why_not(raw: str, s: str) -> str:
    """The most helpful message for an address none of the patterns match."""
    head = f"cannot read address {raw!r}"
    if "," in s:
        return (
            f"{head}: it uses the comma notation of nodeS7/pyS7; write the STEP 7 form, "
            f"e.g. DB1,R4 -> DB1.DBD4 with type: REAL, DB1,X0.3 -> DB1.DBX0.3"
        )
    if ":" in s:
        addr, _, typ = s.partition(":")
        return (
            f"{head}: the type goes into the tag's 'type' field, not the address; write "
            f"address: {addr}, type: {typ}"
        )
    if re.fullmatch(r"[TCZ]\d+", s):
        return f"{head}: timers and counters are not supported; accepted areas: DB, M, I/E, Q/A"
    if re.fullmatch(r"P[IEQA][BWD]?\d+(\.\d+)?", s):
        return (
            f"{head}: peripheral (direct I/O) access is not supported; read the process "
            f"image instead (e.g. {s[1:]})"
        )
    if re.fullmatch(r"L[XBWD]?\d+(\.\d+)?", s):
        return f"{head}: local data (L) exists only inside a running block and cannot be read"
    if m := re.fullmatch(r"DB(\d+)\.?(?:DB)?([XBWD])(\d+)(\.\d+)?", s):
        return f"{head}: write DB{m[1]}.DB{m[2]}{m[3]}{m[4] or ''}"
    if re.fullmatch(r"DB\d+", s):
        return f"{head}: name a place inside the DB, e.g. {s}.DBW0 or {s}.DBX0.0"
    return f"{head}; accepted forms (case-insensitive, optional leading %): {EXAMPLES}"
