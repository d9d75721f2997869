"""`edgegw import-csv`: spreadsheet register maps to YAML device blocks that the gateway
loads as they are; every bad row reported by line, column and problem."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from drivers.modbus import Table
from drivers.modbus.csvmap import columns_markdown, read_register_map
from drivers.modbus.simulator import ModbusSimulator
from gateway.cli import main as edgegw
from gateway.config import load_config

README = Path(__file__).parents[3] / "drivers" / "modbus" / "README.md"

# As exported from a spreadsheet in a European locale: BOM, ';' separators, a title
# row commented out, a notes column, header in any case, decimal commas.
GOOD = (
    "\ufeff# Energy meter EM-7 register map, rev C\n"
    "Name;Register;Type;Order;Scale;Unit;Length;Bit;Poll ms;Description;# notes\n"
    "voltage_l1;30001;float32;CDAB;;V;;;;Phase 1 voltage;checked 2024\n"
    "energy;30011;uint64;CDAB;0,01;kWh;;;5000;Total energy;\n"
    "\n"
    "serial;40101;string;BA;;;8;;60000;Serial number;\n"
    "running;40110;bool;;;;;0;;Status bit 0;\n"
    "alarm;40110;bool;;;;;15;;Status bit 15;\n"
    "relay;00003;;;;;;;;Relay output;\n"
)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = edgegw(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, text: str, name: str = "em-7.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_round_trip_csv_to_yaml_to_config_to_a_read(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    threaded_sim: Callable[..., ModbusSimulator],
) -> None:
    """The generated block loads in a gateway config unchanged, compiles, and reads the
    values the spreadsheet describes from a real server."""
    sim = threaded_sim(unit_ids=(7,), size=200)
    sim.set_registers(7, Table.INPUT, 0, [0x0000, 0x4366])  # 230.0, CDAB
    sim.set_registers(7, Table.INPUT, 10, [0x3039, 0x0000, 0x0000, 0x0000])  # 12345 CDAB
    sim.set_registers(7, Table.HOLDING, 100, [0x4D45, 0x2D37, 0x3130, 0x0000])  # "EM7-01", BA
    sim.set_registers(7, Table.HOLDING, 109, [0x8001])
    sim.set_bits(7, Table.COIL, 2, [True])
    csv_path = write(tmp_path, GOOD)
    (tmp_path / "devices.d").mkdir()
    out_path = tmp_path / "devices.d" / "em-7.yaml"
    code, _, err = run(
        capsys,
        "import-csv",
        str(csv_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(sim.port),
        "--unit",
        "7",
        "--set",
        "max_gap=4",
        "-o",
        str(out_path),
    )
    assert code == 0, err
    assert f"wrote {out_path}: device em-7, 6 tag(s)" in err
    text = out_path.read_text()
    assert "- {name: voltage_l1, register: 30001, type: float32, order: CDAB, unit: V, " in text
    assert "{name: relay, register: '00003', description: Relay output}" in text
    # a drop-in device file: the config names its folder and is otherwise untouched
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(f"gateway: {{id: gw1, state_dir: {tmp_path}}}\ndevices_dir: devices.d\n")
    cfg = load_config(cfg_path)
    (dev,) = cfg.devices
    names = ["voltage_l1", "energy", "serial", "running", "alarm", "relay"]
    assert [t.name for t in dev.tags] == names
    assert dev.poll_interval_ms == 1000 and dev.tags[1].poll_interval_ms == 5000
    code, out, _ = run(capsys, "validate", str(cfg_path))
    assert code == 0 and "device em-7 (modbus_tcp, every 1000 ms)" in out
    code, out, err = run(capsys, "read", "-c", str(cfg_path), "--json")
    assert code == 0, out + err
    values = {r["tag"]: r["value"] for r in map(json.loads, out.splitlines())}
    assert values == {
        "voltage_l1": 230.0,
        "energy": pytest.approx(123.45),
        "serial": "EM7-01",
        "running": True,
        "alarm": True,
        "relay": True,
    }


def test_every_bad_row_is_reported_with_line_and_column(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = (
        "name,address,register,type,scale,bit,poll_ms\n"  # 1
        "ok,0,,uint16,,,\n"  # 2
        "t2,1,,flaot,,,\n"  # 3
        "# a comment row\n"  # 4
        "t4,ten,,uint16,,,\n"  # 5
        "ok,2,,uint16,,,\n"  # 6
        "t6,3,,uint16,,4,\n"  # 7
        "t7,4,40005,uint16,,,\n"  # 8
        "t8,5,,int16,x1,,\n"  # 9
        "t9,,50001,,,,\n"  # 10
        "bad name,6,,,,,\n"  # 11
    )
    path = write(tmp_path, text, "map.csv")
    out_path = tmp_path / "out.yaml"
    code, out, err = run(capsys, "import-csv", str(path), "--host", "10.0.0.1", "-o", str(out_path))
    assert code == 2 and out == "" and not out_path.exists()
    lines = err.splitlines()
    assert lines[-1] == f"{path}: 8 problem(s); nothing written"
    expected = [
        (3, "type", "unknown type 'flaot'"),
        (5, "address", "'ten' is not an address"),
        (6, "name", "'ok' is also on line 2"),  # in the same run as the bad cells
        (7, "bit", "bit 4 is read as type 'bool'"),
        (8, "register", "give register or address, not both"),
        (9, "scale", "'x1' is not a number"),
        (10, "register", "register '50001' is not a register number"),
        (11, "name", "tag name 'bad name' is not allowed"),
    ]
    assert len(lines) == len(expected) + 1
    for line, (number, column, fragment) in zip(lines, expected, strict=False):
        assert line.startswith(f"{path}:{number}: {column}: "), line
        assert fragment in line, line


def test_device_level_problems_point_at_the_row(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Checks that need the whole device (duplicates, intervals) still name the line."""
    text = "name,register,poll_ms\na,40001,\nb,40002,300\na,40003,\n"
    path = write(tmp_path, text, "dup.csv")
    code, _, err = run(capsys, "import-csv", str(path), "--host", "10.0.0.1")
    assert code == 2 and f"{path}:4: name: 'a' is also on line 2" in err
    path = write(tmp_path, "name,register,poll_ms\na,40001,\nb,40002,300\n", "iv.csv")
    code, _, err = run(capsys, "import-csv", str(path), "--host", "10.0.0.1")
    assert code == 2
    assert "edgegw: import-csv: --set poll_interval_ms: poll_interval_ms 1000 is not a whole" in err
    path = write(tmp_path, "name,register,poll_ms\na,40001,200\nb,40002,300\n", "iv2.csv")
    code, _, err = run(capsys, "import-csv", str(path), "--host", "10.0.0.1")
    assert code == 2 and f"{path}:3: poll_ms: tag 'b': poll_interval_ms 300 is not a" in err


def test_every_problem_of_every_kind_in_one_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Bad cells, a name given twice (even on a bad row), a string without length and the
    device's own checks on two rows (intervals): one run shows them all, by line, and the
    device's problem with an option last, as the option."""
    text = (
        "name,register,type,poll_ms\n"  # 1
        "a,40001,flaot,\n"  # 2: a bad type
        "b,40002,uint16,200\n"  # 3
        "b,40003,uint16,\n"  # 4: b again
        "a,40004,uint16,\n"  # 5: a again, though row 2 is bad
        "c,40005,string,\n"  # 6: no length
        "d,40010,uint16,300\n"  # 7: not a multiple of 200
        "e,40011,uint16,700\n"  # 8: nor this
        "f,40012,,w\n"  # 9: not a number
        "g,40013,,\n"  # 10: the device's 500 ms, not a multiple of 200
    )
    path = write(tmp_path, text, "all.csv")
    code, out, err = run(capsys, "import-csv", str(path), "--host", "10.0.0.1", "--poll-ms", "500")
    assert code == 2 and out == ""
    lines = err.splitlines()
    expected = [
        (2, "type", "unknown type 'flaot'"),
        (4, "name", "'b' is also on line 3"),
        (5, "name", "'a' is also on line 2"),
        (6, "length", "tag 'c': type 'string' needs length"),
        (7, "poll_ms", "tag 'd': poll_interval_ms 300 is not a whole multiple"),
        (8, "poll_ms", "tag 'e': poll_interval_ms 700 is not a whole multiple"),
        (9, "poll_ms", "'w' is not a whole number"),
    ]
    for line, (number, column, fragment) in zip(lines, expected, strict=False):
        assert line.startswith(f"{path}:{number}: {column}: "), line
        assert fragment in line, line
    assert lines[len(expected)].startswith(
        "edgegw: import-csv: --set poll_interval_ms: poll_interval_ms 500 is not a whole "
        "multiple of the fastest interval of the device (200 ms)"
    ), lines
    assert lines[len(expected) + 1 :] == [f"{path}: 8 problem(s); nothing written"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name,adress,type\na,1,uint16\n", ":1: adress: unknown column (did you mean 'address'?)"),
        ("register,type\n40001,uint16\n", ":1: name: the header has no 'name'"),
        ("", ":1: header: the file has no header row"),
        ("name,address\n", ":1: name: no tag rows after the header"),
        ("name,address\na,1,extra\n", ":2: row: 3 cells but the header has 2"),
        ("name,address,name\na,1,b\n", ":1: name: this column appears twice"),
    ],
)
def test_header_and_shape_problems(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text, "h.csv")
    problems = [str(p) for p in read_register_map(path).problems]
    assert any(p == f"{path}{expected}" or p.startswith(f"{path}{expected}") for p in problems), (
        problems
    )


def test_options_are_checked(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, "name,register\na,40001\n", "x.csv")
    code, _, err = run(capsys, "import-csv", str(path))
    assert code == 2 and "--host is required for modbus_tcp" in err
    code, _, err = run(capsys, "import-csv", str(path), "--protocol", "modbus_rtu")
    assert code == 2 and "--port is required for modbus_rtu" in err
    code, _, err = run(capsys, "import-csv", str(path), "--host", "x", "--set", "max_gap=200")
    assert code == 2 and "--set max_gap: max_gap 200 is out of range; accepted: 0..125" in err
    code, out, _ = run(
        capsys,
        "import-csv",
        str(path),
        "--protocol",
        "modbus_rtu",
        "--port",
        "/dev/ttyUSB0",
        "--set",
        "baudrate=9600",
    )
    assert code == 0 and "    port: /dev/ttyUSB0\n    baudrate: 9600\n" in out


def test_readme_documents_the_columns() -> None:
    assert columns_markdown() in README.read_text()


# A vendor sheet as exported, with the vendor's own words: column names, type words,
# hex and Modicon addresses, ranges, STRING(n), names with spaces, an access column.
VENDOR = (
    "Tag Name,Register,Data Type,Access,Units,Multiplier,Comment\n"  # 1
    "Voltage L1-N,30001-30002,FLOAT CDAB,R,V,,Phase voltage\n"  # 2
    "Active Energy,3x00011,UINT32 CDAB,RO,kWh,0.01,\n"  # 3
    "Serial Number,40101-40108,STRING(16),R,,,\n"  # 4
    "Frequency,0x0020,WORD,R/W,Hz,0.01,holding 32\n"  # 5
    "Reset,40200,UINT16,W,,,write-only command\n"  # 6
    "Relay 1,0x00003,BOOL,R,,,coil 3\n"  # 7
)


def test_a_vendor_sheet_as_exported_imports_in_one_run(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    threaded_sim: Callable[..., ModbusSimulator],
) -> None:
    """Aliases, vendor type words, hex and 4x notation, ranges, STRING(n) and --slugify:
    no hand fixes; the complete config it writes reads the right values from a server."""
    sim = threaded_sim(unit_ids=(1,), size=300)
    sim.set_registers(1, Table.INPUT, 0, [0x0000, 0x4366])  # 230.0 CDAB
    sim.set_registers(1, Table.INPUT, 10, [0x3039, 0x0000])  # 12345 CDAB
    sim.set_registers(1, Table.HOLDING, 100, [0x454D, 0x372D, 0x3031, 0, 0, 0, 0, 0])
    sim.set_registers(1, Table.HOLDING, 32, [5000])
    sim.set_bits(1, Table.COIL, 2, [True])
    path = write(tmp_path, VENDOR, "EM-7 map.csv")
    code, _, err = run(capsys, "import-csv", str(path), "--host", "127.0.0.1")
    assert code == 2
    assert (
        f"{path}:2: name: tag name 'Voltage L1-N' is not allowed; accepted: letters, digits "
        "and _ . : - (--slugify makes it 'voltage_l1-n')" in err
    )
    assert err.count(": name: tag name") == 4  # every row at once, not one per run
    out_path = tmp_path / "gw.yaml"
    code, _, err = run(
        capsys,
        "import-csv",
        str(path),
        "--host",
        "127.0.0.1",
        "--port",
        str(sim.port),
        "--slugify",
        "--as",
        "config",
        "--gateway-id",
        "gw-7",
        "--state-dir",
        str(tmp_path / "state"),
        "-o",
        str(out_path),
    )
    assert code == 0, err
    assert f"{path}:6: access: 'W': write-only, skipped (the gateway reads)" in err
    text = out_path.read_text()
    assert "{name: voltage_l1-n, register: 30001, type: float32, order: CDAB, unit: V," in text
    assert "{name: active_energy, register: 30011, type: uint32, order: CDAB, scale: 0.01" in text
    assert "{name: serial_number, register: 40101, type: string, length: 16}" in text
    assert "{name: frequency, address: 32, type: uint16, scale: 0.01, unit: Hz" in text
    assert "{name: relay_1, register: '00003', type: bool" in text
    cfg = load_config(out_path)
    assert cfg.gateway.id == "gw-7" and [t.name for t in cfg.devices[0].tags] == [
        "voltage_l1-n",
        "active_energy",
        "serial_number",
        "frequency",
        "relay_1",
    ]
    code, out, err = run(capsys, "read", "-c", str(out_path), "--json")
    assert code == 0, out + err
    values = {r["tag"]: r["value"] for r in map(json.loads, out.splitlines())}
    assert values == {
        "voltage_l1-n": 230.0,
        "active_energy": pytest.approx(123.45),
        "serial_number": "EM7-01",
        "frequency": pytest.approx(50.0),
        "relay_1": True,
    }


@pytest.mark.parametrize(
    ("row", "column", "fragment"),
    [
        ("a,40001-40002,uint16", "register", "the range covers 2 register(s) but uint16 takes 1"),
        ("a,40001-40002,", "register", "types of 2: int32, uint32, float32"),
        ("a,40010-40001,uint16", "register", "does not go upwards"),
        ("a,4x0,uint16", "register", "register numbers start at 1"),
        ("a,40001,FLOAT WXYZ", "type", "'WXYZ' is neither an order"),
        ("a,40001,flaot", "type", "did you mean 'float'"),
    ],
)
def test_vendor_cell_problems(tmp_path: Path, row: str, column: str, fragment: str) -> None:
    path = write(tmp_path, f"name,register,type\n{row}\n", "v.csv")
    problems = [str(p) for p in read_register_map(path).problems]
    assert any(p.startswith(f"{path}:2: {column}: ") and fragment in p for p in problems), problems


def test_every_problem_of_one_row_in_one_run(tmp_path: Path) -> None:
    path = write(tmp_path, "name,address,type,scale,bit\nbad name,ten,flaot,x,3\n", "r.csv")
    columns = [p.column for p in read_register_map(path).problems]
    assert columns == ["name", "address", "type", "scale"]


def test_readme_documents_the_type_words() -> None:
    from drivers.modbus.csvmap import types_markdown

    assert types_markdown() in README.read_text()
