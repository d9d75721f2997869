"""The driver against a real snap7 server (the simulator) on loopback; IPv6 through a
loopback proxy, since snap7's server listens on IPv4 only."""

from __future__ import annotations

import asyncio
import math
import re
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.contract import Batch, ConnectError, Quality
from drivers.contract import Driver as DriverProtocol
from drivers.s7 import compile_plan
from drivers.s7.driver import Driver
from drivers.s7.simulator import S7Simulator
from tests.drivers.s7.conftest import by_tag, closed_port, device, ipv6_loopback
from tests.drivers.s7.vectors import SCALED, VECTORS, tag_at
from tests.linkproxy import LinkProxy

GOOD, BAD_COMM, BAD_DEVICE = int(Quality.GOOD), int(Quality.BAD_COMM), int(Quality.BAD_DEVICE)
needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="no ::1 on this machine")


async def read_once(dev: Any) -> Batch:
    driver = Driver(dev)
    await driver.connect()
    try:
        return await driver.read(compile_plan(dev))
    finally:
        await driver.close()


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b and type(a) is type(b)


def test_satisfies_the_driver_contract() -> None:
    driver = Driver(device(102, {"name": "a", "address": "MW0"}))
    assert isinstance(driver, DriverProtocol) and driver.name == "plc" and not driver.connected


@pytest.mark.parametrize("area", ["DB3", "M", "E", "A", "I", "Q"])
def test_every_type_reads_exactly_from_hand_written_bytes(sim: S7Simulator, area: str) -> None:
    """The vectors' bytes written into the server decode to the exact values and Python
    types, in a DB and in the M, I (E) and Q (A) areas."""
    tags, expected, byte = [], {}, 0
    target = {"DB3": ("DB", 3), "M": ("M", 0), "E": ("I", 0), "I": ("I", 0)}
    target |= {"A": ("Q", 0), "Q": ("Q", 0)}
    sim_area, db = target[area]
    for i, (dtype, extra, data, value) in enumerate(VECTORS + SCALED):
        name = f"{dtype.lower()}_{i}"
        tags.append(tag_at(name, dtype, extra, area, byte))
        sim.set_bytes(sim_area, byte, data, db=db)
        expected[name] = value
        byte += len(data) + 1  # a gap byte between tags: merged, not read as values
    batch = asyncio.run(read_once(device(sim.port, *tags)))
    assert batch.ok, batch.error
    got = by_tag(batch)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name][3] == GOOD and same(got[name][2], value), (name, got[name], value)


def test_out_of_range_address_is_bad_device_for_that_tag_only(sim: S7Simulator) -> None:
    """DB2 is 64 bytes: a tag at its end is refused by the PLC (return code 0x05), and so is
    one in a DB that does not exist (0x0a); the tags merged with them in one item are
    re-read one by one, so only the bad tags are BAD_DEVICE; the link stays up."""
    sim.set_bytes("DB", 60, b"\x00\x07\x00\x08", db=2)
    sim.set_bytes("M", 0, b"\x00\x09")
    dev = device(
        sim.port,
        {"name": "ok1", "address": "DB2.DBW60"},
        {"name": "ok2", "address": "DB2.DBW62"},
        {"name": "past_end", "address": "DB2.DBD62"},  # 62..65, DB2 ends at 63
        {"name": "no_db", "address": "DB9.DBW0"},
        {"name": "other", "address": "MW0"},
    )
    plan = compile_plan(dev)
    assert len(plan.requests) == 1 and len(plan.ranges[0].tags) == 3  # merged
    driver = Driver(dev)

    async def main() -> tuple[Batch, bool]:
        await driver.connect()
        batch = await driver.read(plan)
        return batch, driver.connected

    batch, connected = asyncio.run(main())
    got = by_tag(batch)
    assert connected
    assert {k: r[2:4] for k, r in got.items() if r[3] == GOOD} == {
        "ok1": (7, GOOD),
        "ok2": (8, GOOD),
        "other": (9, GOOD),
    }
    assert got["past_end"][2:] == (
        None,
        BAD_DEVICE,
        "DB2 bytes 62..65: PLC refused the read: address out of range (past the end of the "
        "DB or area?), return code 0x05",
    )
    assert got["no_db"][2:] == (
        None,
        BAD_DEVICE,
        "DB9 bytes 0..1: PLC refused the read: object does not exist (is the DB in the "
        "PLC?), return code 0x0a",
    )
    assert batch.error in (got["past_end"][4], got["no_db"][4])


def test_server_stop_gives_bad_comm_then_reconnect_reads_again(sim: S7Simulator) -> None:
    sim.set_bytes("DB", 0, b"\x00\x0b", db=1)
    dev = device(sim.port, {"name": "a", "address": "DB1.DBW0"}, {"name": "m", "address": "M0.0"})
    plan = compile_plan(dev)

    async def main() -> tuple[Batch, Batch, bool, Batch, Batch, bool]:
        driver = Driver(dev)
        await driver.connect()
        good = await driver.read(plan)
        sim.stop()
        down = await driver.read(plan)  # must not raise
        connected = driver.connected
        after = await driver.read(plan)
        with pytest.raises(ConnectError, match="Connection refused"):
            await driver.connect()
        sim.start()  # same port, values kept
        await driver.connect()
        again = await driver.read(plan)
        still = driver.connected
        await driver.close()
        return good, down, connected, after, again, still

    good, down, connected, after, again, still = asyncio.run(main())
    assert good.ok and not connected
    assert not down.ok and down.error is not None
    assert re.fullmatch(
        rf"connection lost \(.+\) reading DB1 bytes 0..1, M bytes 0..0 from 127.0.0.1:{sim.port}",
        down.error,
    )
    assert [r[2:] for r in down.readings] == [(None, BAD_COMM, down.error)] * 2
    assert after.error == f"not connected to 127.0.0.1:{sim.port}"
    assert again.ok and still and [r[2] for r in again.readings] == [11, False]


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)],
)
def test_connect_to_closed_port_raises_connect_error_fast(host: str) -> None:
    port = closed_port(host)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    driver = Driver(device(port, {"name": "a", "address": "MW0"}, host=host))
    started = time.monotonic()
    pattern = rf"cannot connect to {re.escape(where)} \(device 'plc'\): Connection refused"
    with pytest.raises(ConnectError, match=pattern):
        asyncio.run(driver.connect())
    assert time.monotonic() - started < 1.0
    assert not driver.connected


def test_unresolvable_host_name_says_so() -> None:
    driver = Driver(device(102, {"name": "a", "address": "MW0"}, host="no-such-plc.invalid"))
    with pytest.raises(ConnectError, match=r"cannot resolve host name 'no-such-plc\.invalid'"):
        asyncio.run(driver.connect())


@needs_ipv6
def test_ipv6_link_reads_and_a_cut_link_is_bad_comm(sim: S7Simulator) -> None:
    """Over [::1] (a proxy to the IPv4-only server): reads work; a cut link (RST) is
    BAD_COMM with connected False; after the link is back, reconnecting reads again."""
    sim.set_bytes("DB", 4, b"\x41\x20\x00\x00", db=1)
    proxy = LinkProxy(("127.0.0.1", sim.port), listen_host="::1")
    dev = device(proxy.port, {"name": "r", "address": "DB1.DBD4", "type": "REAL"}, host="::1")
    plan = compile_plan(dev)

    async def main() -> tuple[Batch, Batch, bool, Batch]:
        driver = Driver(dev)
        await driver.connect()
        first = await driver.read(plan)
        proxy.cut()
        await asyncio.sleep(0.05)
        cut = await driver.read(plan)
        connected = driver.connected
        proxy.restore()
        await driver.connect()
        again = await driver.read(plan)
        await driver.close()
        return first, cut, connected, again

    try:
        first, cut, connected, again = asyncio.run(main())
    finally:
        proxy.close()
    assert first.readings[0][2:] == (10.0, GOOD)
    assert cut.readings[0][3] == BAD_COMM and not connected
    assert f"from [::1]:{proxy.port}" in (cut.error or "")
    assert again.ok and again.readings[0][2] == 10.0


def test_a_plc_that_stops_answering_times_out_and_disconnects(sim: S7Simulator) -> None:
    """The server holds DB1's lock (a stalled PLC): after timeout_ms the read gives
    BAD_COMM for this and every following request, and the link is closed."""
    dev = device(
        sim.port,
        {"name": "a", "address": "DB1.DBW0"},
        {"name": "b", "address": "DB3.DBW0"},
        timeout_ms=200,
        max_items_per_request=1,  # two requests: the second must fail too
    )

    async def main() -> tuple[Batch, bool, float]:
        driver = Driver(dev)
        await driver.connect()
        with sim.stalled("DB", db=1):
            started = time.monotonic()
            batch = await driver.read(compile_plan(dev))
            elapsed = time.monotonic() - started
        connected = driver.connected
        await driver.close()
        return batch, connected, elapsed

    batch, connected, elapsed = asyncio.run(main())
    assert not connected and 0.18 < elapsed < 1.0
    assert batch.error == (
        f"no response within 200 ms reading DB1 bytes 0..1 from 127.0.0.1:{sim.port}"
    )
    assert [r[2:] for r in batch.readings] == [(None, BAD_COMM, batch.error)] * 2


def test_close_during_a_read_ends_it_at_once(sim: S7Simulator) -> None:
    dev = device(sim.port, {"name": "a", "address": "DB1.DBW0"}, timeout_ms=5000)

    async def main() -> tuple[Batch, float]:
        driver = Driver(dev)
        await driver.connect()
        with sim.stalled("DB", db=1):
            task = asyncio.create_task(driver.read(compile_plan(dev)))
            await asyncio.sleep(0.1)
            started = time.monotonic()
            await driver.close()
            batch = await task
            return batch, time.monotonic() - started

    batch, elapsed = asyncio.run(main())
    assert elapsed < 1.0 and batch.readings[0][3] == BAD_COMM


def test_a_silent_peer_fails_connect_after_the_timeout() -> None:
    """A TCP listener that never speaks ISO: ConnectError after timeout_ms, saying so."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        driver = Driver(device(port, {"name": "a", "address": "MW0"}, timeout_ms=150))
        started = time.monotonic()
        with pytest.raises(
            ConnectError, match="no answer to the ISO connection request within 150"
        ):
            asyncio.run(driver.connect())
        assert 0.1 < time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (
            b"",  # a CPU in another slot: the connection request is answered by closing
            "the PLC refused the ISO connection (Connection closed by peer); check rack 0 / "
            "slot 1 (S7-1200/1500: 0/1, S7-300: 0/2)",
        ),
        (
            b"HTTP/1.1 400 Bad Request\r\n\r\n",
            "the peer does not speak ISO-on-TCP (Invalid TPKT version in response: 72): is it "
            "an S7 PLC?",
        ),
    ],
)
def test_iso_connection_failures_say_what_to_check(reply: bytes, message: str) -> None:
    """A peer that accepts TCP but not our ISO connection request."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(100)
            conn.sendall(reply)

    threading.Thread(target=answer, daemon=True).start()
    driver = Driver(device(server.getsockname()[1], {"name": "a", "address": "MW0"}))
    try:
        with pytest.raises(ConnectError) as info:
            asyncio.run(driver.connect())
    finally:
        server.close()
    assert str(info.value).endswith(message)
    assert not driver.connected


def test_read_before_connect_and_double_close_are_safe() -> None:
    dev = device(1, {"name": "a", "address": "MW0"})
    driver = Driver(dev)

    async def main() -> Batch:
        batch = await driver.read(compile_plan(dev))
        await driver.close()
        await driver.close()
        return batch

    (reading,) = asyncio.run(main()).readings
    assert reading[0] == "plc/a" and reading[2:] == (None, BAD_COMM, "not connected to 127.0.0.1:1")


def test_granted_pdu_is_used_and_long_strings_are_read_in_parts(sim: S7Simulator) -> None:
    """The simulator grants at most 480: a plan compiled for 960 is re-packed; with PDU 240
    a STRING[254] (256 bytes) takes two items and is joined."""
    text = "".join(chr(ord("a") + i % 26) for i in range(254))
    sim.set_bytes("DB", 100, bytes([254, 254]) + text.encode(), db=3)
    reals = [{"name": f"f{i}", "address": f"DB3.DBD{4 * i}", "type": "REAL"} for i in range(25)]
    for size in (960, 240):
        dev = device(sim.port, *reals, {"name": "s", "address": "DB3.STRING100.254"}, pdu_size=size)

        async def main(dev: Any = dev) -> tuple[Batch, int | None]:
            driver = Driver(dev)
            await driver.connect()
            batch = await driver.read(compile_plan(dev))
            await driver.close()
            return batch, driver.pdu_size

        batch, granted = asyncio.run(main())
        assert granted == min(size, 480)
        assert batch.ok, batch.error
        assert by_tag(batch)["s"][2] == text


def test_each_response_has_its_own_timestamp(sim: S7Simulator) -> None:
    dev = device(
        sim.port,
        {"name": "a", "address": "DB1.DBW0"},
        {"name": "b", "address": "DB1.DBW2"},
        {"name": "c", "address": "DB3.DBW0"},
        max_items_per_request=1,
    )
    before = time.time_ns()
    batch = asyncio.run(read_once(dev))
    stamps = {k: r[1] for k, r in by_tag(batch).items()}
    assert stamps["a"] == stamps["b"] < stamps["c"]
    assert before <= min(stamps.values()) and max(stamps.values()) <= time.time_ns()


VALUES = {
    "BOOL": st.booleans(),
    "BYTE": st.integers(0, 255),
    "WORD": st.integers(0, 65535),
    "DWORD": st.integers(0, 2**32 - 1),
    "INT": st.integers(-(2**15), 2**15 - 1),
    "DINT": st.integers(-(2**31), 2**31 - 1),
    "REAL": st.floats(width=32, allow_nan=False),
    "LREAL": st.floats(allow_nan=False),
    "STRING": st.text(st.characters(max_codepoint=255), max_size=12),
}


@st.composite
def layouts(draw: st.DrawFn) -> list[tuple[dict[str, Any], Any]]:
    """Non-overlapping tags of random types at random places, with random values."""
    out, used = [], set()
    for i in range(draw(st.integers(1, 25))):
        dtype = draw(st.sampled_from(sorted(VALUES)))
        area = draw(st.sampled_from(["DB1", "DB3", "M", "Q"]))
        extra = {"length": 12} if dtype == "STRING" else {}
        if dtype == "BOOL":
            extra["bit"] = draw(st.integers(0, 7))
        tag = tag_at(f"t{i}", dtype, extra, area, draw(st.integers(0, 200)))
        start = int(re.findall(r"\d+", tag["address"].split(".DB")[-1])[0])
        size = {"BOOL": 1, "BYTE": 1, "WORD": 2, "INT": 2, "STRING": 14, "LREAL": 8}.get(dtype, 4)
        cells = {(area, b) for b in range(start, start + size)}
        if cells & used:
            continue
        used |= cells
        out.append((tag, draw(VALUES[dtype])))
    return out


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(layouts(), st.sampled_from([64, 240, 480]), st.integers(0, 20))
def test_random_layouts_read_back_exactly(
    sim: S7Simulator, layout: list[tuple[dict[str, Any], Any]], pdu: int, gap: int
) -> None:
    """Values written per tag by the simulator are what the driver reads, for any layout,
    PDU size and max_gap."""
    dev = device(sim.port, *(t for t, _ in layout), pdu_size=pdu, max_gap=gap)
    for tag, (_, value) in zip(dev.tags, layout, strict=True):
        sim.write_tag(tag, value)
    batch = asyncio.run(read_once(dev))
    assert batch.ok, batch.error
    got = by_tag(batch)
    for tag, (_, value) in zip(dev.tags, layout, strict=True):
        assert same(got[tag.name][2], value), (tag, got[tag.name], value)
