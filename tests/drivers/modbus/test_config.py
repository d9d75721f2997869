"""Config validation: each bad value gets a located error quoting it and what is accepted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from drivers.modbus import (
    DataType,
    ModbusTcpDevice,
    Order,
    Table,
    compile_plan,
    describe_plan,
    load_device_map,
)
from drivers.modbus.simulator import SAMPLE_MAP
from drivers.modbus.types import type_table_markdown

README = Path(__file__).parents[3] / "drivers" / "modbus" / "README.md"


def device(*tags: dict[str, Any], **kw: Any) -> dict[str, Any]:
    base = {"protocol": "modbus_tcp", "name": "plc1", "host": "10.0.0.5", "tags": list(tags)}
    return base | kw


def error(data: dict[str, Any]) -> dict[str, Any]:
    """The single error of validating ``data``."""
    with pytest.raises(ValidationError) as info:
        ModbusTcpDevice.model_validate(data)
    errors = info.value.errors()
    assert len(errors) == 1, errors
    return dict(errors[0])


def test_defaults_engineers_expect() -> None:
    d = ModbusTcpDevice.model_validate(device({"name": "t", "address": 0}))
    assert (d.port, d.unit_id, d.poll_interval_ms, d.timeout_ms) == (502, 1, 1000, 1000)
    assert (d.max_registers_per_request, d.max_bits_per_request, d.max_gap) == (125, 2000, 8)
    assert (d.byte_order, d.word_order) == (Order.BIG, Order.BIG)
    tag = d.tags[0]
    assert (tag.table, tag.type, tag.scale, tag.offset) == (Table.HOLDING, DataType.UINT16, 1, 0)


def test_bad_type_quotes_value_lists_accepted_and_suggests() -> None:
    e = error(device({"name": "t", "address": 0, "type": "float"}))
    assert e["loc"] == ("tags", 0, "type")
    assert "unknown type 'float'" in e["msg"]
    assert "'int16', 'uint16'" in e["msg"] and "'float64'" in e["msg"]
    assert "(did you mean 'float64' or 'float32'?)" in e["msg"]


def test_bad_table_quotes_value_and_lists_accepted() -> None:
    e = error(device({"name": "t", "address": 0, "table": "holdings"}))
    assert e["loc"] == ("tags", 0, "table")
    assert "unknown table 'holdings'" in e["msg"]
    assert "'holding', 'input', 'coil', 'discrete'" in e["msg"]


def test_bad_order_explains_4_letter_notation() -> None:
    e = error(device({"name": "t", "address": 0, "type": "float32", "word_order": "CDAB"}))
    assert e["loc"] == ("tags", 0, "word_order")
    assert "unknown order 'CDAB'; accepted: 'big', 'little'" in e["msg"]
    assert "byte_order: big and word_order: little" in e["msg"]
    e = error(device({"name": "t", "address": 0}, byte_order="middle"))
    assert e["loc"] == ("byte_order",) and "'middle'" in e["msg"] and "'big'" in e["msg"]


def test_enum_values_are_case_insensitive() -> None:
    d = ModbusTcpDevice.model_validate(
        device(
            {"name": "t", "address": 0, "type": "FLOAT32", "table": "Input"}, word_order="LITTLE"
        )
    )
    assert (d.tags[0].type, d.tags[0].table, d.word_order) == (
        DataType.FLOAT32,
        Table.INPUT,
        Order.LITTLE,
    )


def test_duplicate_tag_names_point_at_the_second_one() -> None:
    e = error(
        device(
            {"name": "temp", "address": 0},
            {"name": "p", "address": 1},
            {"name": "temp", "address": 2},
        )
    )
    assert e["loc"] == ("tags", 2, "name")
    assert e["msg"] == (
        "duplicate tag name 'temp': tags[0] has it too; tag names must be unique within a device"
    )


@pytest.mark.parametrize(
    ("dtype", "address", "last"), [("uint32", 65535, 65534), ("float64", 65533, 65532)]
)
def test_address_overflow_names_registers_and_accepted_range(
    dtype: str, address: int, last: int
) -> None:
    e = error(device({"name": "big", "address": address, "type": dtype}))
    assert e["loc"] == ("tags", 0, "address")
    assert f"{dtype} at address {address} needs" in e["msg"]
    assert f"accepted: address 0..{last}" in e["msg"]


def test_address_out_of_range() -> None:
    e = error(device({"name": "t", "address": 70000}))
    assert e["loc"] == ("tags", 0, "address")
    assert e["msg"] == "address 70000 is out of range; accepted: 0..65535"


def test_bit_tables_only_hold_bool() -> None:
    e = error(device({"name": "t", "table": "coil", "address": 0, "type": "float32"}))
    assert e["loc"] == ("tags", 0, "type")
    assert "'float32' is not possible; accepted: 'bool'" in e["msg"]
    # ... and default to bool
    d = ModbusTcpDevice.model_validate(device({"name": "t", "table": "discrete", "address": 3}))
    assert d.tags[0].type is DataType.BOOL


@pytest.mark.parametrize(
    ("tag", "field", "fragment"),
    [
        ({"type": "bool", "scale": 2}, "scale", "a bool has no scale"),
        ({"type": "bool", "offset": 1}, "offset", "a bool has no offset"),
        ({"type": "int16", "word_order": "little"}, "word_order", "int16 is a single register"),
        ({"type": "bool", "byte_order": "little"}, "byte_order", "a bool has no byte order"),
        ({"type": "float32", "scale": 0}, "scale", "scale 0 would make every value"),
    ],
)
def test_options_that_do_not_apply_are_refused(
    tag: dict[str, Any], field: str, fragment: str
) -> None:
    e = error(device({"name": "t", "address": 0, **tag}))
    assert e["loc"] == ("tags", 0, field)
    assert fragment in e["msg"]


def test_tag_larger_than_request_limit() -> None:
    e = error(device({"name": "t", "address": 0, "type": "float64"}, max_registers_per_request=2))
    assert e["loc"] == ("tags", 0, "type")
    assert "max_registers_per_request is 2; accepted: max_registers_per_request >= 4" in e["msg"]


@pytest.mark.parametrize(
    ("field", "value", "accepted"),
    [
        ("unit_id", 256, "0..255"),
        ("port", 0, "1..65535"),
        ("poll_interval_ms", 5, ">= 10"),
        ("max_registers_per_request", 126, "1..125"),
        ("max_bits_per_request", 2001, "1..2000"),
        ("max_gap", -1, "0..125"),
        ("timeout_ms", 0, "10..600000"),
    ],
)
def test_numeric_bounds_quote_value_and_range(field: str, value: int, accepted: str) -> None:
    e = error(device({"name": "t", "address": 0}, **{field: value}))
    assert e["loc"] == (field,)
    assert e["msg"] == f"{field} {value} is out of range; accepted: {accepted}"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("::1", "::1"),
        ("[fe80::1]", "fe80::1"),
        ("192.168.1.10", "192.168.1.10"),
        ("plc-7.plant.local", "plc-7.plant.local"),
    ],
)
def test_hosts(host: str, expected: str) -> None:
    d = ModbusTcpDevice.model_validate(device({"name": "t", "address": 0}, host=host))
    assert d.host == expected


@pytest.mark.parametrize("host", ["10.0.0.5:502", "bad host", "", "-x.local", "10.0.0.256"])
def test_bad_hosts(host: str) -> None:
    e = error(device({"name": "t", "address": 0}, host=host))
    assert e["loc"] == ("host",) and repr(host) in e["msg"]


@pytest.mark.parametrize(
    ("data", "loc", "fragment"),
    [
        (device(), ("tags",), "'tags' is empty"),
        (
            device({"name": "a b", "address": 0}),
            ("tags", 0, "name"),
            "tag name 'a b' is not allowed",
        ),
        (device({"name": "t", "address": 0}, name="plc/1"), ("name",), "device name 'plc/1'"),
    ],
)
def test_names_and_empty_tags(data: dict[str, Any], loc: tuple[Any, ...], fragment: str) -> None:
    e = error(data)
    assert e["loc"] == loc and fragment in e["msg"]


def test_unknown_keys_are_refused() -> None:
    e = error(device({"name": "t", "address": 0, "scal": 2}))
    assert e["loc"] == ("tags", 0, "scal") and e["type"] == "extra_forbidden"


def test_sample_device_map_loads_and_compiles() -> None:
    devices = load_device_map(SAMPLE_MAP)
    assert [d.name for d in devices] == ["boiler-1", "meter-7", "io-rack"]
    assert devices[2].host == "::1"
    meter = devices[1]
    assert (meter.byte_order, meter.word_order) == (Order.BIG, Order.LITTLE)
    lines = describe_plan(compile_plan(devices[0]))
    assert lines[0] == (
        "holding 0..13 (14 regs, 5 unused): water_temp, flue_temp, pressure, flow, burner_on, "
        "alarm_word"
    )


def test_device_map_errors_are_located_by_list_index(tmp_path: Path) -> None:
    path = tmp_path / "map.yaml"
    path.write_text(SAMPLE_MAP.read_text().replace("type: uint64", "type: uint128"))
    with pytest.raises(ValidationError) as info:
        load_device_map(path)
    (e,) = info.value.errors()
    assert e["loc"] == (1, "tags", 3, "type") and "unknown type 'uint128'" in e["msg"]


def test_readme_type_table_is_generated_from_the_type_table() -> None:
    assert type_table_markdown() in README.read_text()
