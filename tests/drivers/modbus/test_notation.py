"""Config in the notations of manuals: register numbers, ABCD orders, strings, bits of a
register, per-tag poll intervals, RTU devices; each bad value gets a located error that
quotes it and lists what is accepted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from drivers.modbus import (
    DataType,
    ModbusRtuDevice,
    ModbusRtuTcpDevice,
    ModbusTcpDevice,
    Order,
    Parity,
    Table,
    check_shared_links,
    compile_plan,
    describe_plan,
    load_device_map,
    summarize_plan,
)
from drivers.modbus.notation import parse_register, register_number


def device(*tags: dict[str, Any], **kw: Any) -> dict[str, Any]:
    base = {"protocol": "modbus_tcp", "name": "plc1", "host": "10.0.0.5", "tags": list(tags)}
    return base | kw


def ok(*tags: dict[str, Any], **kw: Any) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate(device(*tags, **kw))


def error(data: dict[str, Any], model: Any = ModbusTcpDevice) -> dict[str, Any]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    errors = info.value.errors()
    assert len(errors) == 1, errors
    return dict(errors[0])


# ---- register numbers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("register", "table", "address"),
    [
        (40001, Table.HOLDING, 0),
        ("40001", Table.HOLDING, 0),
        (49999, Table.HOLDING, 9998),
        (400001, Table.HOLDING, 0),
        (465536, Table.HOLDING, 65535),
        (30010, Table.INPUT, 9),
        ("300010", Table.INPUT, 9),
        (10001, Table.DISCRETE, 0),
        (165536, Table.DISCRETE, 65535),
        ("00001", Table.COIL, 0),
        ("00017", Table.COIL, 16),
        ("000017", Table.COIL, 16),
        ("065536", Table.COIL, 65535),
    ],
)
def test_register_numbers_map_to_table_and_0_based_address(
    register: int | str, table: Table, address: int
) -> None:
    tag = ok({"name": "t", "register": register}).tags[0]
    assert (tag.table, tag.address) == (table, address)
    assert parse_register(register) == (table, address)
    assert parse_register(register_number(table, address)) == (table, address)


def test_register_number_of_a_coil_defaults_to_bool_and_coils_plan_as_bits() -> None:
    dev = ok({"name": "c", "register": "00003"}, {"name": "h", "register": 40010})
    assert dev.tags[0].type is DataType.BOOL
    assert describe_plan(compile_plan(dev)) == ["holding 9..9 (1 reg): h", "coil 2..2 (1 bit): c"]


@pytest.mark.parametrize(
    ("register", "fragment"),
    [
        (17, "would be a coil (0xxxx), but YAML drops leading zeros and reads 00017 as octal"),
        (40000, "register 40000 is not a register number; accepted: 5 digits"),
        (50001, "register 50001 is not a register number"),
        (25000, "register 25000 is not a register number"),
        ("4x0001", "register '4x0001' is not a register number"),
        (465537, "400001-465536"),
        (True, "register True is not a register number"),
    ],
)
def test_bad_register_numbers_quote_value_and_list_forms(register: Any, fragment: str) -> None:
    e = error(device({"name": "t", "register": register}))
    assert e["loc"] == ("tags", 0, "register")
    assert fragment in e["msg"]


def test_register_and_address_together_is_an_error() -> None:
    e = error(device({"name": "t", "register": 40011, "address": 10}))
    assert e["loc"] == ("tags", 0, "register")
    assert "give register or address, not both: register 40011 is holding address 10" in e["msg"]


def test_register_with_a_conflicting_table_is_an_error_a_matching_one_is_not() -> None:
    e = error(device({"name": "t", "register": 30001, "table": "holding"}))
    assert e["loc"] == ("tags", 0, "table")
    assert "register 30001 is in the input table but table 'holding'" in e["msg"]
    assert ok({"name": "t", "register": 30001, "table": "input"}).tags[0].table is Table.INPUT


def test_a_tag_needs_address_or_register() -> None:
    e = error(device({"name": "t"}))
    assert e["loc"] == ("tags", 0, "address")
    assert "give address (0-based, 0..65535) or register (40001-style)" in e["msg"]


# ---- orders ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "order", "byte", "word"),
    [
        ("float32", "ABCD", Order.BIG, Order.BIG),
        ("float32", "cdab", Order.BIG, Order.LITTLE),
        ("int32", "BADC", Order.LITTLE, Order.BIG),
        ("uint32", "DCBA", Order.LITTLE, Order.LITTLE),
        ("float64", "CDAB", Order.BIG, Order.LITTLE),
        ("uint64", "GHEFCDAB", Order.BIG, Order.LITTLE),
        ("int64", "HGFEDCBA", Order.LITTLE, Order.LITTLE),
        ("int16", "BA", Order.LITTLE, None),
        ("uint16", "AB", Order.BIG, None),
        ("string", "BA", Order.LITTLE, None),
    ],
)
def test_vendor_order_notation_maps_to_byte_and_word_order(
    dtype: str, order: str, byte: Order, word: Order | None
) -> None:
    extra = {"length": 4} if dtype == "string" else {}
    tag = ok({"name": "t", "address": 0, "type": dtype, "order": order, **extra}).tags[0]
    assert (tag.byte_order, tag.word_order) == (byte, word)


@pytest.mark.parametrize(
    ("tag", "fragment"),
    [
        (
            {"type": "int16", "order": "ABCD"},
            "order 'ABCD' is for 32/64-bit values, but int16 has one byte order per register; "
            "accepted: AB or BA",
        ),
        ({"type": "float32", "order": "BA"}, "does not fit float32 (2 registers)"),
        ({"type": "float32", "order": "ABCDEFGH"}, "does not fit float32"),
        ({"type": "bool", "order": "AB"}, "a bool has no byte order"),
        ({"type": "float32", "order": "ABDC"}, "unknown order 'ABDC'; accepted: AB, BA"),
        (
            {"type": "float32", "order": "CDAB", "word_order": "big"},
            "order CDAB means word_order little, but word_order big is also given",
        ),
    ],
)
def test_bad_or_conflicting_orders_are_refused(tag: dict[str, Any], fragment: str) -> None:
    e = error(device({"name": "t", "address": 0, **tag}))
    assert e["loc"] == ("tags", 0, "order") and fragment in e["msg"]


def test_device_order_sets_the_defaults_and_a_tag_can_override() -> None:
    dev = ok(
        {"name": "a", "address": 0, "type": "float32"},
        {"name": "b", "address": 2, "type": "float32", "order": "ABCD"},
        order="CDAB",
    )
    assert (dev.byte_order, dev.word_order) == (Order.BIG, Order.LITTLE)
    assert dev.tags[1].word_order is Order.BIG
    same = ok({"name": "a", "address": 0}, order="DCBA", byte_order="little")
    assert same.byte_order is Order.LITTLE
    e = error(device({"name": "a", "address": 0}, order="DCBA", byte_order="big"))
    assert e["loc"] == ("order",) and "order DCBA means byte_order little" in e["msg"]


# ---- strings and bits ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "field", "fragment"),
    [
        ({"type": "string"}, "length", "type 'string' needs length: its number of characters"),
        (
            {"type": "string", "length": 251},
            "length",
            "length 251 is out of range; accepted: 1..250",
        ),
        ({"type": "uint16", "length": 4}, "length", "length applies to type 'string' only"),
        ({"type": "string", "length": 4, "scale": 2}, "scale", "a string has no scale"),
        (
            {"type": "string", "length": 4, "word_order": "little"},
            "word_order",
            "register by register",
        ),
        ({"type": "uint16", "bit": 3}, "bit", "bit 3 is read as type 'bool'"),
        ({"type": "bool", "bit": 16}, "bit", "bit 16 is out of range; accepted: 0 (least"),
        ({"table": "coil", "bit": 1}, "bit", "a coil is a single bit already"),
    ],
)
def test_string_and_bit_options_are_checked(tag: dict[str, Any], field: str, fragment: str) -> None:
    e = error(device({"name": "t", "address": 0, **tag}))
    assert e["loc"] == ("tags", 0, field) and fragment in e["msg"]


def test_string_needs_registers_within_the_request_limit() -> None:
    e = error(
        device(
            {"name": "s", "address": 0, "type": "string", "length": 20},
            max_registers_per_request=8,
        )
    )
    assert e["loc"] == ("tags", 0, "length")
    assert "string (10 registers) but max_registers_per_request is 8" in e["msg"]


def test_bits_of_one_register_share_one_read() -> None:
    dev = ok(*({"name": f"b{i}", "register": 40101, "type": "bool", "bit": i} for i in range(16)))
    (req,) = compile_plan(dev).requests
    assert (req.address, req.count, len(req.tags)) == (100, 1, 16)


# ---- per-tag poll intervals ---------------------------------------------------------


def test_device_interval_becomes_the_fastest_and_tags_keep_theirs() -> None:
    dev = ok(
        {"name": "fast", "address": 0, "poll_interval_ms": 100},
        {"name": "normal", "address": 1},
        {"name": "slow", "address": 2, "poll_interval_ms": 5000},
        poll_interval_ms=1000,
    )
    assert dev.poll_interval_ms == 100  # what the gateway schedules
    assert [t.poll_interval_ms for t in dev.tags] == [100, 1000, 5000]
    plan = compile_plan(dev)
    assert [(r.every, r.tags) for r in plan.requests] == [
        (1, ("plc1/fast",)),
        (10, ("plc1/normal",)),
        (50, ("plc1/slow",)),
    ]
    assert [len(plan.due(c)) for c in (0, 1, 10, 20, 50)] == [3, 1, 2, 2, 3]
    assert describe_plan(plan)[1] == "holding 1..1 (1 reg, every 1000 ms): normal"
    assert summarize_plan(plan).startswith("3 tags in 3 request(s), 11.2 requests/s at a 100 ms")
    # re-validating what was loaded gives the same device
    again = ModbusTcpDevice.model_validate(dev.model_dump(by_alias=True))
    assert again == dev


def test_intervals_must_be_multiples_of_the_fastest() -> None:
    e = error(
        device({"name": "a", "address": 0}, {"name": "b", "address": 1, "poll_interval_ms": 300})
    )
    assert e["loc"] == ("poll_interval_ms",)
    assert (
        "poll_interval_ms 1000 is not a whole multiple of the fastest interval of the " in e["msg"]
    )
    assert "(300 ms)" in e["msg"] and "accepted: 900 or 1200" in e["msg"]
    e = error(
        device(
            {"name": "a", "address": 0, "poll_interval_ms": 200},
            {"name": "b", "address": 1, "poll_interval_ms": 500},
        )
    )
    assert e["loc"] == ("tags", 1, "poll_interval_ms")
    assert "tag 'b': poll_interval_ms 500" in e["msg"] and "accepted: 400 or 600" in e["msg"]


def test_uniform_plan_summary_counts_saved_requests() -> None:
    dev = ok(*({"name": f"t{i}", "address": i} for i in range(10)), {"name": "x", "address": 500})
    assert summarize_plan(compile_plan(dev)) == (
        "11 tags in 2 request(s) per cycle: 9 fewer than one request per tag (82%)"
    )


# ---- RTU devices ----------------------------------------------------------------


def rtu(**kw: Any) -> dict[str, Any]:
    return {
        "protocol": "modbus_rtu",
        "name": "m1",
        "port": "/dev/ttyUSB0",
        "tags": [{"name": "t", "register": 30001}],
    } | kw


def test_rtu_defaults_follow_the_modbus_serial_line_standard() -> None:
    d = ModbusRtuDevice.model_validate(rtu())
    assert (d.baudrate, d.parity, d.stopbits, d.bytesize) == (19200, Parity.EVEN, 1, 8)
    assert d.line == "19200 8E1" and d.unit_id == 1
    d = ModbusRtuDevice.model_validate(rtu(parity="none", baudrate=9600, stopbits=2))
    assert d.line == "9600 8N2"


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("parity", "X", "unknown parity 'X'; accepted: 'N' (none), 'E' (even), 'O' (odd)"),
        ("unit_id", 0, "unit_id 0 is out of range; accepted: 1..247"),
        ("unit_id", 248, "accepted: 1..247"),
        ("stopbits", 3, "stopbits 3 is out of range; accepted: 1..2"),
        ("bytesize", 5, "accepted: 7..8"),
        ("port", " ", "is not a serial port"),
        ("retries", 11, "retries 11 is out of range; accepted: 0..10"),
        ("inter_request_delay_ms", -1, "accepted: 0..10000"),
    ],
)
def test_rtu_fields_are_checked(field: str, value: Any, fragment: str) -> None:
    e = error(rtu(**{field: value}), ModbusRtuDevice)
    assert e["loc"] == (field,) and fragment in e["msg"]


def test_rtu_over_tcp_device() -> None:
    d = ModbusRtuTcpDevice.model_validate(
        {
            "protocol": "modbus_rtu_tcp",
            "name": "gw",
            "host": "::1",
            "port": 4001,
            "unit_id": 3,
            "tags": [{"name": "t", "address": 0}],
        }
    )
    assert (d.host, d.port, d.unit_id) == ("::1", 4001, 3)
    assert compile_plan(d).unit_id == 3


def test_devices_on_one_serial_port_must_agree_on_line_settings(tmp_path: Path) -> None:
    a = ModbusRtuDevice.model_validate(rtu(name="a", baudrate=9600))
    b = ModbusRtuDevice.model_validate(rtu(name="b", baudrate=19200, unit_id=2))
    c = ModbusRtuDevice.model_validate(rtu(name="c", port="/dev/ttyUSB1", baudrate=19200))
    assert check_shared_links([a, c]) == []
    ((index, field, message),) = check_shared_links([a, c, b])
    assert (index, field) == (2, "baudrate")
    assert "baudrate 19200 differs from device 'a' on the same port /dev/ttyUSB0 (9600)" in message
    path = tmp_path / "map.yaml"
    path.write_text(
        "devices:\n"
        "  - {protocol: modbus_rtu, name: a, port: /dev/ttyUSB0, baudrate: 9600,"
        " tags: [{name: t, register: 40001}]}\n"
        "  - {protocol: modbus_rtu, name: b, port: /dev/ttyUSB0, unit_id: 2, parity: N,"
        " baudrate: 9600, tags: [{name: t, register: 40001}]}\n"
    )
    with pytest.raises(ValidationError) as info:
        load_device_map(path)
    (e,) = info.value.errors()
    assert e["loc"] == (1, "parity") and "devices on one bus share its line settings" in e["msg"]
