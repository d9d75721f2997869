"""`edgegw read` and `edgegw scan` against real servers, as a field technician runs them:
the table they print and their exit codes (0 good, 1 bad quality or unreachable, 2 bad
input)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus import Table
from drivers.modbus.simulator import ModbusSimulator
from gateway.cli import main as edgegw

from .hostile import HostileDevice

Sim = Callable[..., ModbusSimulator]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = edgegw(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def config(tmp_path: Path, devices: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"gateway: {{id: gw1, state_dir: {tmp_path / 'state'}}}\ndevices:\n{devices}")
    return path


def _row(out: str, tag: str) -> list[str]:
    line = next(ln for ln in out.splitlines() if ln.strip().startswith(tag + " "))
    return line.split()


def test_read_ad_hoc_float32_cdab(capsys: pytest.CaptureFixture[str], threaded_sim: Sim) -> None:
    sim = threaded_sim(unit_ids=(3,))
    sim.set_registers(3, Table.HOLDING, 0, [0x0000, 0x4120])
    code, out, err = run(
        capsys,
        "read",
        f"modbus-tcp://127.0.0.1:{sim.port}",
        "--unit",
        "3",
        "--register",
        "40001",
        "--type",
        "float32",
        "--order",
        "CDAB",
        "--eng-unit",
        "bar",
    )
    assert code == 0, err
    assert "device read (modbus_tcp 127.0.0.1, unit 3): 1 tag(s) in 1 request(s)" in out
    assert out.splitlines()[1].split() == ["tag", "raw", "value", "unit", "quality"]
    assert _row(out, "40001") == ["40001", "0x0000", "0x4120", "10.0", "bar", "GOOD"]
    assert "1 good, 0 bad" in out


def test_read_ad_hoc_over_ipv6_counts_and_json(
    capsys: pytest.CaptureFixture[str], threaded_sim: Sim
) -> None:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    sim = threaded_sim(host="::1")
    sim.set_registers(1, Table.INPUT, 9, [7, 8, 9])
    code, out, _ = run(
        capsys,
        "read",
        f"modbus-tcp://[::1]:{sim.port}",
        "--register",
        "30010",
        "--count",
        "3",
        "--json",
    )
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["tag"], r["raw"], r["value"], r["quality"]) for r in rows] == [
        ("30010", [7], 7, "GOOD"),
        ("30011", [8], 8, "GOOD"),
        ("30012", [9], 9, "GOOD"),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--register", "40001", "--type", "float"], "--type: unknown type 'float'"),
        (["--register", "50001"], "--register: register '50001' is not a register number"),
        (["--address", "1", "--register", "40001"], "--register: "),
        (["--register", "40001", "--unit", "300"], "--unit: unit_id 300 is out of range"),
        ([], "read: give --register (e.g. 40001) or --address (0-based)"),
    ],
)
def test_read_bad_input_exits_2_naming_the_flag(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = run(capsys, "read", "modbus-tcp://127.0.0.1:1502", *args)
    assert code == 2 and out == "" and message in err


def test_read_bad_target_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "read", "modbus://plc", "--register", "40001")
    assert code == 2 and "target 'modbus://plc' is not understood; accepted: modbus-tcp://" in err


def test_read_a_device_from_the_config_says_which_tag_is_wrong(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, threaded_sim: Sim
) -> None:
    sim = threaded_sim(size=100)
    sim.set_registers(1, Table.HOLDING, 10, [123, 0x5055, 0x4D50])
    cfg = config(
        tmp_path,
        f"""  - protocol: modbus_tcp
    name: pump1
    host: 127.0.0.1
    port: {sim.port}
    max_gap: 0
    tags:
      - {{name: flow, register: 40011, scale: 0.1, unit: m3/h}}
      - {{name: serial, register: 40012, type: string, length: 4}}
      - {{name: missing, register: 40100, type: float32}}
""",
    )
    code, out, _ = run(capsys, "read", "-c", str(cfg), "--device", "pump1")
    assert code == 1
    assert _row(out, "flow")[:5] == ["flow", "0x007B", "12.3", "m3/h", "GOOD"]
    assert _row(out, "serial")[:4] == ["serial", "0x5055", "0x4D50", '"PUMP"']
    missing = " ".join(_row(out, "missing"))
    assert "BAD_DEVICE modbus exception 2 (illegal data address) reading holding 99..100" in missing
    assert "2 good, 1 bad" in out
    code, out, _ = run(capsys, "read", "-c", str(cfg), "--tag", "pump1/flow")
    assert code == 0 and "1 tag(s) in 1 request(s)" in out and "missing" not in out


def test_read_config_selection_errors_and_unreachable(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens
    cfg = config(
        tmp_path,
        f"  - {{protocol: modbus_tcp, name: gone, host: 127.0.0.1, port: {port}, "
        "tags: [{name: a, register: 40001}]}\n",
    )
    code, _, err = run(capsys, "read", "-c", str(cfg), "--device", "pump9")
    assert code == 2 and "no device 'pump9' in the config; devices: gone" in err
    code, _, err = run(capsys, "read", "-c", str(cfg), "--tag", "zz")
    assert code == 2 and "no tag 'zz' on any device" in err
    code, out, _ = run(capsys, "read", "-c", str(cfg))
    assert code == 1
    assert "UNREACHABLE: cannot connect to 127.0.0.1:" in out and "Connection refused" in out
    assert _row(out, "a")[:5] == ["a", "-", "-", "BAD_COMM", "cannot"]


@pytest.mark.skipif(importlib.util.find_spec("snap7") is None, reason="python-snap7 missing")
def test_read_works_for_other_protocols_too(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """An S7 device through the same registry path: values and qualities, raw '-'."""
    from pydantic import TypeAdapter

    from drivers.s7.config import DeviceConfig as S7Device
    from drivers.s7.simulator import S7Simulator

    entry = {
        "protocol": "s7",
        "name": "plc",
        "host": "127.0.0.1",
        "port": 1,
        "tags": [{"name": "level", "address": "DB1.DBD0", "type": "REAL", "unit": "%"}],
    }
    sim = S7Simulator.for_devices([TypeAdapter(S7Device).validate_python(entry)])
    sim.start()
    try:
        cfg = config(
            tmp_path,
            f"  - {{protocol: s7, name: plc, host: 127.0.0.1, port: {sim.port}, tags: "
            "[{name: level, address: DB1.DBD0, type: REAL, unit: '%'}]}\n",
        )
        code, out, err = run(capsys, "read", "-c", str(cfg))
    finally:
        sim.stop()
    assert code == 0, out + err
    assert _row(out, "level") == ["level", "-", "0.0", "%", "GOOD"]


# ---- scan -------------------------------------------------------------------------


def test_scan_tcp_lists_units_that_answer_even_with_an_exception(
    capsys: pytest.CaptureFixture[str], threaded_sim: Sim
) -> None:
    sim = threaded_sim(unit_ids=(2, 5), size=10, answer_unknown_units=False)
    sim.set_registers(2, Table.HOLDING, 0, [0x1234])
    code, out, err = run(
        capsys,
        "scan",
        f"modbus-tcp://127.0.0.1:{sim.port}",
        "--from",
        "1",
        "--to",
        "6",
        "--timeout-ms",
        "100",
        "--register",
        "40005",
    )
    assert code == 0, err
    assert out.splitlines() == [
        "unit 2: answers (0x0000)",
        "unit 5: answers (0x0000)",
        "2 of 6 unit id(s) answer: 2, 5",
    ]
    assert "scanned 6/6 unit ids, 2 answer" in err
    code, out, _ = run(
        capsys,
        "scan",
        f"modbus-tcp://127.0.0.1:{sim.port}",
        "--from",
        "2",
        "--to",
        "2",
        "--register",
        "40011",  # past the 10 registers: exception 2, still an answer
    )
    assert code == 0 and "unit 2: answers with exception 2 (illegal data address)" in out


def test_scan_exception_4_for_absent_units_is_not_an_answer(
    capsys: pytest.CaptureFixture[str], threaded_sim: Sim
) -> None:
    """pymodbus's server answers exception 4 for unit ids it does not serve: ghosts,
    listed apart and not counted."""
    sim = threaded_sim(unit_ids=(1, 5))
    code, out, _ = run(capsys, "scan", f"modbus-tcp://127.0.0.1:{sim.port}", "--to", "8")
    lines = out.splitlines()
    assert code == 0 and lines[-1] == "2 of 8 unit id(s) answer: 1, 5"
    assert "unit 1: answers (0x0000)" in lines and "unit 5: answers (0x0000)" in lines
    assert (
        "not counted: units 2..4, 6..8 answered exception 4 (server device failure: what "
        "servers and gateways answer for a unit id they do not serve)" in lines
    )


def test_scan_all_247_ids_with_exception_4_is_no_unit_and_gives_causes(
    capsys: pytest.CaptureFixture[str], threaded_sim: Sim
) -> None:
    sim = threaded_sim(unit_ids=(250,))
    code, out, _ = run(capsys, "scan", f"modbus-tcp://127.0.0.1:{sim.port}")
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith(
        "every unit id answers exception 4 (server device failure: what servers and gateways "
        "answer for a unit id they do not serve): no unit proves it exists."
    ), lines
    assert "ignores the unit id" not in out and "unit 1:" not in out
    assert lines[1] == "0 of 247 unit id(s) answer"
    causes = [ln for ln in lines[2:] if ln.startswith("  - ")]
    assert causes == lines[2:] and len(causes) >= 3, lines
    assert causes[0].startswith("  - the register read fails on the device itself"), causes
    assert any("--from/--to" in c for c in causes), causes
    assert any("--timeout-ms 200" in c for c in causes), causes
    assert not any("MBAP" in c for c in causes), causes  # the framing is right: not asked


@pytest.fixture
def gateway_bus_silent() -> Iterator[Callable[[str], int]]:
    """A TCP-to-serial gateway with nothing answering behind it: a raw Modbus TCP server
    (tests/drivers/modbus/hostile.py) answering exception 10 or 11 to every request."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    started: list[HostileDevice] = []

    def start(mode: str) -> int:
        dev = asyncio.run_coroutine_threadsafe(HostileDevice(mode).start(), loop).result(10)
        started.append(dev)
        return dev.port

    yield start
    for dev in started:
        asyncio.run_coroutine_threadsafe(dev.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


@pytest.mark.parametrize(
    ("mode", "code", "meaning"),
    [
        ("gateway_no_response", 11, "nothing answers on the bus behind it"),
        ("gateway_path_unavailable", 10, "no path to any unit"),
    ],
)
def test_scan_a_gateway_whose_bus_is_silent_says_so_and_why(
    capsys: pytest.CaptureFixture[str],
    gateway_bus_silent: Callable[[str], int],
    mode: str,
    code: int,
    meaning: str,
) -> None:
    """Every id answers exception 10/11: a gateway with a silent bus, not "one device that
    ignores the unit id"; the causes behind a gateway are listed."""
    port = gateway_bus_silent(mode)
    rc, out, _ = run(capsys, "scan", f"modbus-tcp://127.0.0.1:{port}")
    assert rc == 1
    lines = out.splitlines()
    assert lines[0].startswith(f"every unit id answers exception {code} (gateway "), lines
    assert "this is a gateway (TCP to serial)" in lines[0] and meaning in lines[0], lines
    assert "ignores the unit id" not in out and "one device" not in out
    assert lines[1] == "0 of 247 unit id(s) answer"
    causes = lines[2:]
    assert all(c.startswith("  - ") for c in causes) and len(causes) >= 4, lines
    assert causes[0].startswith("  - wiring of the bus behind the gateway: RS-485 A and B")
    assert any("baud rate, parity and stop bits" in c for c in causes), causes
    assert any(c.startswith("  - unit ids: ") for c in causes), causes
    assert any("--timeout-ms 200" in c for c in causes), causes


def test_scan_some_ids_through_a_gateway_with_a_silent_bus_lists_them_apart(
    capsys: pytest.CaptureFixture[str], gateway_bus_silent: Callable[[str], int]
) -> None:
    """Two ids only (too few to call it "every id"): listed apart, with the same causes."""
    port = gateway_bus_silent("gateway_no_response")
    rc, out, _ = run(capsys, "scan", f"modbus-tcp://127.0.0.1:{port}", "--to", "2")
    assert rc == 1
    lines = out.splitlines()
    assert lines[0] == (
        "not counted: units 1, 2 answered exception 11 (gateway target failed to respond: nothing "
        "answers behind the gateway)"
    )
    assert lines[1] == "0 of 2 unit id(s) answer: none"
    assert lines[2].startswith("  - wiring of the bus behind the gateway"), lines


def _serve_http(stop: threading.Event) -> int:
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.1)

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(256)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        srv.close()

    threading.Thread(target=loop, daemon=True).start()
    return int(srv.getsockname()[1])


def test_scan_with_no_answer_says_what_the_port_speaks(
    capsys: pytest.CaptureFixture[str], threaded_sim: Sim
) -> None:
    stop = threading.Event()
    port = _serve_http(stop)
    try:
        code, out, _ = run(
            capsys, "scan", f"modbus-tcp://127.0.0.1:{port}", "--to", "2", "--timeout-ms", "100"
        )
    finally:
        stop.set()
    assert code == 1 and "0 of 2 unit id(s) answer: none" in out
    assert f"  - 127.0.0.1 port {port} speaks HTTP, not Modbus" in out
    # an RTU-over-TCP server scanned as Modbus TCP: told to scan it as RTU over TCP
    sim = threaded_sim(framer="rtu", unit_ids=(1,))
    code, out, _ = run(
        capsys, "scan", f"modbus-tcp://127.0.0.1:{sim.port}", "--to", "2", "--timeout-ms", "100"
    )
    assert code == 1
    assert f"scan it as modbus-rtu-tcp://127.0.0.1:{sim.port}" in out


def test_scan_keeps_library_messages_off_the_terminal(threaded_sim: Sim) -> None:
    """As a technician runs it (a process, stderr and stdout both shown): only our lines,
    even while most ids time out (pymodbus logs "No response received" and hex dumps)."""
    sim = threaded_sim(unit_ids=(2,), answer_unknown_units=False)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "scan",
            f"modbus-tcp://127.0.0.1:{sim.port}",
            "--to",
            "4",
            "--timeout-ms",
            "100",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(Path(__file__).resolve().parents[3]),
    )
    assert r.returncode == 0, r.stderr
    for line in (r.stdout + r.stderr).splitlines():
        assert line.startswith(("unit ", "not counted: ", "scanned ", "1 of 4")), line
    assert "pymodbus" not in r.stderr.lower() and "no response" not in r.stderr.lower()


def test_scan_libmodbus_server_ignores_the_unit_id(
    capsys: pytest.CaptureFixture[str], libmodbus_server: Callable[..., tuple[str, int]]
) -> None:
    """libmodbus's TCP server answers every unit id with the same registers: one device."""
    host, port = libmodbus_server(size=10)
    code, out, _ = run(capsys, "scan", f"modbus-tcp://[{host}]:{port}", "--to", "40")
    assert code == 0
    assert "every unit id answers the same way (data): the server ignores the unit id" in out
    assert "40 of 40 unit id(s) answer alike: the device itself" in out
    assert sum(line.startswith("unit ") for line in out.splitlines()) <= 16


def test_scan_bad_range_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "scan", "modbus-tcp://127.0.0.1", "--from", "9", "--to", "3")
    assert code == 2 and "accepted: 0 <= from <= to <= 255" in err


@pytest.mark.skipif(importlib.util.find_spec("serial") is None, reason="pyserial is not installed")
def test_scan_a_serial_bus(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """On an RTU bus (a pty here), absent units stay silent: only real ones are listed."""
    import asyncio
    import threading

    from drivers.modbus.ptybus import PtyBridge

    ready, stop = threading.Event(), threading.Event()
    paths: dict[str, Any] = {}

    def serve() -> None:
        async def main() -> None:
            async with PtyBridge() as bridge:
                paths["client"] = bridge.client_path
                async with ModbusSimulator(serial_port=bridge.server_path, unit_ids=(3, 4)):
                    ready.set()
                    while not stop.is_set():
                        await asyncio.sleep(0.02)

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        code, out, _ = run(
            capsys,
            "scan",
            f"modbus-rtu://{paths['client']}?parity=N&baudrate=115200",
            "--from",
            "1",
            "--to",
            "5",
            "--timeout-ms",
            "80",
        )
    finally:
        stop.set()
        thread.join(10)
    assert code == 0 and out.splitlines()[-1] == "2 of 5 unit id(s) answer: 3, 4"
