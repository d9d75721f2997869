"""How a reading becomes a row, the same in both stores (docs: README "Platform").

A reading's value keeps its type (``vtype``) and its exact value, and also gets one
chartable number:

=====  ==================  ===============================================================
vtype  the gateway sent    columns
=====  ==================  ===============================================================
``f``  a float             ``value`` (NaN, ±Inf and −0.0 included; SQLite cannot hold NaN:
                           there a NaN is ``value`` NULL with vtype ``f``)
``i``  an integer          ``value_int`` exact (int64 and uint64 up to 2^64−1), ``value``
                           the nearest double (exact up to 2^53)
``b``  a bool              ``value`` 0 or 1
``s``  text                ``value_text`` (PostgreSQL: text holding U+0000 is its UTF-8 in
                           ``value_bytes``, ``value_text`` NULL; a reason's NUL is U+FFFD)
``x``  bytes               ``value_bytes``
``n``  no value            (quality says why)
=====  ==================  ===============================================================

Timestamps are nanoseconds in a uint64 on the wire. A store keeps them as microseconds
(``timestamptz`` in PostgreSQL, an integer in SQLite) plus ``*_nanos`` (0..999), so the
exact nanosecond is always there and every uint64 fits (2^64 ns is the year 2554).
"""

from __future__ import annotations

from typing import Any

VTYPES = {float: "f", int: "i", bool: "b", str: "s", bytes: "x", type(None): "n"}


def device_of(tag: str) -> str | None:
    """Tags are ``<device>/<tag>`` as named in the gateway's config."""
    device, sep, _ = tag.partition("/")
    return device if sep else None


def split_ns(ns: int | None) -> tuple[int | None, int | None]:
    """uint64 ns -> (µs, the remaining ns 0..999)."""
    if ns is None:
        return None, None
    return divmod(ns, 1000)  # type: ignore[return-value]


def join_ns(us: int | None, nanos: int | None) -> int | None:
    return None if us is None else us * 1000 + (nanos or 0)


def value_of(
    vtype: str, value: Any, value_int: Any, value_text: str | None, value_bytes: Any
) -> Any:
    """The reading's value as the gateway sent it, from its stored columns."""
    if vtype == "f":
        return float("nan") if value is None else float(value)
    if vtype == "i":
        return int(value_int)
    if vtype == "b":
        return bool(value)
    if vtype == "s":  # text holding NUL is kept as its UTF-8 in value_bytes (PostgreSQL)
        return value_text if value_bytes is None else bytes(value_bytes).decode()
    if vtype == "x":
        return bytes(value_bytes)
    return None


def json_cell(v: Any) -> str | None:
    """A command result's value as exact JSON text (bytes as hex, NaN and ±Inf as text)."""
    import json
    import math

    if v is None:
        return None
    if type(v) is bytes:
        return json.dumps({"hex": v.hex()})
    if type(v) is float and not math.isfinite(v):
        return json.dumps(str(v))
    return json.dumps(v)


def command_result_row(gw: str, seq: int, r: dict[str, Any]) -> tuple[Any, ...]:
    """One ``command_results`` row (both stores; times in µs + ns like the readings)."""
    received_us, received_nanos = split_ns(r["received"])
    done_us, done_nanos = split_ns(r["done"])
    return (
        gw, seq, r["id"], r["op"], r["outcome"], r["reason"], r["detail"], r["tag"],
        json_cell(r["value"]), json_cell(r["before"]), json_cell(r["after"]), r["version"],
        r["digest"], r["kid"], received_us, received_nanos, done_us, done_nanos,
        bool(r["again"]),
    )  # fmt: skip
