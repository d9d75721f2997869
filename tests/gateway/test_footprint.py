"""What keeps the daemon small and its fixed costs low gives the same results as what it
replaced: the status snapshot's ``plain`` equals ``dataclasses.asdict``; tag names are one
string object per tag across the plan, its decoders and the driver; the collector is
tuned once start-up is done."""

from __future__ import annotations

import gc
from dataclasses import asdict
from pathlib import Path

from buffer.model import OutboxStats
from drivers.modbus import compile_plan
from drivers.modbus.config import ModbusTcpDevice
from drivers.modbus.driver import LinkStats, ModbusTcpDriver
from gateway.daemon import GC_GEN0_THRESHOLD, freeze_startup_objects
from gateway.forwarder import ForwarderStats
from gateway.pipeline import PipelineStats
from gateway.poller import DeviceState
from gateway.status import plain


def test_plain_is_asdict_without_sharing_anything_mutable() -> None:
    link = LinkStats(requests=7, exceptions={2: 3, 6: 1}, learned=["holding 10..11 refused"])
    state = DeviceState("plc", up=True, last_error="timeout", driver=link)
    state.latency.observe(0.004)
    stats = (PipelineStats(points_polled=5), ForwarderStats(), OutboxStats(3, 4, 1, 3, 9))
    for obj in (state, *stats):
        assert plain(obj) == asdict(obj)
    snap = plain(state)
    link.exceptions[2] += 1
    link.learned.append("more")
    state.latency.observe(1.0)
    assert snap["driver"]["exceptions"] == {2: 3, 6: 1}  # a copy, not the live counters
    assert snap["driver"]["learned"] == ["holding 10..11 refused"]
    assert snap["latency"]["count"] == 1 and sum(snap["latency"]["counts"]) == 1


def test_a_tag_name_is_one_string_in_plan_decoders_and_driver(tmp_path: Path) -> None:
    dev = ModbusTcpDevice.model_validate(
        {
            "name": "boiler",
            "protocol": "modbus_tcp",
            "host": "127.0.0.1",
            "tags": [{"name": f"t{i}", "address": 2 * i, "type": "float32"} for i in range(200)],
        }
    )
    plan, again = compile_plan(dev), compile_plan(dev)
    driver = ModbusTcpDriver(dev)
    names = [n for r in plan.requests for g in r.decoder.groups for n in g.names]  # type: ignore[union-attr]
    assert sorted(names) == sorted(plan.tag_names)
    by_text = {n: n for n in plan.tag_names}
    assert all(by_text[n] is n for n in names)
    assert all(a is b for a, b in zip(plan.tag_names, again.tag_names, strict=True))
    assert all(a is b for a, b in zip(plan.tag_names, driver._tag_names, strict=True))


def test_start_up_objects_are_frozen_and_young_collections_rarer() -> None:
    before = gc.get_threshold()
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
