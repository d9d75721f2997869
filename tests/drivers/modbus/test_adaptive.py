"""The adaptive planner against a server whose unmapped addresses answer exception 2 (or 3):
a refused request is bisected in the same cycle, every readable tag is read, the refused
addresses are isolated, remembered on disk per device, and forgotten when the device's
config changes."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.contract import Batch, Quality
from drivers.modbus import ModbusTcpDevice, Table, compile_plan, describe_plan
from drivers.modbus.driver import Driver, ModbusDriverBase
from drivers.modbus.learn import Learned, learned_file
from drivers.modbus.plan import split_request
from drivers.modbus.simulator import ModbusSimulator

GOOD = int(Quality.GOOD)
BAD_DEVICE = int(Quality.BAD_DEVICE)


def device(port: int, *tags: dict[str, Any], **kw: Any) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate(
        {
            "protocol": "modbus_tcp",
            "name": "meter",
            "host": "127.0.0.1",
            "port": port,
            "tags": list(tags),
            **kw,
        }
    )


def u16(address: int) -> dict[str, Any]:
    return {"name": f"r{address}", "address": address}


def qualities(batch: Batch) -> dict[str, int]:
    return {r[0].split("/", 1)[1]: r[3] for r in batch.readings}


async def cycles(
    sim: ModbusSimulator, dev: ModbusTcpDevice, n: int, path: Path | None = None
) -> tuple[ModbusDriverBase, list[Batch], list[int]]:
    """Read ``n`` cycles with one driver; also the requests each cycle sent."""
    driver = Driver(dev, learned_file=path)
    await driver.connect()
    plan = compile_plan(dev)
    batches, sent = [], []
    for _ in range(n):
        before = driver.stats.requests
        batches.append(await driver.read(plan))
        sent.append(driver.stats.requests - before)
    await driver.close()
    return driver, batches, sent


def run(test: Any, **sim_kw: Any) -> Any:
    async def main() -> Any:
        async with ModbusSimulator(**sim_kw) as sim:
            return await test(sim)

    return asyncio.run(main())


def test_hole_smaller_than_max_gap_is_split_in_the_first_cycle_and_avoided_after() -> None:
    """A 2-register hole bridged by the default gap fill: the first cycle already reads
    every tag (the refused request is bisected), the next cycles send two requests and
    get no exception."""

    async def test(sim: ModbusSimulator) -> Any:
        for a in range(20):
            sim.set_registers(1, Table.HOLDING, a, [a + 100]) if a not in (5, 6) else None
        dev = device(sim.port, *(u16(a) for a in range(20) if a not in (5, 6)))
        assert len(compile_plan(dev).requests) == 1  # max_gap 8 bridges the hole
        return await cycles(sim, dev, 3)

    driver, batches, sent = run(test, holes={Table.HOLDING: [(5, 7)]})
    for batch in batches:
        assert set(qualities(batch).values()) == {GOOD}, batch.error
        assert batch.ok
    values = {r[0]: r[2] for r in batches[0].readings}
    assert values["meter/r4"] == 104 and values["meter/r7"] == 107
    assert sent[1:] == [2, 2]
    # the request and its refused left half; the halves of the second split both answered
    assert driver.stats.exceptions == {2: 2} and driver.stats.splits == 2
    assert driver.stats.learned == ["holding 5..6: refused by the device, not bridged"]
    assert driver.stats.plan_requests == 2


def test_hole_larger_than_max_gap_costs_nothing() -> None:
    async def test(sim: ModbusSimulator) -> Any:
        dev = device(sim.port, u16(0), u16(1), u16(40), u16(41), max_gap=8)
        return await cycles(sim, dev, 2)

    driver, batches, sent = run(test, holes={Table.HOLDING: [(2, 40)]})
    assert all(set(qualities(b).values()) == {GOOD} for b in batches)
    assert sent == [2, 2] and driver.stats.exceptions == {}


def test_one_address_past_the_end_costs_one_tag_and_a_logarithmic_number_of_requests() -> None:
    """75 good tags and one a register past the device's last: the 75 stay good from the
    first cycle on; the bad one is isolated with about 2*log2(76) extra requests, once."""

    async def test(sim: ModbusSimulator) -> Any:
        tags = [{"name": f"v{i}", "address": 25 + i} for i in range(75)]
        tags.append({"name": "past_end", "address": 100})
        dev = device(sim.port, *tags)
        return await cycles(sim, dev, 3)

    driver, batches, sent = run(test, size=100)
    for batch in batches:
        got = qualities(batch)
        assert got.pop("past_end") == BAD_DEVICE
        assert set(got.values()) == {GOOD}
    assert sent[0] <= 1 + 2 * math.ceil(math.log2(76)), sent
    # afterwards: the 75 in one request, the refused tag alone (it stays truthfully bad)
    assert sent[1:] == [2, 2]
    assert driver.stats.learned == [
        "tag past_end (holding 100): refused by the device even alone (exception 2)"
    ]
    reason = dict((r[0], r) for r in batches[2].readings)["meter/past_end"][4]
    assert reason == "modbus exception 2 (illegal data address) reading holding 100..100"


def test_several_holes_and_exception_3_devices() -> None:
    async def test(sim: ModbusSimulator) -> Any:
        dev = device(sim.port, *(u16(a) for a in range(0, 60, 3)), max_gap=10)
        return await cycles(sim, dev, 2)

    holes = {Table.HOLDING: [(7, 9), (22, 24), (40, 41)], Table.INPUT: [(0, 5)]}
    driver, batches, sent = run(test, holes=holes, hole_exception=3)
    assert all(set(qualities(b).values()) == {GOOD} for b in batches)
    assert set(driver.stats.exceptions) == {3}
    # one request at first; each refusal was split into two more; none after
    assert sent[0] == 1 + 2 * driver.stats.exceptions[3] == 1 + 2 * driver.stats.splits
    assert batches[1].ok and sent[1] == driver.stats.plan_requests == 4


def test_on_illegal_address_fail_keeps_the_whole_request_bad() -> None:
    async def test(sim: ModbusSimulator) -> Any:
        dev = device(sim.port, u16(0), u16(3), on_illegal_address="fail")
        return await cycles(sim, dev, 2)

    driver, batches, sent = run(test, holes={Table.HOLDING: [(1, 2)]})
    assert all(set(qualities(b).values()) == {BAD_DEVICE} for b in batches)
    assert sent == [1, 1] and driver.stats.splits == 0 and driver.learned is None
    assert "set max_gap: 0" in (batches[0].error or "")


def test_learned_holes_survive_a_restart_and_a_config_change_forgets_them(
    tmp_path: Path,
) -> None:
    path = learned_file(tmp_path, "meter")

    async def test(sim: ModbusSimulator) -> Any:
        dev = device(sim.port, u16(0), u16(4), u16(8))
        first = await cycles(sim, dev, 2, path)  # a second hole shows once the first is cut
        saved = json.loads(path.read_text())
        restarted = await cycles(sim, dev, 1, path)
        changed = device(sim.port, u16(0), u16(4), u16(8), u16(9))
        after_change = await cycles(sim, changed, 1, path)
        return first, saved, restarted, after_change

    first, saved, restarted, after_change = run(test, holes={Table.HOLDING: [(2, 3), (6, 7)]})
    assert first[0].stats.exceptions  # learned by splitting
    # what lies between the tags around each hole is not bridged any more
    assert saved["device"] == "meter"
    assert saved["barriers"] == [["holding", 1, 4], ["holding", 5, 8]]
    assert all(set(qualities(b).values()) == {GOOD} for b in first[1])
    driver, batches, sent = restarted
    assert driver.stats.exceptions == {} and sent == [3]  # no splitting after a restart
    assert set(qualities(batches[0]).values()) == {GOOD}
    driver, batches, sent = after_change
    assert driver.stats.exceptions  # a new map: learned again from scratch
    assert set(qualities(batches[0]).values()) == {GOOD}


def test_plan_shows_what_was_learned(tmp_path: Path) -> None:
    dev = device(502, u16(0), u16(1), u16(4), u16(5))
    learned = Learned.load(dev, learned_file(tmp_path, "meter"))
    (req,) = compile_plan(dev).requests
    left, right, barrier = split_request(dev, req)
    assert (left.address, left.count, right.address, right.count) == (0, 2, 4, 2)
    assert barrier == (Table.HOLDING, 2, 4)
    learned.add_barrier(barrier)
    learned.save()
    again = Learned.load(dev, learned_file(tmp_path, "meter"))
    assert again.barriers == {barrier}
    plan = compile_plan(dev, again.barriers)
    assert describe_plan(plan) == ["holding 0..1 (2 regs): r0, r1", "holding 4..5 (2 regs): r4, r5"]
    assert again.lines() == ["holding 2..3: refused by the device, not bridged"]


def test_a_damaged_learned_file_is_ignored(tmp_path: Path) -> None:
    dev = device(502, u16(0))
    path = learned_file(tmp_path, "meter")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert Learned.load(dev, path).barriers == set()
    path.write_text(json.dumps({"version": 1, "fingerprint": "x", "barriers": [[1, 2]]}))
    assert Learned.load(dev, path).barriers == set()


@st.composite
def sparse_maps(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[tuple[int, int]], int]:
    """Tags of 1, 2 or 4 registers on 0..60, holes anywhere (maybe under a tag), a
    max_gap below, between or above the holes' sizes."""
    tags = []
    for i in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["uint16", "uint32", "float64"]))
        tags.append({"name": f"t{i}", "address": draw(st.integers(0, 60)), "type": kind})
    holes = []
    for _ in range(draw(st.integers(0, 4))):
        start = draw(st.integers(0, 64))
        holes.append((start, start + draw(st.integers(1, 6))))
    return tags, holes, draw(st.integers(0, 12))


def _overlaps(tag: dict[str, Any], holes: list[tuple[int, int]]) -> bool:
    n = {"uint16": 1, "uint32": 2, "float64": 4}[tag["type"]]
    a = tag["address"]
    return any(a < hi and a + n > lo for lo, hi in holes)


@settings(max_examples=40, deadline=None)
@given(sparse_maps())
def test_every_readable_tag_is_good_at_every_cycle_and_the_plan_settles(
    case: tuple[list[dict[str, Any]], list[tuple[int, int]], int],
) -> None:
    """Whatever the holes: a tag that touches none is GOOD at every cycle, from the
    first, and a tag on a hole is BAD_DEVICE. Each cycle that still meets a refusal
    learns at least one fact, so the plan settles: then the only exceptions are the
    refused tags' own reads, one each per cycle."""
    tags, holes, max_gap = case
    rounds = 2 * len(tags) + 2

    async def test(sim: ModbusSimulator) -> Any:
        dev = device(sim.port, *tags, max_gap=max_gap)
        driver = Driver(dev)
        await driver.connect()
        plan = compile_plan(dev)
        batches, refusals = [], []
        for _ in range(rounds):
            before = driver.stats.exceptions.get(2, 0)
            batches.append(await driver.read(plan))
            refusals.append(driver.stats.exceptions.get(2, 0) - before)
        await driver.close()
        return batches, refusals

    batches, refusals = run(test, size=70, holes={Table.HOLDING: holes})
    expected = {t["name"]: BAD_DEVICE if _overlaps(t, holes) else GOOD for t in tags}
    for batch in batches:
        assert qualities(batch) == expected
    refused = sum(1 for q in expected.values() if q == BAD_DEVICE)
    assert refusals[-1] == refusals[-2] == refused, refusals


def test_what_was_learned_is_written_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The learned file is written in another thread: the poll loop never waits for the
    disk (the rename is where the write lands)."""
    import drivers.modbus.learn as learn_mod

    threads: list[str] = []
    real_replace = learn_mod.os.replace

    def replace_spy(src: Any, dst: Any) -> None:
        threads.append(threading.current_thread().name)
        real_replace(src, dst)

    monkeypatch.setattr(learn_mod.os, "replace", replace_spy)
    path = learned_file(tmp_path, "meter")

    async def test(sim: ModbusSimulator) -> Any:
        _, batches, _ = await cycles(sim, device(sim.port, u16(0), u16(4)), 2, path)
        return threading.current_thread().name, batches

    loop_thread, batches = run(test, holes={Table.HOLDING: [(2, 3)]})
    assert json.loads(path.read_text())["barriers"] == [["holding", 1, 4]]  # as before
    assert threads and loop_thread not in threads, (loop_thread, threads)
    assert all(set(qualities(b).values()) == {GOOD} for b in batches)


def test_a_relearn_while_the_driver_runs_is_not_undone(tmp_path: Path) -> None:
    """`edgegw read --relearn` deletes the file while the daemon's driver runs; when the
    driver then learns more, it forgets what it knew instead of writing it back."""
    path = learned_file(tmp_path, "meter")

    async def test(sim: ModbusSimulator) -> Any:
        dev = device(sim.port, u16(0), u16(4), u16(8))
        driver = Driver(dev, learned_file=path)
        await driver.connect()
        plan = compile_plan(dev)
        try:
            first = await driver.read(plan)
            saved = json.loads(path.read_text())
            path.unlink()  # edgegw read --relearn
            sim.add_hole(Table.HOLDING, 6, 7)  # something new to learn
            second = await driver.read(plan)
            learned = driver.learned
            assert learned is not None
            after_second = path.exists(), list(driver.stats.learned), set(learned.barriers)
            third = await driver.read(plan)  # learns again, from the device only
            return first, saved, second, after_second, third, json.loads(path.read_text())
        finally:
            await driver.close()

    first, saved, second, after_second, third, again = run(test, holes={Table.HOLDING: [(2, 3)]})
    assert saved["barriers"] == [["holding", 1, 4]]
    exists, lines, barriers = after_second
    assert not exists, "the old facts were written back over the relearn"
    assert lines == [] and barriers == set()  # forgotten in memory too
    for batch in (first, second, third):
        assert set(qualities(batch).values()) == {GOOD}
    assert again["barriers"] == [["holding", 1, 4]]  # learned anew (the 2nd hole next)
