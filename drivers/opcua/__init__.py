"""OPC UA driver: config models, read plan, asyncua client wrapper, driver and simulator.

Importing this package is cheap: it holds only the pure modules (``config``,
``connection``, ``nodeid``, ``plan``, ``types``); asyncua (~36 MiB) and cryptography are
imported by the others (``driver``, ``client``, ``simulator``...), i.e. when a driver
is built.
The registry's interface (see the end of ``drivers/contract.py``):

- ``PROTOCOL``: the config's ``protocol:`` value;
- ``DeviceConfig``: the pydantic device model;
- ``compile_plan(device)`` / ``describe_plan(plan)``;
- ``drivers.opcua.driver.Driver(device, pki_dir=...)``.
"""

from .config import (
    Connection,
    Deadband,
    DeadbandType,
    Mode,
    OpcuaDevice,
    OpcuaTag,
    SecurityMode,
    SecurityPolicy,
    load_device_map,
    resolve_paths,
)
from .nodeid import BrowsePath, ExplicitNode, NodeSyntaxError, parse_node
from .plan import OpcuaPlan, TagPlan, compile_plan, describe_plan

PROTOCOL = "opcua"
DeviceConfig = OpcuaDevice

__all__ = [
    "PROTOCOL",
    "BrowsePath",
    "Connection",
    "Deadband",
    "DeadbandType",
    "DeviceConfig",
    "ExplicitNode",
    "Mode",
    "NodeSyntaxError",
    "OpcuaDevice",
    "OpcuaPlan",
    "OpcuaTag",
    "SecurityMode",
    "SecurityPolicy",
    "TagPlan",
    "compile_plan",
    "describe_plan",
    "load_device_map",
    "parse_node",
    "resolve_paths",
]
