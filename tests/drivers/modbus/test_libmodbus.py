"""The driver against a second Modbus implementation: a server on libmodbus (C), whose
unmapped registers answer exception 2. The adaptive planner must read every mapped tag
from the first cycle and settle on a plan that the server no longer refuses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivers.contract import Batch, Quality
from drivers.modbus import ModbusTcpDevice, compile_plan
from drivers.modbus.driver import Driver
from drivers.modbus.learn import learned_file

Server = Callable[..., tuple[str, int]]


def device(host: str, port: int, *tags: dict[str, Any], **kw: Any) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate(
        {
            "protocol": "modbus_tcp",
            "name": "lm",
            "host": host,
            "port": port,
            "tags": list(tags),
            **kw,
        }
    )


async def read_cycles(
    dev: ModbusTcpDevice, n: int, path: Path | None = None
) -> tuple[Any, list[Batch], list[int]]:
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


def test_holes_smaller_and_larger_than_max_gap_and_past_the_end(
    libmodbus_server: Server, tmp_path: Path
) -> None:
    host, port = libmodbus_server(size=100, holes=[(10, 12), (30, 50)])
    tags = [
        {"name": "a", "address": 8, "type": "uint32"},  # 8..9, then a 2-register hole
        {"name": "b", "address": 12},
        {"name": "c", "address": 20, "table": "input"},
        {"name": "d", "address": 28, "type": "uint16"},  # the 20-register hole > max_gap
        {"name": "e", "address": 50},
        *({"name": f"t{a}", "address": a} for a in range(60, 100)),
        {"name": "past_end", "address": 99, "type": "uint32"},  # 99..100: one too far
    ]
    dev = device(host, port, *tags, max_gap=8)
    path = learned_file(tmp_path, "lm")
    driver, batches, sent = asyncio.run(read_cycles(dev, 3, path))
    for batch in batches:
        got = {r[0].split("/", 1)[1]: r for r in batch.readings}
        assert got.pop("past_end")[3] == Quality.BAD_DEVICE
        assert {r[3] for r in got.values()} == {Quality.GOOD}
        assert got["a"][2] == (1008 << 16) | 1009 and got["b"][2] == 1012
        assert got["c"][2] == 1020 and got["t99"][2] == 1099
    assert sent[1] == sent[2] == driver.stats.plan_requests < sent[0]
    # a restart reads with what was learned: no refusal but the refused tag's own
    driver, batches, sent = asyncio.run(read_cycles(dev, 1, path))
    assert driver.stats.exceptions == {2: 1} and driver.stats.splits == 0
