"""OPC UA driver: config models, read plan, asyncua client wrapper, driver and simulator.

Importing this package is cheap: it holds only the pure modules (``config``,
``connection``, ``nodeid``, ``plan``, ``types``); asyncua (~36 MiB) and cryptography are
imported by the others (``driver``, ``client``, ``simulator``...), i.e. when a driver
is built.
The registry's interface (see the end of ``drivers/contract.py``):

- ``PROTOCOL``: the config's ``protocol:`` value;
- ``DeviceConfig``: the pydantic device model;
- ``compile_plan(device)`` / ``describe_plan(plan)``;
- ``drivers.opcua.driver.Driver(device, pki_dir=...)``;
- ``certificate_files(device, pki_dir)``: the certificates the device's link uses, for
  their expiry (metrics).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .nodeid import BrowsePath, ExplicitNode, NodeSyntaxError, parse_node
from .plan import OpcuaPlan, TagPlan, compile_plan, describe_plan
from .types import DeadbandType, Mode, SecurityMode, SecurityPolicy

if TYPE_CHECKING:
    from .config import Connection, Deadband, OpcuaDevice, OpcuaTag, load_device_map, resolve_paths

PROTOCOL = "opcua"

CLIENT_CERTIFICATE = Path("own", "cert.der")
"""This gateway's client certificate for a device, under its ``pki_dir`` (``pki.py``)."""


def certificate_files(device: OpcuaDevice, pki_dir: Path) -> dict[str, Path]:
    """The certificates the device's link uses, by name: the client certificate the
    gateway generated (or was given) in ``pki_dir``, and the pinned ``server_certificate``
    when the config names one. Files that do not exist yet are listed too."""
    files = {"client_certificate": pki_dir / CLIENT_CERTIFICATE}
    if device.server_certificate is not None:
        files["server_certificate"] = device.server_certificate
    return files


__all__ = [
    "CLIENT_CERTIFICATE",
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
    "certificate_files",
    "compile_plan",
    "describe_plan",
    "load_device_map",
    "parse_node",
    "resolve_paths",
]

# The config models (pydantic) are imported on first use: the daemon runs on plain
# copies of them without pydantic (gateway/plainconfig.py).
_CONFIG = {"Connection", "Deadband", "OpcuaDevice", "OpcuaTag", "load_device_map", "resolve_paths"}


def __getattr__(name: str) -> Any:
    if name in _CONFIG or name == "DeviceConfig":
        from . import config

        return getattr(config, "OpcuaDevice" if name == "DeviceConfig" else name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
