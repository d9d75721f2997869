"""Siemens S7 driver: config model, read planner and decoder; the driver is in ``.driver``.

Importing this package stays cheap (no snap7): the gateway imports every protocol's
config model when it loads a config. snap7 is imported by ``drivers.s7.driver`` and
``drivers.s7.simulator`` only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .address import Address, AddressError, parse_address
from .plan import ReadPlan, Request, compile_plan, describe_plan
from .types import Area, DataType

if TYPE_CHECKING:
    from .config import DeviceConfig, S7Tag, load_devices

PROTOCOL = "s7"

__all__ = [
    "PROTOCOL",
    "Address",
    "AddressError",
    "Area",
    "DataType",
    "DeviceConfig",
    "ReadPlan",
    "Request",
    "S7Tag",
    "compile_plan",
    "describe_plan",
    "load_devices",
    "parse_address",
]


# The config models (pydantic) are imported on first use: the daemon runs on plain
# copies of them without pydantic (gateway/plainconfig.py).
def __getattr__(name: str) -> Any:
    if name in ("DeviceConfig", "S7Tag", "load_devices"):
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
