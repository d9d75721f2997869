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


def pki_dir(dev: Any, state_dir: Path) -> Path:
    """Where a device's driver keeps its certificates (OPC UA: client certificate, trust
    list)."""
    return state_dir / "pki" / dev.name


def certificate_files(dev: Any, state_dir: Path) -> dict[str, Path]:
    """The certificates a device's link uses, by name (for their expiry), where its
    package says (``certificate_files``: OPC UA)."""
    files = getattr(_package(dev.protocol), "certificate_files", None)
    return {} if files is None else dict(files(dev, pki_dir(dev, state_dir)))


def build_device(dev: Any, state_dir: Path | None, *, read_only: bool = False) -> DeviceRuntime:
    """The driver and compiled plan of ``dev``. ``state_dir``: where drivers keep what they
    learn about a device (None: nowhere); ``read_only``: load it but never write (tools)."""
    pkg = _package(dev.protocol)
    plan = pkg.compile_plan(dev)
    cls = importlib.import_module(pkg.__name__ + ".driver").Driver
    extra: dict[str, Any] = {}
    if dev.protocol == "opcua" and state_dir is not None:
        # OPC UA keeps its client certificate and trust list per device
        extra["pki_dir"] = pki_dir(dev, state_dir)
    learned = getattr(pkg, "learned_file", None)
    if learned is not None and state_dir is not None:
        extra["learned_file"] = learned(state_dir, dev.name)
        extra["read_only"] = read_only
    driver = cls(dev, **extra)
    return DeviceRuntime(
        driver,
        plan,
        list(plan.tag_names),
        dev.poll_interval_ms / 1000,
        isinstance(driver, Subscriber),
    )


def _plan(dev: Any, state_dir: Path | None) -> tuple[Any, Any, list[str]]:
    """The package, the plan the driver would read (with what it learned about the
    device, when the protocol learns) and the learned facts as lines."""
    pkg = _package(dev.protocol)
    learned_plan = getattr(pkg, "learned_plan", None)
    if learned_plan is not None and state_dir is not None:
        plan, notes = learned_plan(dev, state_dir)
        return pkg, plan, notes
    return pkg, pkg.compile_plan(dev), []


def describe_device(dev: Any, state_dir: Path | None = None) -> list[str]:
    """The compiled read plan, without connecting; with ``state_dir``, as adapted to what
    the driver learned about the device, followed by ``learned: ...`` lines."""
    pkg, plan, notes = _plan(dev, state_dir)
    lines: list[str] = pkg.describe_plan(plan)
    return lines + [f"learned: {n}" for n in notes]


def summarize_device(dev: Any, state_dir: Path | None = None) -> str | None:
    """One line on what the plan saves (e.g. requests merged), if the protocol says."""
    pkg, plan, _ = _plan(dev, state_dir)
    summarize = getattr(pkg, "summarize_plan", None)
    return summarize(plan) if summarize else None


def forget_learned(dev: Any, state_dir: Path) -> bool:
    """Delete what the driver learned about ``dev`` (``edgegw read --relearn``); True if
    there was something."""
    learned = getattr(_package(dev.protocol), "learned_file", None)
    if learned is None:
        return False
    path: Path = learned(state_dir, dev.name)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
