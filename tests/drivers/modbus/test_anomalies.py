"""Anomaly injection in the simulator: spike, drift, stuck; schedules; unchanged without."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from drivers.contract import Batch
from drivers.modbus import ModbusTag, ModbusTcpDevice, ModbusTcpDriver, Table, compile_plan
from drivers.modbus.config import load_device_map
from drivers.modbus.simulator import (
    SAMPLE_MAP,
    Anomaly,
    AnomalyKind,
    ModbusSimulator,
    anomalous_value,
    anomaly_schedule,
    parse_anomaly,
    waveform_value,
)

DEVICES = load_device_map(SAMPLE_MAP)
BOILER = DEVICES[0]
TAGS = {t.name: t for t in BOILER.tags}
TEMP = TAGS["water_temp"]  # float32
FLOW = TAGS["flow"]  # uint16, scale 0.1
BURNER = TAGS["burner_on"]  # bool


def value(tag: ModbusTag, t: float, *anomalies: Anomaly) -> bool | int | float:
    return anomalous_value(BOILER.name, tag, t, anomalies)


def test_without_anomalies_the_values_are_the_waveforms() -> None:
    other = Anomaly("elsewhere", "water_temp", AnomalyKind.SPIKE, 0, 1e9, 50.0)
    for dev in DEVICES:
        for tag in dev.tags:
            for t in (0.0, 17.3, 1_700_000_000.5):
                normal = waveform_value(dev.name, tag, t)
                assert anomalous_value(dev.name, tag, t, []) == normal
                assert anomalous_value(dev.name, tag, t, [other]) == normal  # not this tag


def test_a_spike_adds_its_magnitude_only_while_active() -> None:
    a = Anomaly(BOILER.name, TEMP.name, AnomalyKind.SPIKE, 100.0, 2.0, 50.0)
    assert value(TEMP, 99.99, a) == waveform_value(BOILER.name, TEMP, 99.99)
    assert value(TEMP, 100.0, a) == pytest.approx(waveform_value(BOILER.name, TEMP, 100.0) + 50)
    assert value(TEMP, 101.9, a) == pytest.approx(waveform_value(BOILER.name, TEMP, 101.9) + 50)
    assert value(TEMP, 102.0, a) == waveform_value(BOILER.name, TEMP, 102.0)


def test_magnitudes_are_engineering_units_on_scaled_tags() -> None:
    """flow is uint16 with scale 0.1: a spike of 5.0 m3/h is 50 raw counts."""
    a = Anomaly(BOILER.name, FLOW.name, AnomalyKind.SPIKE, 0.0, 10.0, 5.0)
    assert value(FLOW, 3.0, a) == pytest.approx(waveform_value(BOILER.name, FLOW, 3.0) + 5.0)


def test_a_drift_grows_linearly_then_stops() -> None:
    a = Anomaly(BOILER.name, TEMP.name, AnomalyKind.DRIFT, 100.0, 60.0, -30.0)
    for t, offset in ((100.0, 0.0), (115.0, -7.5), (130.0, -15.0), (159.0, -29.5)):
        expected = waveform_value(BOILER.name, TEMP, t) + offset
        assert value(TEMP, t, a) == pytest.approx(expected, abs=1e-4)
    assert value(TEMP, 160.0, a) == waveform_value(BOILER.name, TEMP, 160.0)


def test_a_stuck_sensor_holds_its_value_at_the_start() -> None:
    a = Anomaly(BOILER.name, TEMP.name, AnomalyKind.STUCK, 100.0, 30.0)
    frozen = waveform_value(BOILER.name, TEMP, 100.0)
    assert {value(TEMP, 100.0 + k, a) for k in range(30)} == {frozen}
    assert value(TEMP, 130.0, a) == waveform_value(BOILER.name, TEMP, 130.0)


def test_bools_invert_on_a_spike_ignore_a_drift_and_can_stick() -> None:
    def burner(kind: AnomalyKind, t: float) -> bool | int | float:
        return value(BURNER, t, Anomaly(BOILER.name, "burner_on", kind, 0, 99, 5.0))

    for t in (1.0, 40.0):
        normal = waveform_value(BOILER.name, BURNER, t)
        assert burner(AnomalyKind.SPIKE, t) is (not normal)
        assert burner(AnomalyKind.DRIFT, t) is normal
        assert burner(AnomalyKind.STUCK, t) is waveform_value(BOILER.name, BURNER, 0)


def test_values_are_clamped_to_what_the_type_can_hold() -> None:
    a = Anomaly(BOILER.name, FLOW.name, AnomalyKind.SPIKE, 0.0, 10.0, 1e9)
    assert value(FLOW, 1.0, a) == pytest.approx(65535 * 0.1)
    b = Anomaly(BOILER.name, FLOW.name, AnomalyKind.SPIKE, 0.0, 10.0, -1e9)
    assert value(FLOW, 1.0, b) == 0


def test_injected_anomalies_are_served_and_read_back_by_the_driver() -> None:
    """Through pymodbus's server and the real driver, on 127.0.0.1."""
    t = 1_000.5

    async def main() -> tuple[ModbusTcpDevice, Batch, list[Anomaly]]:
        async with ModbusSimulator(unit_ids=(1,)) as sim:
            dev = BOILER.model_copy(update={"port": sim.port})
            injected = [
                sim.inject(dev.name, "water_temp", "spike", 1_000, 2, 40.0),
                sim.inject(dev.name, "flow", AnomalyKind.DRIFT, 990, 20, 3.0),
                sim.inject(dev.name, "pressure", "stuck", 900, 200),
                sim.inject(dev.name, "pump_cmd", "spike", 1_000, 1),  # a coil: inverted
            ]
            sim.apply_waveforms([dev], t)
            driver = ModbusTcpDriver(dev)
            await driver.connect()
            batch = await driver.read(compile_plan(dev))
            await driver.close()
            sim.clear_anomalies()
            return dev, batch, injected

    dev, batch, injected = asyncio.run(main())
    assert batch.ok, batch.error
    got = {r[0]: r[2] for r in batch.readings}
    for tag in dev.tags:
        expected = anomalous_value(dev.name, tag, t, injected)
        assert got[f"{dev.name}/{tag.name}"] == pytest.approx(expected), tag.name
    assert got[f"{dev.name}/water_temp"] != pytest.approx(waveform_value(dev.name, TEMP, t))


def test_apply_waveforms_is_unchanged_without_anomalies() -> None:
    sim, ref = ModbusSimulator(unit_ids=(1,)), ModbusSimulator(unit_ids=(1,))
    sim.inject("other", "x", "spike", 0, 1e9, 1.0)  # on a tag not served here
    for t in (3.0, 77.7):
        sim.apply_waveforms([BOILER], t)
        ref.apply_waveforms([BOILER], t)
        for table in (Table.HOLDING, Table.COIL, Table.DISCRETE):
            get = sim.get_bits if table in (Table.COIL, Table.DISCRETE) else sim.get_registers
            get_ref = ref.get_bits if table in (Table.COIL, Table.DISCRETE) else ref.get_registers
            assert get(1, table, 0, 16) == get_ref(1, table, 0, 16)


def test_schedules_are_deterministic_spaced_and_take_kinds_in_turn() -> None:
    targets = [(BOILER.name, TEMP), (BOILER.name, FLOW)]
    one = anomaly_schedule(targets, seed=3, start_t=0, end_t=3600, every_s=120)
    assert one == anomaly_schedule(targets, seed=3, start_t=0, end_t=3600, every_s=120)
    assert one != anomaly_schedule(targets, seed=4, start_t=0, end_t=3600, every_s=120)
    assert len(one) == 29
    assert [a.kind for a in one[:4]] == ["spike", "drift", "stuck", "spike"]
    assert all(b.start_t >= a.end_t + 20 for a, b in itertools.pairwise(one))
    assert all(a.start_t > 0 and a.end_t <= 3600 for a in one)
    spans = {TEMP.name: 200.0, FLOW.name: 100.0}  # demo span x scale
    assert {abs(a.magnitude) / spans[a.tag] for a in one if a.kind != "stuck"} == {0.5}
    with pytest.raises(ValueError, match="every_s 50 must exceed the longest duration 60"):
        anomaly_schedule(targets, seed=3, start_t=0, end_t=3600, every_s=50)


def test_anomalies_parse_from_a_command_line_form() -> None:
    a = parse_anomaly("boiler/temperature:spike:30:2:50", t0=1000)
    assert a == Anomaly("boiler", "temperature", AnomalyKind.SPIKE, 1030.0, 2.0, 50.0)
    assert parse_anomaly("p/flow:stuck:0:10").magnitude == 0.0
    for bad, why in [
        ("boiler:spike:1:2", "expected device/tag:kind:start_s:duration_s"),
        ("a/b:wobble:1:2", "unknown kind 'wobble'; accepted: spike, drift, stuck"),
        ("a/b:spike:soon:2", "could not convert"),
        ("a/b:spike:1:0", "duration_s 0.0: accepted: a number > 0"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_anomaly(bad)
