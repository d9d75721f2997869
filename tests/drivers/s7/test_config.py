"""Config validation: each bad value gets a located error quoting it, listing what is
accepted and saying how to fix it; the sample loads; the README's type table is current."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import drivers.s7 as s7
from drivers.s7 import DataType, DeviceConfig, S7Tag, compile_plan, describe_plan, load_devices
from drivers.s7.types import type_table_markdown

ROOT = Path(__file__).parents[3]
README = ROOT / "drivers" / "s7" / "README.md"
SAMPLE = ROOT / "drivers" / "s7" / "sample-device.yaml"


def device(*tags: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"protocol": "s7", "name": "plc1", "host": "10.0.0.5", "tags": list(tags)} | kw


def error(data: dict[str, Any]) -> dict[str, Any]:
    """The single error of validating ``data``."""
    with pytest.raises(ValidationError) as info:
        DeviceConfig.model_validate(data)
    errors = info.value.errors()
    assert len(errors) == 1, errors
    return dict(errors[0])


def test_package_interface_for_the_gateway_registry() -> None:
    assert s7.PROTOCOL == "s7"
    assert callable(s7.compile_plan) and callable(s7.describe_plan)
    assert s7.DeviceConfig.model_fields["protocol"].annotation is not None


def test_importing_the_config_does_not_import_snap7() -> None:
    import subprocess
    import sys

    code = "import sys, drivers.s7; import drivers.s7.config; print('snap7' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr


def test_defaults_engineers_expect() -> None:
    d = DeviceConfig.model_validate(device({"name": "t", "address": "DB1.DBD0", "type": "REAL"}))
    assert (d.port, d.rack, d.slot, d.pdu_size) == (102, 0, 1, 480)
    assert (d.poll_interval_ms, d.timeout_ms, d.max_gap, d.max_items_per_request) == (
        1000,
        1000,
        16,
        20,
    )
    assert d.tsaps == (0x0100, 0x0101)  # PG connection to rack 0, slot 1
    tag = d.tags[0]
    assert (tag.type, tag.scale, tag.offset, tag.length, tag.unit) == (
        DataType.REAL,
        1,
        0,
        None,
        None,
    )


def test_every_field_is_documented() -> None:
    for model in (DeviceConfig, S7Tag):
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name}"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("DB1.DBX0.3", DataType.BOOL),
        ("DB1.DBB2", DataType.BYTE),
        ("DB1.DBW6", DataType.WORD),
        ("DB10.DBD4", DataType.DWORD),
        ("M0.1", DataType.BOOL),
        ("EW2", DataType.WORD),
        ("AW4", DataType.WORD),
        ("MD20", DataType.DWORD),
        ("QB1", DataType.BYTE),
    ],
)
def test_type_is_implied_by_the_size_letter(address: str, expected: DataType) -> None:
    tag = S7Tag.model_validate({"name": "t", "address": address})
    assert tag.type is expected


@pytest.mark.parametrize(
    ("address", "dtype"),
    [
        ("DB1.DBW0", "INT"),
        ("DB1.DBD0", "DINT"),
        ("DB1.DBD0", "REAL"),
        ("DB1.DBB0", "LREAL"),
        ("MB0", "LREAL"),
        ("DB1.DBB0", "BYTE"),
        ("IW0", "int"),
        ("QD0", "real"),
    ],
)
def test_type_may_refine_the_size_letter(address: str, dtype: str) -> None:
    S7Tag.model_validate({"name": "t", "address": address, "type": dtype})


@pytest.mark.parametrize(
    ("address", "dtype", "message"),
    [
        (
            "DB1.DBW6",
            "REAL",
            "tag 't': address 'DB1.DBW6' reads a word (2 bytes) but type REAL needs 4 bytes; "
            "accepted with W: WORD, INT; for REAL write DB1.DBD6",
        ),
        (
            "DB1.DBD6",
            "INT",
            "reads a double word (4 bytes) but type INT needs 2 bytes; accepted with D: DWORD, "
            "DINT, REAL; for INT write DB1.DBW6",
        ),
        (
            "MD8",
            "LREAL",
            "type LREAL has no size letter of its own: address its first byte with B; "
            "accepted with D: DWORD, DINT, REAL; for LREAL write MB8",
        ),
        (
            "DB1.DBW0",
            "BOOL",
            "type BOOL is a single bit; accepted with W: WORD, INT; for BOOL write DB1.DBX0.0",
        ),
        ("M0.1", "BYTE", "reads a bit but type BYTE needs 1 bytes; accepted with X: BOOL"),
    ],
)
def test_contradicting_type_and_address_is_an_error_that_says_so(
    address: str, dtype: str, message: str
) -> None:
    e = error(device({"name": "t", "address": address, "type": dtype}))
    assert e["loc"] == ("tags", 0, "type") and message in e["msg"]


def test_unknown_type_lists_accepted_and_hints() -> None:
    e = error(device({"name": "t", "address": "DB1.DBD0", "type": "float"}))
    assert e["loc"] == ("tags", 0, "type")
    assert e["msg"] == (
        "unknown type 'float'; accepted: BOOL, BYTE, WORD, DWORD, INT, DINT, REAL, LREAL, "
        "STRING (S7 calls it REAL)"
    )
    assert (
        "(did you mean DINT or INT?)"
        in error(device({"name": "t", "address": "MD0", "type": "DIN"}))["msg"]
    )
    assert (
        "UDINT is an S7 type this driver does not decode yet"
        in error(device({"name": "t", "address": "MD0", "type": "udint"}))["msg"]
    )


def test_bad_address_is_located_and_explained() -> None:
    e = error(device({"name": "t", "address": "DB1.DBX0"}))
    assert e["loc"] == ("tags", 0, "address")
    assert e["msg"] == (
        "address 'DB1.DBX0' is a bit address without its bit number; write DB1.DBX0.0 .. DB1.DBX0.7"
    )


def test_string_notations() -> None:
    """DB3.STRING10.20, DB3.DBB10 + type STRING + length 20 and TIA's String[20] agree."""
    forms = [
        {"address": "DB3.STRING10.20"},
        {"address": "DB3.STRING10.20", "type": "STRING", "length": 20},
        {"address": "DB3.DBB10", "type": "STRING", "length": 20},
        {"address": "DB3.DBB10", "type": "String[20]"},
        {"address": "%db3.dbb10", "type": "string [ 20 ]", "length": 20},
    ]
    for form in forms:
        tag = S7Tag.model_validate({"name": "s", **form})
        assert (tag.type, tag.length, tag.size, str(tag.location)) == (
            DataType.STRING,
            20,
            22,
            "DB3.DBB10",
        ), form


@pytest.mark.parametrize(
    ("fields", "loc", "message"),
    [
        (
            {"address": "DB3.DBB10", "type": "STRING"},
            "type",
            "tag 't': a STRING needs its declared length; add length: N (1..254, as in "
            "STRING[N]) or write the address as DB3.STRING10.N",
        ),
        (
            {"address": "DB3.STRING10.20", "length": 30},
            "length",
            "address 'DB3.STRING10.20' says length 20 but length is 30; give the length once",
        ),
        (
            {"address": "DB3.STRING10.20", "type": "INT"},
            "type",
            "is a STRING; remove type or set it to STRING",
        ),
        (
            {"address": "DB3.DBB10", "type": "STRING", "length": 255},
            "length",
            "STRING length 255 is out of range; accepted: 1..254",
        ),
        (
            {"address": "DB3.DBW10", "length": 4},
            "length",
            "tag 't': length applies to STRING only; remove it",
        ),
        (
            {"address": "DB3.DBX0.0", "scale": 2},
            "scale",
            "tag 't': scale 2.0 has no effect on type BOOL (not a number); remove it",
        ),
        (
            {"address": "DB3.DBB0", "type": "STRING", "length": 3, "offset": 1},
            "offset",
            "offset 1.0 has no effect on type STRING",
        ),
        (
            {"address": "DB3.DBW0", "scale": 0},
            "scale",
            "scale 0 would make every value equal to offset; accepted: any non-zero number",
        ),
        (
            {"address": "DB3.DBD65534"},
            "address",
            "tag 't': address 'DB3.DBD65534': DWORD needs 4 bytes (65534..65537) but the area "
            "ends at byte 65535; accepted: start byte 0..65532",
        ),
        (
            {"address": "DB3.DBB65500", "type": "STRING", "length": 100},
            "address",
            "STRING needs 102 bytes",
        ),
        ({"address": "DB3.DBW0", "name": "bad name"}, "name", "tag name 'bad name' is not"),
    ],
)
def test_tag_errors(fields: dict[str, Any], loc: str, message: str) -> None:
    e = error(device({"name": "t", **fields}))
    assert e["loc"] == ("tags", 0, loc)
    assert message in e["msg"]


def test_scale_and_offset_keep_explicit_neutral_values_on_bool() -> None:
    S7Tag.model_validate({"name": "b", "address": "M0.0", "scale": 1, "offset": 0})


@pytest.mark.parametrize(
    ("value", "tsap"),
    [("0x0200", 0x0200), ("02.00", 0x0200), ("0200", 0x0200), (0x0200, 0x0200), ("10.01", 0x1001)],
)
def test_tsap_notations(value: Any, tsap: int) -> None:
    d = DeviceConfig.model_validate(
        device({"name": "t", "address": "MW0"}, remote_tsap=value, local_tsap="01.00")
    )
    assert d.tsaps == (0x0100, tsap)


def test_rack_slot_give_the_remote_tsap() -> None:
    d = DeviceConfig.model_validate(device({"name": "t", "address": "MW0"}, rack=0, slot=2))
    assert d.tsaps == (0x0100, 0x0102)
    d = DeviceConfig.model_validate(device({"name": "t", "address": "MW0"}, rack=1, slot=3))
    assert d.tsaps == (0x0100, 0x0123)


@pytest.mark.parametrize(
    ("kw", "loc", "message"),
    [
        (
            {"remote_tsap": "0x0200", "slot": 1},
            ("slot",),
            "rack/slot and remote_tsap are two ways to name the PLC's end of the connection; "
            "give rack and slot (most PLCs) or remote_tsap (LOGO!, S7-200, a configured "
            "connection), not both: remove slot or remote_tsap",
        ),
        (
            {"remote_tsap": "0x0200", "rack": 0, "slot": 1},
            ("rack",),
            "remove rack and slot or remote_tsap",
        ),
        (
            {"local_tsap": "0x0100"},
            ("local_tsap",),
            "local_tsap needs remote_tsap: TSAPs replace rack/slot as a pair; add remote_tsap, "
            "or remove local_tsap (with rack/slot ours is 0x0100)",
        ),
        (
            {"remote_tsap": "0x1G00"},
            ("remote_tsap",),
            "TSAP '0x1G00' is not valid; accepted: 16-bit hex as '0x0100', '01.00' or '0100'",
        ),
        ({"remote_tsap": 70000}, ("remote_tsap",), "TSAP 70000 is out of range; accepted: 0x0000"),
        ({"slot": 32}, ("slot",), "slot 32 is out of range; accepted: 0..31"),
        ({"rack": 8}, ("rack",), "rack 8 is out of range; accepted: 0..7"),
        ({"pdu_size": 2000}, ("pdu_size",), "pdu_size 2000 is out of range; accepted: 64..960"),
        ({"port": 0}, ("port",), "port 0 is out of range; accepted: 1..65535"),
        ({"max_gap": -1}, ("max_gap",), "max_gap -1 is out of range; accepted: 0..960"),
        (
            {"max_items_per_request": 21},
            ("max_items_per_request",),
            "max_items_per_request 21 is out of range; accepted: 1..20",
        ),
        ({"poll_interval_ms": 5}, ("poll_interval_ms",), "accepted: >= 10"),
        ({"host": "10.0.0.300"}, ("host",), "host '10.0.0.300' is not a valid IPv4 address"),
        ({"host": "plc:102"}, ("host",), "put a port in 'port', not in 'host'"),
        ({"name": "my plc"}, ("name",), "device name 'my plc' is not allowed"),
        ({"tags": []}, ("tags",), "a device needs at least one tag; 'tags' is empty"),
        ({"protocol": "s5"}, ("protocol",), "'s7'"),
        ({"colour": "red"}, ("colour",), "Extra inputs are not permitted"),
    ],
)
def test_device_errors(kw: dict[str, Any], loc: tuple[str, ...], message: str) -> None:
    e = error(device({"name": "t", "address": "MW0"}) | kw)
    assert e["loc"] == loc
    assert message in e["msg"]


def test_duplicate_tag_name_points_at_the_second() -> None:
    e = error(device({"name": "a", "address": "MW0"}, {"name": "a", "address": "MW2"}))
    assert e["loc"] == ("tags", 1, "name")
    assert e["msg"] == (
        "duplicate tag name 'a': tags[0] has it too; tag names must be unique within a device"
    )


def test_ipv6_and_names_as_hosts() -> None:
    for host, expected in (
        ("::1", "::1"),
        ("[fe80::1]", "fe80::1"),
        ("plc-7.plant", "plc-7.plant"),
    ):
        d = DeviceConfig.model_validate(device({"name": "t", "address": "MW0"}, host=host))
        assert d.host == expected


def test_sample_device_file_loads_and_compiles() -> None:
    devices = load_devices(SAMPLE)
    assert len(devices) >= 2
    for d in devices:
        lines = describe_plan(compile_plan(d))
        assert lines and all(line.startswith("request ") for line in lines)
    types = {t.type for d in devices for t in d.tags}
    assert types == set(DataType)  # the sample shows every type


def test_load_devices_errors_are_located(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "devices:\n  - {protocol: s7, name: p, host: 127.0.0.1,\n"
        "     tags: [{name: t, address: DB1.DBW0, type: REAL}]}\n"
    )
    with pytest.raises(ValidationError) as info:
        load_devices(bad)
    (e,) = info.value.errors()
    assert e["loc"] == (0, "tags", 0, "type")
    (tmp_path / "shape.yaml").write_text("just: text\n")
    with pytest.raises(ValueError, match="expected a list of devices"):
        load_devices(tmp_path / "shape.yaml")


def test_readme_type_table_is_current() -> None:
    assert type_table_markdown() in README.read_text(encoding="utf-8")
