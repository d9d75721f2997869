"""Modbus drivers (TCP, RTU on a serial port, RTU over TCP): config models, read planner,
decoder and drivers.

The simulator (``drivers.modbus.simulator``) is not imported here: it pulls in
pymodbus's server, which the daemon does not need. Nor is the driver module: importing
this package must stay cheap (``drivers/contract.py``); the gateway imports
``drivers.modbus.driver`` when a config uses Modbus.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .decode import DecodeError, decode_value, encode_value
from .learn import Learned, learned_file
from .links import check_shared_links
from .plan import ReadPlan, Request, compile_plan, describe_plan, summarize_plan
from .types import DataType, Order, Parity, Table

if TYPE_CHECKING:
    from .config import (
        ModbusDevice,
        ModbusRtuDevice,
        ModbusRtuTcpDevice,
        ModbusTag,
        ModbusTcpDevice,
        load_device_map,
    )
    from .driver import ModbusTcpDriver
    from .rtu import ModbusRtuDriver

PROTOCOL = "modbus_tcp"
PROTOCOLS = ("modbus_tcp", "modbus_rtu", "modbus_rtu_tcp")

__all__ = [
    "DEVICE_CONFIGS",
    "PROTOCOL",
    "PROTOCOLS",
    "DataType",
    "DecodeError",
    "DeviceConfig",
    "Learned",
    "ModbusDevice",
    "ModbusRtuDevice",
    "ModbusRtuDriver",
    "ModbusRtuTcpDevice",
    "ModbusTag",
    "ModbusTcpDevice",
    "ModbusTcpDriver",
    "Order",
    "Parity",
    "ReadPlan",
    "Request",
    "Table",
    "check_shared_links",
    "compile_plan",
    "decode_value",
    "describe_plan",
    "encode_value",
    "learned_file",
    "learned_plan",
    "load_device_map",
    "summarize_plan",
]


def learned_plan(device: ModbusDevice, state_dir: Path) -> tuple[ReadPlan, list[str]]:
    """The plan the driver reads after what it learned about the device's map (kept in
    ``state_dir``), and what it learned as lines; for ``edgegw validate``."""
    learned = Learned.load(device, learned_file(state_dir, device.name), read_only=True)
    return compile_plan(device, learned.barriers), learned.lines()


# The config models (pydantic) are imported on first use: the daemon runs on plain
# copies of them without pydantic (gateway/plainconfig.py).
_CONFIG = {"ModbusDevice", "ModbusRtuDevice", "ModbusRtuTcpDevice", "ModbusTag", "ModbusTcpDevice"}


def __getattr__(name: str) -> Any:
    if name in _CONFIG or name == "load_device_map":
        from . import config

        return getattr(config, name)
    if name == "DeviceConfig":
        from .config import ModbusTcpDevice

        return ModbusTcpDevice
    if name == "DEVICE_CONFIGS":
        from .config import ModbusRtuDevice, ModbusRtuTcpDevice, ModbusTcpDevice

        return (ModbusTcpDevice, ModbusRtuDevice, ModbusRtuTcpDevice)
    # The drivers import pymodbus's client: only when asked for.
    if name == "ModbusTcpDriver":
        from .driver import ModbusTcpDriver

        return ModbusTcpDriver
    if name == "ModbusRtuDriver":
        from .rtu import ModbusRtuDriver

        return ModbusRtuDriver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
