"""Polling against a real asyncua server: node-id forms, exact values of every type,
request splitting by the server's limits, and bad nodes among good ones."""

from __future__ import annotations

import asyncio
import socket
import struct
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua

from drivers.contract import ConnectError
from drivers.contract import Driver as DriverProtocol
from drivers.contract import Subscriber as SubscriberProtocol
from drivers.opcua import compile_plan
from drivers.opcua.driver import Driver
from drivers.opcua.simulator import GUID, NAMESPACE, OPAQUE, UNENCODABLE
from tests.drivers.opcua.conftest import SimThread, by_tag, device, read_once


def test_driver_satisfies_the_contract(sim: SimThread, tmp_path: Path) -> None:
    d = Driver(device(sim.endpoint, {"name": "t", "node": "i=2258"}), pki_dir=tmp_path)
    assert isinstance(d, DriverProtocol) and isinstance(d, SubscriberProtocol)
    assert d.name == "plc" and not d.connected


def test_every_node_id_form_reads(sim: SimThread, tmp_path: Path) -> None:
    """ns;i, ns;s, ns;g, ns;b, i= (namespace 0), nsu= and a browse path all find their node."""
    values = {"ns=2;i=1001": 11, f"ns=2;g={GUID}": 22, f"ns=2;b={OPAQUE}": 33}
    for node, value in values.items():
        sim.run(sim.sim.set_value(node, value))
    sim.run(sim.sim.set_value("ns=2;s=Plant.Boiler.Temperature", 71.25))
    sim.run(sim.sim.set_value("ns=2;s=Plant.Boiler.Pressure", 1.5))
    dev = device(
        sim.endpoint,
        {"name": "numeric", "node": "ns=2;i=1001"},
        {"name": "guid", "node": f"ns=2;g={GUID.upper()}"},
        {"name": "opaque", "node": f"ns=2;b={OPAQUE}"},
        {"name": "string", "node": "ns=2;s=Plant.Boiler.Temperature"},
        {"name": "ns0", "node": "i=2258", "type": "DateTime"},  # Server_ServerStatus_CurrentTime
        {"name": "uri", "node": f"nsu={NAMESPACE};s=Plant.Boiler.Pressure"},
        {"name": "path", "node": "/Objects/2:Plant/2:Boiler/2:Temperature"},
    )
    batch = asyncio.run(read_once(dev, tmp_path))
    assert batch.ok, batch.error
    got = {k: r[2] for k, r in by_tag(batch).items()}
    assert (got["numeric"], got["guid"], got["opaque"]) == (11, 22, 33)
    assert got["string"] == got["path"] == 71.25
    assert got["uri"] == 1.5
    assert abs(got["ns0"] / 1e9 - datetime.now(UTC).timestamp()) < 60


FLOAT_01 = struct.unpack("<f", struct.pack("<f", 0.1))[0]
T = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
# type -> (value written on the server, value the reading must carry)
VECTORS: dict[str, tuple[Any, Any]] = {
    "Boolean": (True, True),
    "SByte": (-128, -128),
    "Byte": (255, 255),
    "Int16": (-32768, -32768),
    "UInt16": (65535, 65535),
    "Int32": (-(2**31), -(2**31)),
    "UInt32": (2**32 - 1, 2**32 - 1),
    "Int64": (-(2**63), -(2**63)),
    "UInt64": (2**64 - 1, 2**64 - 1),
    "Float": (0.1, FLOAT_01),
    "Double": (-1.5e300, -1.5e300),
    "String": ("Kessel 1 – Störung", "Kessel 1 – Störung"),
    "DateTime": (T, 1_704_164_645_678_901_000),
    "Guid": (uuid.UUID(GUID), GUID),
    "ByteString": (b"\x00\x7f\xff", "007fff"),
    "NodeId": (ua.NodeId("Pump1", 2), "ns=2;s=Pump1"),
    "ExpandedNodeId": (ua.ExpandedNodeId(42, 3), "ns=3;i=42"),
    "StatusCode": (ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown), 0x80340000),
    "QualifiedName": (ua.QualifiedName("Name", 3), "3:Name"),
    "LocalizedText": (ua.LocalizedText("Druck", "de"), "Druck"),
}


def test_every_type_is_mapped_exactly(sim: SimThread, tmp_path: Path) -> None:
    for name, (written, _) in VECTORS.items():
        sim.run(sim.sim.set_value(f"ns=2;s=Types.{name}", written))
    tags = [{"name": n, "node": f"ns=2;s=Types.{n}", "type": n} for n in VECTORS]
    batch = asyncio.run(read_once(device(sim.endpoint, *tags), tmp_path))
    assert batch.ok, batch.error
    got = by_tag(batch)
    for name, (_, expected) in VECTORS.items():
        value = got[name][2]
        assert value == expected and type(value) is type(expected), (name, value)
        assert got[name][3] == 0


def test_reads_are_split_by_max_nodes_per_read(sim: SimThread, tmp_path: Path) -> None:
    """23 tags and MaxNodesPerRead = 5: five Read requests of 5, 5, 5, 5 and 3 nodes."""
    tags = [{"name": f"b{k}", "node": f"ns=2;s=Bulk.{k:04d}"} for k in range(23)]
    dev = device(sim.endpoint, *tags)

    async def run() -> list[int]:
        driver = Driver(dev, pki_dir=tmp_path)
        await driver.connect()
        assert driver.client.limits.max_nodes_per_read == 5
        sim.call(sim.sim.read_sizes.clear)
        batch = await driver.read(compile_plan(dev))
        await driver.close()
        assert batch.ok and len(batch.readings) == 23
        return list(sim.sim.read_sizes)

    assert asyncio.run(run()) == [5, 5, 5, 5, 3]


def test_a_server_hiding_its_limit_is_split_after_bad_too_many_operations(
    sim: SimThread, tmp_path: Path
) -> None:
    tags = [{"name": f"b{k}", "node": f"ns=2;s=Bulk.{k:04d}"} for k in range(23)]
    dev = device(sim.endpoint, *tags)
    sim.run(sim.sim.advertise_limits(0, 4))  # "no limit", but 5 is enforced
    try:

        async def run() -> tuple[Any, list[int]]:
            driver = Driver(dev, pki_dir=tmp_path)
            await driver.connect()
            sim.call(sim.sim.read_sizes.clear)
            batch = await driver.read(compile_plan(dev))
            second = await driver.read(compile_plan(dev))
            await driver.close()
            assert batch.ok and second.ok and len(second.readings) == 23
            return batch, list(sim.sim.read_sizes)

        _, sizes = asyncio.run(run())
    finally:
        sim.run(sim.sim.advertise_limits(5, 4))
    # 23 refused, halves until accepted; the second read uses the learnt size at once
    assert sizes[:2] == [23, 11] and max(sizes[2:]) <= 5 and sum(sizes[2:]) == 46


def test_a_bad_node_does_not_break_the_others(sim: SimThread, tmp_path: Path) -> None:
    """Unknown node, unmatched browse path, unknown namespace URI: those tags read bad with
    the reason at every read; the good ones, before and after them, read good."""
    sim.run(sim.sim.set_value("ns=2;s=Bulk.0001", 1.25))
    dev = device(
        sim.endpoint,
        {"name": "good1", "node": "ns=2;s=Bulk.0001"},
        {"name": "unknown", "node": "ns=2;s=NoSuchNode"},
        {"name": "path", "node": "/Objects/2:Plant/2:Nope/2:Temperature"},
        {"name": "uri", "node": "nsu=urn:not-here;s=X"},
        {"name": "ns9", "node": "ns=9;i=1"},
        {"name": "good2", "node": "ns=2;s=Plant.Boiler.Temperature"},
    )

    async def run() -> list[Any]:
        driver = Driver(dev, pki_dir=tmp_path)
        await driver.connect()
        plan = compile_plan(dev)
        batches = [await driver.read(plan), await driver.read(plan)]
        assert driver.connected
        await driver.close()
        return batches

    for batch in asyncio.run(run()):
        got = by_tag(batch)
        assert got["good1"][2:4] == (1.25, 0) and got["good2"][3] == 0
        # source and server timestamps are both kept (the simulator sets both)
        assert len(got["good1"]) == 6 and got["good1"][4] is None
        assert abs(got["good1"][5] - got["good1"][1]) < 10**9
        assert got["unknown"][2:] == (None, 2, "BadNodeIdUnknown (node ns=2;s=NoSuchNode)")
        assert got["ns9"][3] == 2
        assert got["path"][2:4] == (None, 3)
        assert "no node '2:Nope' under /Objects/2:Plant" in got["path"][4]
        assert (
            got["uri"][3] == 3 and "namespace 'urn:not-here' is not on the server" in got["uri"][4]
        )
        assert NAMESPACE in got["uri"][4]  # lists what the server has
        assert batch.error and batch.error.startswith("4 of 6 tag(s) bad")


def test_status_codes_of_values_become_qualities(sim: SimThread, tmp_path: Path) -> None:
    sim.run(sim.sim.set_value("ns=2;s=Bulk.0010", 3.5, ua.StatusCodes.UncertainLastUsableValue))
    sim.run(sim.sim.set_value("ns=2;s=Bulk.0011", 0.0, ua.StatusCodes.BadSensorFailure))
    try:
        dev = device(
            sim.endpoint,
            {"name": "u", "node": "ns=2;s=Bulk.0010"},
            {"name": "b", "node": "ns=2;s=Bulk.0011"},
        )
        got = by_tag(asyncio.run(read_once(dev, tmp_path)))
    finally:
        sim.run(sim.sim.set_value("ns=2;s=Bulk.0010", 0.0))
        sim.run(sim.sim.set_value("ns=2;s=Bulk.0011", 0.0))
    assert got["u"][2:5] == (3.5, 4, "UncertainLastUsableValue")
    assert got["b"][2:5] == (None, 2, "BadSensorFailure (node ns=2;s=Bulk.0011)")


def test_connect_errors_name_the_endpoint_and_the_reason(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    dev = device(f"opc.tcp://127.0.0.1:{port}", {"name": "t", "node": "i=2258"}, timeout_ms=500)
    driver = Driver(dev, pki_dir=tmp_path)
    with pytest.raises(ConnectError) as info:
        asyncio.run(driver.connect())
    assert f"cannot connect to opc.tcp://127.0.0.1:{port} (device 'plc')" in str(info.value)
    assert "Connection refused" in str(info.value)
    batch = asyncio.run(driver.read(compile_plan(dev)))
    assert batch.readings[0][3] == 1 and "not connected" in batch.readings[0][4]


def test_a_node_that_breaks_the_whole_response_is_isolated(sim: SimThread, tmp_path: Path) -> None:
    """The server answers BadInternalError to any Read including one odd node: the
    request is halved until that node alone reads bad; the others read good."""
    tags = [{"name": f"b{k}", "node": f"ns=2;s=Bulk.{k:04d}"} for k in range(4)]
    tags.insert(2, {"name": "odd", "node": UNENCODABLE})
    batch = asyncio.run(read_once(device(sim.endpoint, *tags), tmp_path))
    got = by_tag(batch)
    assert [got[f"b{k}"][3] for k in range(4)] == [0, 0, 0, 0]
    assert got["odd"][2:] == (None, 2, f"the server answered BadInternalError (node {UNENCODABLE})")
    assert batch.error and batch.error.startswith("1 of 5 tag(s) bad")
