"""Writes through every driver, against each protocol library's own server: the value
lands on the device encoded as the tag is read (type, byte and word order, scale and
offset inverted), reads back equal, and what the device refuses is a DriverError that
carries the device's own words. RTU bus locks hold for writes as for reads."""

from __future__ import annotations

import asyncio
import struct
import tempfile
from pathlib import Path
from typing import Any

import pytest

from drivers.contract import DriverError, ValueRejected, Writer
from drivers.modbus import Table, compile_plan
from drivers.modbus.config import validate_device
from drivers.modbus.driver import Driver as ModbusDriver
from drivers.modbus.simulator import ModbusSimulator
from drivers.opcua.config import OpcuaDevice
from drivers.opcua.driver import Driver as OpcuaDriver
from drivers.opcua.simulator import OpcuaSimulator
from drivers.s7.config import DeviceConfig as S7Device
from drivers.s7.driver import Driver as S7Driver
from drivers.s7.simulator import S7Simulator
from drivers.s7.types import Area

ANY = {"min": -1e6, "max": 1e6}
SMALL = {"min": -999, "max": 999}
BIG = {"min": 0, "max": 2**50}


def upto(hi: float) -> dict[str, float]:
    return {"min": 0, "max": hi}


def modbus(port: int, *tags: dict[str, Any], **kw: Any) -> Any:
    return validate_device(
        {
            "name": "mb",
            "protocol": kw.pop("protocol", "modbus_tcp"),
            "host": "127.0.0.1",
            "port": port,
            "tags": list(tags),
            **kw,
        }
    )


def test_modbus_writes_every_type_and_order_and_reads_back() -> None:
    """Holding registers (FC6 for one register, FC16 for wider values), coils (FC5), a
    bit of a register (FC22: only that bit changes), strings; scale/offset inverted."""

    async def main() -> dict[str, Any]:
        sim = ModbusSimulator()
        await sim.start()
        dev = modbus(
            sim.port,
            {"name": "f32", "address": 0, "type": "float32", "order": "CDAB", "write": ANY},
            {
                "name": "scaled",
                "address": 4,
                "type": "int16",
                "scale": 0.1,
                "offset": -20,
                "write": {"min": -100, "max": 100},
            },
            {
                "name": "u64",
                "address": 8,
                "type": "uint64",
                "order": "HGFEDCBA",
                "write": upto(2**50),
            },
            {"name": "i32", "address": 12, "type": "int32", "order": "BADC", "write": ANY},
            {"name": "f64", "address": 16, "type": "float64", "write": ANY},
            {"name": "coil", "table": "coil", "address": 5, "write": {}},
            {"name": "bit5", "address": 30, "type": "bool", "bit": 5, "write": {}},
            {
                "name": "text",
                "address": 40,
                "type": "string",
                "length": 5,
                "order": "BA",
                "write": {},
            },
        )
        sim.set_registers(1, Table.HOLDING, 30, [0x8001])  # other bits of the register
        drv = ModbusDriver(dev)
        await drv.connect()
        out: dict[str, Any] = {}
        try:
            for tag, value in (
                ("f32", 1.5),
                ("scaled", 12.3),
                ("u64", 2**40 + 7),
                ("i32", -123456),
                ("f64", -2.25),
                ("coil", True),
                ("bit5", True),
                ("text", "ab"),
            ):
                await drv.write(tag, value)
                out[tag] = await drv.read_tag(tag)
            out["f32_regs"] = sim.get_registers(1, Table.HOLDING, 0, 2)
            out["scaled_raw"] = sim.get_registers(1, Table.HOLDING, 4, 1)
            out["bit_reg"] = sim.get_registers(1, Table.HOLDING, 30, 1)[0]
            await drv.write("bit5", False)
            out["bit_reg_cleared"] = sim.get_registers(1, Table.HOLDING, 30, 1)[0]
            out["coils"] = sim.get_bits(1, Table.COIL, 0, 8)
            out["requests"] = drv.stats.requests
        finally:
            await drv.close()
            await sim.stop()
        return out

    out = asyncio.run(main())
    assert out["f32"] == 1.5 and out["u64"] == 2**40 + 7 and out["i32"] == -123456
    assert out["f64"] == -2.25 and out["coil"] is True and out["bit5"] is True
    assert out["text"] == "ab"
    assert abs(out["scaled"] - 12.3) < 1e-9
    # CDAB: low word first; raw of 12.3 = (12.3 + 20) / 0.1 = 323
    hi, lo = struct.unpack(">HH", struct.pack(">f", 1.5))
    assert out["f32_regs"] == [lo, hi]
    assert out["scaled_raw"] == [323]
    assert out["bit_reg"] == 0x8021 and out["bit_reg_cleared"] == 0x8001
    assert out["coils"] == [False] * 5 + [True, False, False]
    assert out["requests"] == 17  # 8 writes + 8 read-backs + 1 clear: one request each


def test_modbus_multiple_functions_and_device_refusals() -> None:
    """write_functions: multiple uses FC15/16 even for one coil or register; an
    exception answer becomes a DriverError naming it; values that cannot be encoded are
    refused before anything is sent."""

    async def main() -> dict[str, Any]:
        sim = ModbusSimulator(holes={Table.HOLDING: [(100, 101)]})
        await sim.start()
        dev = modbus(
            sim.port,
            {"name": "r", "address": 3, "type": "uint16", "write": {"min": 0, "max": 100}},
            {"name": "c", "table": "coil", "address": 2, "write": {}},
            {"name": "hole", "address": 100, "type": "uint16", "write": {"min": 0, "max": 9}},
            {"name": "s", "address": 50, "type": "string", "length": 2, "write": {}},
            write_functions="multiple",
        )
        drv = ModbusDriver(dev)
        await drv.connect()
        out: dict[str, Any] = {}
        try:
            await drv.write("r", 77)
            await drv.write("c", True)
            out["r"] = sim.get_registers(1, Table.HOLDING, 3, 1)
            out["c"] = sim.get_bits(1, Table.COIL, 2, 1)
            with pytest.raises(DriverError) as e:
                await drv.write("hole", 1)
            out["hole"] = str(e.value)
            before = drv.stats.requests
            for bad in ("abc", -1):
                with pytest.raises(ValueRejected):
                    await drv.write("s" if bad == "abc" else "r", bad)
            out["sent_for_refused"] = drv.stats.requests - before
        finally:
            await drv.close()
            await sim.stop()
        return out

    out = asyncio.run(main())
    assert out["r"] == [77] and out["c"] == [True]
    assert "modbus exception 2 (illegal data address)" in out["hole"]
    assert out["sent_for_refused"] == 0


def test_rtu_bus_lock_holds_for_writes() -> None:
    """Two units on one RTU-over-TCP link: one polled without pause while the other is
    written and read back; every request waits for the bus, so no answer is ever taken
    for another's (a mismatch would be a link error or a wrong value)."""

    async def main() -> dict[str, Any]:
        sim = ModbusSimulator(unit_ids=(1, 2), framer="rtu")
        await sim.start()
        polled = modbus(
            sim.port,
            {"name": "x", "address": 0, "type": "uint16"},
            protocol="modbus_rtu_tcp",
            unit_id=1,
        ).model_copy(update={"name": "polled"})
        written = modbus(
            sim.port,
            {"name": "sp", "address": 7, "type": "uint16", "write": {"min": 0, "max": 999}},
            protocol="modbus_rtu_tcp",
            unit_id=2,
        )
        sim.set_registers(1, Table.HOLDING, 0, [4242])
        a, b = ModbusDriver(polled), ModbusDriver(written)
        await a.connect()
        await b.connect()
        assert a.bus == b.bus
        plan = compile_plan(polled)
        bad: list[str] = []
        stop = asyncio.Event()

        async def poll() -> int:
            n = 0
            while not stop.is_set():
                batch = await a.read(plan)
                if batch.error or batch.readings[0][2] != 4242:
                    bad.append(str(batch.error or batch.readings[0]))
                n += 1
            return n

        task = asyncio.create_task(poll())
        backs = []
        for v in range(50):
            await b.write("sp", v)
            backs.append(await b.read_tag("sp"))
        stop.set()
        reads = await task
        await a.close()
        await b.close()
        await sim.stop()
        return {"bad": bad, "backs": backs, "reads": reads, "errors": b.stats.link_errors}

    out = asyncio.run(main())
    assert out["bad"] == [] and out["errors"] == 0
    assert out["backs"] == list(range(50))
    assert out["reads"] > 0


def test_opcua_write_with_the_nodes_type_and_refusals() -> None:
    async def main() -> dict[str, Any]:
        tags = [
            {"name": "sp", "node": "ns=2;s=W.Setpoint", "type": "Double", "write": ANY},
            {"name": "count", "node": "ns=2;s=W.Count", "type": "UInt16", "write": upto(9)},
            {"name": "on", "node": "ns=2;s=W.On", "type": "Boolean", "write": {}},
            {"name": "label", "node": "ns=2;s=W.Label", "type": "String", "write": {}},
            {"name": "f", "node": "ns=2;s=W.F", "type": "Float", "write": ANY},
            {"name": "untyped", "node": "ns=2;s=W.Int", "type": "Int32", "write": ANY},
            {"name": "ro", "node": "ns=2;s=W.ReadOnly", "type": "Double"},
        ]
        base = {"name": "ua", "protocol": "opcua", "endpoint": "opc.tcp://127.0.0.1:4840"}
        # the simulator makes the nodes of tags with a write block writable
        served = OpcuaDevice.model_validate({**base, "mode": "poll", "tags": tags})
        # the gateway's view: "untyped" has no declared type (the driver asks the node)
        ours = [dict(t) for t in tags]
        del ours[5]["type"]
        async with OpcuaSimulator(devices=[served]) as sim:
            dev = OpcuaDevice.model_validate(
                {**base, "endpoint": sim.endpoint, "mode": "poll", "tags": ours}
            )
            drv = OpcuaDriver(dev, pki_dir=Path(tempfile.mkdtemp()))
            assert isinstance(drv, Writer)
            await drv.connect()
            out: dict[str, Any] = {}
            try:
                for tag, value in (
                    ("sp", 42.5),
                    ("count", 7),
                    ("on", True),
                    ("label", "batch-9"),
                    ("f", 0.25),
                    ("untyped", -12),
                ):
                    await drv.write(tag, value)
                    out[tag] = await drv.read_tag(tag)
                with pytest.raises(DriverError) as e:
                    await drv.write("ro", 1.0)
                out["ro"] = str(e.value)
                for tag, value in (("count", 70000), ("on", 1), ("count", 1.5)):
                    with pytest.raises(ValueRejected):
                        await drv.write(tag, value)
            finally:
                await drv.close()
        return out

    out = asyncio.run(main())
    assert out["sp"] == 42.5 and out["count"] == 7 and out["on"] is True
    assert out["label"] == "batch-9" and out["f"] == 0.25 and out["untyped"] == -12
    assert "BadUserAccessDenied" in out["ro"] or "BadNotWritable" in out["ro"]


def test_s7_writes_every_type_bits_alone_and_refusals() -> None:
    """DB, M and Q areas; BOOL as a single bit (the other bits of its byte stay), BYTE
    to LREAL and STRING; scale inverted; a DB the PLC lacks is refused by the PLC."""

    async def main() -> dict[str, Any]:
        with S7Simulator(dbs={1: 300}) as sim:
            dev = S7Device.model_validate(
                {
                    "name": "plc",
                    "protocol": "s7",
                    "host": "127.0.0.1",
                    "port": sim.port,
                    "tags": [
                        {"name": "bit3", "address": "DB1.DBX0.3", "write": {}},
                        {
                            "name": "int",
                            "address": "DB1.DBW2",
                            "type": "INT",
                            "write": {"min": -999, "max": 999},
                        },
                        {
                            "name": "real",
                            "address": "DB1.DBD4",
                            "type": "REAL",
                            "scale": 0.5,
                            "write": ANY,
                        },
                        {"name": "lreal", "address": "DB1.DBB8", "type": "LREAL", "write": ANY},
                        {"name": "text", "address": "DB1.STRING20.10", "write": {}},
                        {
                            "name": "dword",
                            "address": "DB1.DBD40",
                            "type": "DWORD",
                            "write": upto(1e6),
                        },
                        {"name": "byte", "address": "DB1.DBB44", "write": upto(255)},
                        {"name": "dint", "address": "DB1.DBD46", "type": "DINT", "write": ANY},
                        {"name": "word", "address": "DB1.DBW50", "write": upto(65535)},
                        {"name": "m", "address": "M0.1", "write": {}},
                        {
                            "name": "q",
                            "address": "QW4",
                            "type": "INT",
                            "write": {"min": -999, "max": 999},
                        },
                        {
                            "name": "missing",
                            "address": "DB9.DBW0",
                            "type": "INT",
                            "write": {"min": -999, "max": 999},
                        },
                    ],
                }
            )
            sim.set_bytes(Area.DB, 0, bytes([0x81]), db=1)
            drv = S7Driver(dev)
            await drv.connect()
            out: dict[str, Any] = {}
            try:
                for tag, value in (
                    ("bit3", True),
                    ("int", -42),
                    ("real", 123.5),
                    ("lreal", 3.25),
                    ("text", "hello"),
                    ("dword", 99999),
                    ("byte", 200),
                    ("dint", -5),
                    ("word", 65535),
                    ("m", True),
                    ("q", 999),
                ):
                    await drv.write(tag, value)
                    out[tag] = await drv.read_tag(tag)
                out["byte0"] = sim.get_bytes(Area.DB, 0, 1, db=1)[0]
                await drv.write("bit3", False)
                out["byte0_cleared"] = sim.get_bytes(Area.DB, 0, 1, db=1)[0]
                out["real_raw"] = struct.unpack(">f", sim.get_bytes(Area.DB, 4, 4, db=1))[0]
                out["q_raw"] = sim.get_bytes(Area.Q, 4, 2)
                with pytest.raises(DriverError) as e:
                    await drv.write("missing", 1)
                out["missing"] = str(e.value)
                with pytest.raises(ValueRejected):
                    await drv.write("text", "x" * 11)
            finally:
                await drv.close()
        return out

    out = asyncio.run(main())
    for tag, value in (
        ("bit3", True),
        ("int", -42),
        ("real", 123.5),
        ("lreal", 3.25),
        ("text", "hello"),
        ("dword", 99999),
        ("byte", 200),
        ("dint", -5),
        ("word", 65535),
        ("m", True),
        ("q", 999),
    ):
        assert out[tag] == value, tag
    assert out["byte0"] == 0x89 and out["byte0_cleared"] == 0x81  # bits 0 and 7 stay
    assert out["real_raw"] == 247.0  # 123.5 / 0.5
    assert out["q_raw"] == struct.pack(">h", 999)
    assert "PLC refused the write" in out["missing"]


def _expected_registers(value: int, fmt: str, order: str) -> list[int]:
    """The registers a device holds for ``value`` in vendor notation ``order`` (A = most
    significant byte, in the order sent), worked out here with struct alone. A 4-letter
    form on a 64-bit value applies to every register: its letters give the byte order in
    a register (AB or BA) and the word order (AB..: big, CD..: little)."""
    big = struct.pack(">" + fmt, value)
    if len(order) == len(big):  # the full notation: the byte sent at each position
        sent = bytes(big[ord(c) - ord("A")] for c in order)
    else:
        words = [big[i : i + 2] for i in range(0, len(big), 2)]
        if order[0] in "CD":  # word order little: least significant register first
            words.reverse()
        if order[0] in "BD":  # byte order little: the two bytes of each register swapped
            words = [w[::-1] for w in words]
        sent = b"".join(words)
    return list(struct.unpack(f">{len(sent) // 2}H", sent))


def test_modbus_writes_uint32_and_int64_in_every_byte_and_word_order() -> None:
    """uint32 above 2**31 and int64 below zero (every byte distinct, so a swapped pair
    shows), in each 4-letter order and, for int64, each 8-letter one: the registers on the
    device are the ones the notation says, computed independently with struct, and the
    value reads back exactly (no float on the way: 64-bit integers keep every digit)."""
    u32 = 0x89ABCDEF  # 2309737967
    i64 = -0x0123456789ABCDEF  # bytes FE DC BA 98 76 54 32 11
    orders4 = ("ABCD", "CDAB", "BADC", "DCBA")
    orders8 = ("ABCDEFGH", "GHEFCDAB", "BADCFEHG", "HGFEDCBA")
    tags: list[dict[str, Any]] = []
    cases: list[tuple[str, int, str, int, str]] = []  # tag, value, struct code, address, order
    addr = 0
    for order in orders4:
        tags.append({"name": f"u32_{order}", "address": addr, "type": "uint32",
                     "order": order, "write": upto(2**32 - 1)})  # fmt: skip
        cases.append((f"u32_{order}", u32, "I", addr, order))
        addr += 2
    for order in orders4 + orders8:
        tags.append({"name": f"i64_{order}", "address": addr, "type": "int64",
                     "order": order, "write": {"min": -(2**62), "max": 2**62}})  # fmt: skip
        cases.append((f"i64_{order}", i64, "q", addr, order))
        addr += 4

    async def main() -> dict[str, Any]:
        sim = ModbusSimulator()
        await sim.start()
        drv = ModbusDriver(modbus(sim.port, *tags))
        await drv.connect()
        out: dict[str, Any] = {}
        try:
            for name, value, fmt, address, _ in cases:
                await drv.write(name, value)
                out[name] = await drv.read_tag(name)
                size = struct.calcsize(fmt) // 2
                out[name + ".regs"] = sim.get_registers(1, Table.HOLDING, address, size)
        finally:
            await drv.close()
            await sim.stop()
        return out

    out = asyncio.run(main())
    for name, value, fmt, _, order in cases:
        assert out[name + ".regs"] == _expected_registers(value, fmt, order), name
        assert out[name] == value and type(out[name]) is int, (name, out[name])
    # the notations differ on the wire (a test that wrote them all alike would fail here)
    assert len({tuple(out[f"u32_{o}.regs"]) for o in orders4}) == 4
    assert len({tuple(out[f"i64_{o}.regs"]) for o in orders4 + orders8}) == 4
    assert out["i64_CDAB.regs"] == out["i64_GHEFCDAB.regs"]
