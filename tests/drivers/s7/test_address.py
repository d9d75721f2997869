"""The address parser: every accepted notation, and a precise message for every error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.s7 import Address, AddressError, Area, parse_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("DB10.DBD4", Address(Area.DB, 10, 4, None, "D")),
        ("DB1.DBX0.3", Address(Area.DB, 1, 0, 3, "X")),
        ("DB1.DBB2", Address(Area.DB, 1, 2, None, "B")),
        ("DB1.DBW6", Address(Area.DB, 1, 6, None, "W")),
        ("DB3.STRING10.20", Address(Area.DB, 3, 10, None, "B", 20)),
        ("MW10", Address(Area.M, 0, 10, None, "W")),
        ("MD20", Address(Area.M, 0, 20, None, "D")),
        ("MB5", Address(Area.M, 0, 5, None, "B")),
        ("M0.1", Address(Area.M, 0, 0, 1, "X")),
        ("I0.1", Address(Area.I, 0, 0, 1, "X")),
        ("IB0", Address(Area.I, 0, 0, None, "B")),
        ("IW2", Address(Area.I, 0, 2, None, "W")),
        ("ID4", Address(Area.I, 0, 4, None, "D")),
        ("Q0.0", Address(Area.Q, 0, 0, 0, "X")),
        ("QB1", Address(Area.Q, 0, 1, None, "B")),
        ("QW4", Address(Area.Q, 0, 4, None, "W")),
        # German mnemonics: E (Eingang) = I, A (Ausgang) = Q
        ("E0.1", Address(Area.I, 0, 0, 1, "X")),
        ("EB0", Address(Area.I, 0, 0, None, "B")),
        ("EW2", Address(Area.I, 0, 2, None, "W")),
        ("ED8", Address(Area.I, 0, 8, None, "D")),
        ("A0.0", Address(Area.Q, 0, 0, 0, "X")),
        ("AB1", Address(Area.Q, 0, 1, None, "B")),
        ("AW4", Address(Area.Q, 0, 4, None, "W")),
        # common variants: TIA's %, lower case, spaces, PLC4X's explicit X, limits
        ("%DB1.DBX0.3", Address(Area.DB, 1, 0, 3, "X")),
        ("%MW10", Address(Area.M, 0, 10, None, "W")),
        ("db1.dbw6", Address(Area.DB, 1, 6, None, "W")),
        (" DB1 . DBW 6 ", Address(Area.DB, 1, 6, None, "W")),
        ("MX0.1", Address(Area.M, 0, 0, 1, "X")),
        ("IX1.7", Address(Area.I, 0, 1, 7, "X")),
        ("QX0.0", Address(Area.Q, 0, 0, 0, "X")),
        ("DB65535.DBB65535", Address(Area.DB, 65535, 65535, None, "B")),
        ("db3.string0.254", Address(Area.DB, 3, 0, None, "B", 254)),
    ],
)
def test_every_notation(text: str, expected: Address) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("E0.1", "I0.1"), ("AW4", "QW4"), ("%db1.dbx0.3", "DB1.DBX0.3"), ("MX0.1", "M0.1")],
)
def test_canonical_form(text: str, canonical: str) -> None:
    assert str(parse_address(text)) == canonical


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "address '' is empty; write e.g. DB1.DBX0.3"),
        ("   ", "is empty"),
        ("DB1.DBX0", "'DB1.DBX0' is a bit address without its bit number; write DB1.DBX0.0 .."),
        ("I3", "'I3' is incomplete: write I3.0 .. I3.7 for a bit, or IB3 / IW3 / ID3"),
        ("M10", "'M10' is incomplete: write M10.0 .. M10.7 for a bit, or MB10 / MW10 / MD10"),
        ("DB1.DBX0.8", "'DB1.DBX0.8': bit 8 is out of range; accepted: 0..7"),
        ("M0.9", "'M0.9': bit 9 is out of range; accepted: 0..7"),
        ("DB1.DBW0.1", "only bit (X) addresses take a bit number, but W reads a word"),
        ("DB1.DBW0.1", "write DB1.DBW0, or DB1.DBX0.1 for a bit"),
        ("MW2.1", "write MW2, or M2.1 for a bit"),
        ("DB0.DBW0", "'DB0.DBW0': DB number 0 is out of range; accepted: 1..65535"),
        ("DB65536.DBW0", "DB number 65536 is out of range; accepted: 1..65535"),
        ("MW65536", "'MW65536': byte offset 65536 is out of range; accepted: 0..65535"),
        ("DB3.STRING10.0", "STRING length 0 is out of range; accepted: 1..254 characters"),
        ("DB3.STRING10.255", "STRING length 255 is out of range"),
        ("DB1,R4", "comma notation of nodeS7/pyS7; write the STEP 7 form, e.g. DB1,R4 -> DB1.DBD4"),
        (
            "DB1.DBD0:REAL",
            "the type goes into the tag's 'type' field, not the address; write "
            "address: DB1.DBD0, type: REAL",
        ),
        ("T5", "timers and counters are not supported; accepted areas: DB, M, I/E, Q/A"),
        ("C5", "timers and counters are not supported"),
        ("Z5", "timers and counters are not supported"),
        (
            "PIW256",
            "peripheral (direct I/O) access is not supported; read the process image "
            "instead (e.g. IW256)",
        ),
        ("LW0", "local data (L) exists only inside a running block"),
        ("DB1.W0", "cannot read address 'DB1.W0': write DB1.DBW0"),
        ("DB1DBD4", "write DB1.DBD4"),
        ("DB1", "name a place inside the DB, e.g. DB1.DBW0 or DB1.DBX0.0"),
        (
            "XW3",
            "cannot read address 'XW3'; accepted forms (case-insensitive, optional leading "
            "%): DB1.DBX0.3, DB1.DBB2",
        ),
        ("DB1.DBQ4", "cannot read address 'DB1.DBQ4'; accepted forms"),
    ],
)
def test_every_error_says_what_and_how_to_fix(text: str, message: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_address(text)
    assert message in str(info.value)


AREAS = {Area.M: ("M",), Area.I: ("I", "E"), Area.Q: ("Q", "A")}


@given(
    area=st.sampled_from([Area.DB, Area.M, Area.I, Area.Q]),
    db=st.integers(1, 65535),
    letter=st.sampled_from("XBWD"),
    byte=st.integers(0, 65535),
    bit=st.integers(0, 7),
    data=st.data(),
)
def test_written_forms_parse_to_the_same_place(
    area: Area, db: int, letter: str, byte: int, bit: int, data: st.DataObject
) -> None:
    """Any address, in any accepted spelling, parses to one place; the canonical form
    parses back to it."""
    db = db if area is Area.DB else 0
    tail = f"{byte}.{bit}" if letter == "X" else f"{byte}"
    if area is Area.DB:
        text = f"DB{db}.DB{letter}{tail}"
    else:
        mnemonic = data.draw(st.sampled_from(AREAS[area]))
        shown = data.draw(st.sampled_from(["", "X"])) if letter == "X" else letter
        text = f"{mnemonic}{shown}{tail}"
    text = data.draw(st.sampled_from([text, text.lower(), "%" + text, f" {text} "]))
    at = parse_address(text)
    expected = Address(area, db, byte, bit if letter == "X" else None, letter)
    assert at == expected
    assert parse_address(str(at)) == at


@given(st.text(max_size=20))
def test_any_text_parses_or_raises_address_error(text: str) -> None:
    """Never another exception, and every message quotes the address."""
    try:
        parse_address(text)
    except AddressError as exc:
        assert repr(text) in str(exc) or repr("".join(text.split()).upper()) in str(exc)
