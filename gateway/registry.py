"""Protocol name → its driver package. The only place that knows every protocol;
each package follows the convention at the end of drivers/contract.py, and its driver
module (which imports the protocol library) is imported only for protocols a config
uses."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from drivers.contract import Driver, Subscriber

PACKAGES = {
    "modbus_tcp": "drivers.modbus",
    "modbus_rtu": "drivers.modbus",
    "modbus_rtu_tcp": "drivers.modbus",
    "opcua": "drivers.opcua",
    "s7": "drivers.s7",
}


@dataclass(frozen=True, slots=True)
class DeviceRuntime:
    driver: Driver
    plan: Any
    tag_names: list[str]
    interval_s: float
    subscribe: bool
    """Run through ``Subscriber.subscribe`` (data changes pushed) rather than polling."""


def _package(protocol: str) -> ModuleType:
    try:
        return importlib.import_module(PACKAGES[protocol])
    except KeyError:
        raise ValueError(f"no driver for protocol {protocol!r}") from None


def build_device(dev: Any, state_dir: Path) -> DeviceRuntime:
    pkg = _package(dev.protocol)
    plan = pkg.compile_plan(dev)
    cls = importlib.import_module(pkg.__name__ + ".driver").Driver
    # OPC UA keeps its client certificate and trust list per device
    extra = {"pki_dir": state_dir / "pki" / dev.name} if dev.protocol == "opcua" else {}
    driver = cls(dev, **extra)
    return DeviceRuntime(
        driver,
        plan,
        list(plan.tag_names),
        dev.poll_interval_ms / 1000,
        isinstance(driver, Subscriber),
    )


def describe_device(dev: Any) -> list[str]:
    """The compiled read plan, without connecting."""
    pkg = _package(dev.protocol)
    lines: list[str] = pkg.describe_plan(pkg.compile_plan(dev))
    return lines


def summarize_device(dev: Any) -> str | None:
    """One line on what the plan saves (e.g. requests merged), if the protocol says."""
    pkg = _package(dev.protocol)
    summarize = getattr(pkg, "summarize_plan", None)
    return summarize(pkg.compile_plan(dev)) if summarize else None
