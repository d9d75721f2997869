"""Protocol name → how to build its driver and read plan. The only place that knows
every driver; heavy driver imports happen here, only for protocols a config uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drivers.contract import Driver


@dataclass(frozen=True, slots=True)
class DeviceRuntime:
    driver: Driver
    plan: Any
    tag_names: list[str]
    interval_s: float
    plan_lines: list[str]


def build_device(dev: Any) -> DeviceRuntime:
    if dev.protocol == "modbus_tcp":
        from drivers.modbus import ModbusTcpDriver, compile_plan, describe_plan

        plan = compile_plan(dev)
        return DeviceRuntime(
            ModbusTcpDriver(dev),
            plan,
            list(plan.tag_names),
            dev.poll_interval_ms / 1000,
            describe_plan(plan),
        )
    raise ValueError(f"no driver for protocol {dev.protocol!r}")


def describe_device(dev: Any) -> list[str]:
    """The compiled read plan, without connecting."""
    if dev.protocol == "modbus_tcp":
        from drivers.modbus import compile_plan, describe_plan

        return describe_plan(compile_plan(dev))
    raise ValueError(f"no driver for protocol {dev.protocol!r}")
