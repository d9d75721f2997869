"""Every type and order combination, with random values, read from a real pymodbus
server: Modbus TCP (hypothesis), and once each over RTU framing on TCP and on a
pseudo-terminal serial line.

The registers are written by an encoder written here from the definitions (big-endian
bytes, then the words reversed for word order little, then each word's bytes swapped
for byte order little), not by the package's own ``encode_value``.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.contract import Batch, Quality
from drivers.modbus import Table, compile_plan
from drivers.modbus.config import Device
from drivers.modbus.driver import Driver
from drivers.modbus.simulator import ModbusSimulator

from .conftest import ThreadedSimulator
from .test_rtu import needs_serial

CODES = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f"}
CODES |= {"int64": "q", "uint64": "Q", "float64": "d"}
ORDERS_16 = {"AB": ("big", None), "BA": ("little", None)}
ORDERS_32 = {
    "ABCD": ("big", "big"),
    "CDAB": ("big", "little"),
    "BADC": ("little", "big"),
    "DCBA": ("little", "little"),
}
ORDERS_64 = ORDERS_32 | {
    "ABCDEFGH": ("big", "big"),
    "GHEFCDAB": ("big", "little"),
    "BADCFEHG": ("little", "big"),
    "HGFEDCBA": ("little", "little"),
}
COMBOS = [(t, o) for t in ("int16", "uint16") for o in ORDERS_16]
COMBOS += [(t, o) for t in ("int32", "uint32", "float32") for o in ORDERS_32]
COMBOS += [(t, o) for t in ("int64", "uint64", "float64") for o in ORDERS_64]
COMBOS += [("string", o) for o in ORDERS_16]


def registers_of(dtype: str, value: Any, order: str, length: int = 0) -> list[int]:
    """The registers a device holds for ``value``, from the definitions."""
    byte, word = {**ORDERS_16, **ORDERS_64}[order]
    if dtype == "string":
        data = value.encode("ascii").ljust(2 * ((length + 1) // 2), b"\0")
    else:
        data = struct.pack(">" + CODES[dtype], value)
    words = [data[i : i + 2] for i in range(0, len(data), 2)]
    if word == "little":
        words.reverse()
    if byte == "little":
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def values_for(dtype: str, draw: Any) -> Any:
    if dtype == "float32":
        return draw(st.floats(width=32, allow_nan=False))
    if dtype == "float64":
        return draw(st.floats(allow_nan=False))
    if dtype == "string":
        return draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=9))
    bits = int(dtype.removeprefix("u").removeprefix("int"))
    lo, hi = (
        (0, 2**bits - 1) if dtype.startswith("u") else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    )
    return draw(st.integers(lo, hi))


Layout = tuple[list[dict[str, Any]], list[tuple[Table, int, list[int]]], dict[str, Any]]


@st.composite
def device_maps(draw: st.DrawFn) -> Layout:
    """One tag per (type, order) combination in each register table, plus bits of a
    register and coils, at random gaps; the order given as ``order`` or as
    byte_order/word_order; random values."""
    tags: list[dict[str, Any]] = []
    writes: list[tuple[Table, int, list[int]]] = []
    expected: dict[str, Any] = {}
    for table in (Table.HOLDING, Table.INPUT):
        address = draw(st.integers(0, 5))
        for i, (dtype, order) in enumerate(COMBOS):
            name = f"{table.value[0]}{i}_{dtype}_{order}"
            value = values_for(dtype, draw)
            tag: dict[str, Any] = {"name": name, "table": table.value, "address": address}
            tag["type"] = dtype
            length = 0
            if dtype == "string":
                length = len(value) + draw(st.integers(1, 3))
                tag["length"] = length
            byte, word = {**ORDERS_16, **ORDERS_64}[order]
            if draw(st.booleans()):
                tag["order"] = order
            else:
                tag["byte_order"] = byte
                if word is not None:
                    tag["word_order"] = word
            regs = registers_of(dtype, value, order, length)
            tags.append(tag)
            writes.append((table, address, regs))
            expected[name] = value.rstrip(" ") if dtype == "string" else value
            address += len(regs) + draw(st.integers(0, 3))
        register = draw(st.integers(0, 0xFFFF))
        writes.append((table, address, [register]))
        for bit in range(16):
            name = f"{table.value[0]}_bit{bit}"
            tags.append(
                {"name": name, "table": table.value, "address": address, "type": "bool", "bit": bit}
            )
            expected[name] = bool(register >> bit & 1)
    return tags, writes, expected


def _device(fields: dict[str, Any], tags: list[dict[str, Any]]) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(Device).validate_python({"name": "rt", "tags": tags, **fields})


async def _read(fields: dict[str, Any], tags: list[dict[str, Any]]) -> Batch:
    dev = _device(fields, tags)
    driver = Driver(dev)
    await driver.connect()
    try:
        return await driver.read(compile_plan(dev))
    finally:
        await driver.close()


def _check(batch: Batch, expected: dict[str, Any]) -> None:
    assert batch.ok, batch.error
    got = {r[0].split("/", 1)[1]: r for r in batch.readings}
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name][3] == Quality.GOOD, name
        v = got[name][2]
        assert type(v) is type(value), (name, v, value)
        if isinstance(value, float) and math.isinf(value):
            assert v == value, name
        else:
            assert v == value or (v == 0 and value == 0), (name, v, value)


@pytest.fixture(scope="module")
def server() -> Iterator[ModbusSimulator]:
    """A pymodbus TCP server on its own thread and event loop, shared by the examples."""
    with ThreadedSimulator(unit_ids=(1,), size=2000) as sim:
        yield sim


@settings(max_examples=25, deadline=None)
@given(device_maps())
def test_every_type_and_order_round_trips_over_modbus_tcp(
    server: ModbusSimulator, layout: Layout
) -> None:
    tags, writes, expected = layout
    for table, address, regs in writes:
        server.set_registers(1, table, address, regs)
    fields = {"protocol": "modbus_tcp", "host": "127.0.0.1", "port": server.port}
    _check(asyncio.run(_read(fields, tags)), expected)


@pytest.mark.parametrize("framer", ["rtu-tcp", pytest.param("serial", marks=needs_serial)])
@settings(max_examples=3, deadline=None)
@given(layout=device_maps())
def test_every_type_and_order_round_trips_over_rtu_framing(framer: str, layout: Layout) -> None:
    """Layouts through RTU frames: over TCP and over a serial line (pty)."""
    from drivers.modbus.ptybus import PtyBridge

    tags, writes, expected = layout

    async def main() -> Batch:
        if framer == "rtu-tcp":
            async with ModbusSimulator(framer="rtu", unit_ids=(5,), size=2000) as sim:
                for table, address, regs in writes:
                    sim.set_registers(5, table, address, regs)
                fields = {"protocol": "modbus_rtu_tcp", "host": "127.0.0.1", "port": sim.port}
                return await _read({**fields, "unit_id": 5}, tags)
        async with PtyBridge() as bus:
            sim = ModbusSimulator(serial_port=bus.server_path, unit_ids=(5,), size=2000)
            async with sim:
                for table, address, regs in writes:
                    sim.set_registers(5, table, address, regs)
                fields = {"protocol": "modbus_rtu", "port": bus.client_path, "unit_id": 5}
                fields["parity"] = "N"  # a pty has no parity (ptybus.py)
                return await _read({**fields, "baudrate": 115200}, tags)

    _check(asyncio.run(main()), expected)
