"""A device value larger than ``max_value_bytes`` (a 2 MiB string from a real asyncua
server) becomes a BAD_CONFIG reading that says so; the tags beside it read good."""

from __future__ import annotations

import asyncio
from pathlib import Path

from asyncua import ua

from drivers.opcua.decode import Decoder

from .conftest import SimThread, by_tag, device, read_once


def test_an_oversized_string_reads_bad_with_the_reason(sim: SimThread, tmp_path: Path) -> None:
    big = "x" * (2 * 2**20)
    sim.run(sim.sim.set_value("ns=2;s=Types.String", big))
    sim.run(sim.sim.set_value("ns=2;s=Bulk.0001", 4.5))
    dev = device(
        sim.endpoint,
        {"name": "text", "node": "ns=2;s=Types.String"},
        {"name": "good", "node": "ns=2;s=Bulk.0001"},
    )
    got = by_tag(asyncio.run(read_once(dev, tmp_path)))
    assert got["text"][2:4] == (None, 3)
    assert got["text"][4].startswith("value too large: 2097152 bytes of String")
    assert "max_value_bytes (65536)" in got["text"][4]
    assert got["good"][2:4] == (4.5, 0)

    # the bound is the device's to raise
    roomy = device(
        sim.endpoint, {"name": "text", "node": "ns=2;s=Types.String"}, max_value_bytes=4 * 2**20
    )
    got = by_tag(asyncio.run(read_once(roomy, tmp_path)))
    assert got["text"][2:4] == (big, 0)
    sim.run(sim.sim.set_value("ns=2;s=Types.String", "short"))


def test_the_bound_counts_utf8_bytes_and_raw_byte_strings() -> None:
    dec = Decoder(["d/s", "d/b", "d/ok"], ["n1", "n2", "n3"], [None] * 3, max_value_bytes=100)
    values = [
        ua.DataValue(ua.Variant("é" * 60, ua.VariantType.String)),  # 60 chars, 120 bytes
        ua.DataValue(ua.Variant(b"\x01" * 101, ua.VariantType.ByteString)),
        ua.DataValue(ua.Variant("é" * 50, ua.VariantType.String)),  # exactly 100 bytes
    ]
    out: list[tuple[object, ...]] = []
    assert dec.decode(values, range(3), out, 1) == 2
    assert out[0][3] == 3 and "120 bytes of String" in str(out[0][4])
    assert out[1][3] == 3 and "101 bytes of ByteString" in str(out[1][4])
    assert out[2][2:4] == ("é" * 50, 0)


def test_every_value_that_becomes_text_keeps_the_bound() -> None:
    """LocalizedText (its text), QualifiedName and NodeId names, and an array element
    read by index: over max_value_bytes is BAD_CONFIG with the size, like a String."""
    names = ["d/lt", "d/qn", "d/node", "d/elem", "d/ok"]
    dec = Decoder(names, names, [None] * 5, [None, None, None, 1, None], max_value_bytes=100)
    values = [
        ua.DataValue(ua.Variant(ua.LocalizedText("t" * 101, "en"), ua.VariantType.LocalizedText)),
        ua.DataValue(ua.Variant(ua.QualifiedName("q" * 200, 2), ua.VariantType.QualifiedName)),
        ua.DataValue(ua.Variant(ua.NodeId("n" * 200, 2), ua.VariantType.NodeId)),
        ua.DataValue(ua.Variant(["a", "b" * 101, "c"], ua.VariantType.String)),
        ua.DataValue(ua.Variant(ua.LocalizedText("t" * 100, "en"), ua.VariantType.LocalizedText)),
    ]
    out: list[tuple[object, ...]] = []
    assert dec.decode(values, range(5), out, 1) == 4
    assert out[0][3] == 3 and "101 bytes of LocalizedText" in str(out[0][4])
    assert out[1][3] == 3 and "bytes of QualifiedName" in str(out[1][4])
    assert out[2][3] == 3 and "bytes of NodeId" in str(out[2][4])
    assert out[3][3] == 3 and "101 bytes of String" in str(out[3][4])
    assert out[4][2:4] == ("t" * 100, 0)
