"""The notations engineers copy from manuals: register numbers (40001) and byte orders
(CDAB). Pure functions; ``ValueError`` messages quote the value and list what is accepted.

Register numbers
    ``register: 40001`` is holding register address 0. The leading digit is the table
    (0 coil, 1 discrete input, 3 input register, 4 holding register) and the rest is the
    1-based number: 5 digits (``40001``..``49999``) or 6 digits (``400001``..``465536``).
    Coils start with a 0 that YAML drops (and ``00017`` unquoted is *octal* 15 in YAML),
    so a register number below 10001 must be quoted: ``register: "00017"``. The 0-based
    ``address`` stays the other way to give a position; a tag has one or the other.

Byte orders
    The bytes of a value, most significant = A, in the order the device sends them:
    ``AB``/``BA`` for 16-bit values and strings, ``ABCD``/``CDAB``/``BADC``/``DCBA`` for
    32-bit and 64-bit values, ``ABCDEFGH``/``GHEFCDAB``/``BADCFEHG``/``HGFEDCBA`` for
    64-bit values. Each maps onto a byte order (within each register) and a word order
    (of the registers).
"""

from __future__ import annotations

from .types import (
    ORDER_NOTATION,
    ORDER_NOTATION_16,
    ORDER_NOTATION_64,
    TABLES,
    Order,
    Table,
)

_BY_PREFIX = {spec.prefix: table for table, spec in TABLES.items()}

REGISTER_FORMS = (
    "5 digits 00001-09999 (coil, quoted), 10001-19999 (discrete), 30001-39999 (input), "
    "40001-49999 (holding), or 6 digits 000001-065536, 100001-165536, 300001-365536, "
    "400001-465536"
)

ORDER_FORMS = (
    "AB, BA (16-bit values, strings); ABCD, CDAB, BADC, DCBA (32- and 64-bit); "
    "ABCDEFGH, GHEFCDAB, BADCFEHG, HGFEDCBA (64-bit)"
)


def parse_register(value: object) -> tuple[Table, int]:
    """``40001`` -> (holding, 0); ``"00017"`` -> (coil, 16); ``300010`` -> (input, 9)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"register {value!r} is not a register number; accepted: {REGISTER_FORMS}")
    if isinstance(value, int):
        if 0 <= value < 10001:
            raise ValueError(
                f"register {value} would be a coil (0xxxx), but YAML drops leading zeros and "
                f'reads 00017 as octal: quote coil numbers (register: "{value:05d}") or give '
                "table: coil with a 0-based address"
            )
        text = str(value)
    else:
        text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) not in (5, 6):
        raise ValueError(f"register {value!r} is not a register number; accepted: {REGISTER_FORMS}")
    table = _BY_PREFIX.get(int(text[0]))
    number = int(text[1:])
    top = 9999 if len(text) == 5 else 65536
    if table is None or not 1 <= number <= top:
        raise ValueError(f"register {value!r} is not a register number; accepted: {REGISTER_FORMS}")
    return table, number - 1


def register_number(table: Table, address: int) -> str:
    """The register number of a 0-based address: 5 digits when they suffice, else 6."""
    prefix = TABLES[table].prefix
    if address < 9999:
        return f"{prefix}{address + 1:04d}"
    return f"{prefix}{address + 1:05d}"


def parse_order(value: object) -> tuple[int, Order, Order | None]:
    """``"CDAB"`` -> (4, big, little); ``"BA"`` -> (2, little, None). The first item is
    the number of letters, which says which widths the notation is for."""
    text = value.strip().upper() if isinstance(value, str) else None
    if text in ORDER_NOTATION_16:
        return 2, ORDER_NOTATION_16[text], None
    if text in ORDER_NOTATION:
        return 4, *ORDER_NOTATION[text]
    if text in ORDER_NOTATION_64:
        return 8, *ORDER_NOTATION_64[text]
    hint = ""
    if isinstance(value, str) and value.lower() in ("big", "little"):
        hint = f" ({value!r} is a byte_order/word_order value: write byte_order: {value})"
    raise ValueError(f"unknown order {value!r}; accepted: {ORDER_FORMS}{hint}")


def order_for_width(value: object, registers: int, type_name: str) -> tuple[Order, Order | None]:
    """The (byte, word) order a notation gives a tag of ``registers`` registers; the word
    order is None for one register. ValueError when the notation is for another width."""
    letters, byte, word = parse_order(value)
    text = str(value).strip().upper()
    if registers <= 1 and letters != 2:
        two = "AB" if byte is Order.BIG else "BA"
        raise ValueError(
            f"order {text!r} is for 32/64-bit values, but {type_name} has one byte order per "
            f"register; accepted: AB or BA (here probably {two})"
        )
    if registers == 2 and letters != 4:
        raise ValueError(
            f"order {text!r} does not fit {type_name} (2 registers); accepted: ABCD, CDAB, "
            "BADC or DCBA"
        )
    if registers == 4 and letters == 2:
        raise ValueError(
            f"order {text!r} does not fit {type_name} (4 registers); accepted: ABCD, CDAB, "
            "BADC, DCBA or ABCDEFGH, GHEFCDAB, BADCFEHG, HGFEDCBA"
        )
    return byte, (word if registers > 1 else None)
