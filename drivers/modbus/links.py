"""Which Modbus devices share a link (a serial port, an RTU-over-TCP server) and whether
their settings agree. Pure: devices are read by attribute, any protocol may be passed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["check_shared_links", "link_key"]

_SERIAL_FIELDS = ("baudrate", "parity", "stopbits", "bytesize")


def link_key(device: Any) -> str | None:
    """What devices share one link (and its lock): ``serial:/dev/ttyUSB0``,
    ``rtu-tcp:host:port``; None for Modbus TCP (one connection per device)."""
    if device.protocol == "modbus_rtu":
        return f"serial:{device.port}"
    if device.protocol == "modbus_rtu_tcp":
        return f"rtu-tcp:{device.host}:{device.port}"
    return None


def check_shared_links(devices: Sequence[Any]) -> list[tuple[int, str, str]]:
    """Devices sharing a serial port must agree on its line settings. Returns
    ``(device index, field, message)`` for each device that does not; other protocols'
    devices are skipped, so a gateway can pass all its devices."""
    first: dict[str, tuple[int, Any]] = {}
    problems = []
    for i, dev in enumerate(devices):
        if getattr(dev, "protocol", None) != "modbus_rtu":
            continue
        seen = first.setdefault(dev.port, (i, dev))
        j, other = seen
        for field in _SERIAL_FIELDS if j != i else ():
            mine, theirs = getattr(dev, field), getattr(other, field)
            if mine != theirs:
                problems.append(
                    (
                        i,
                        field,
                        f"{field} {getattr(mine, 'value', mine)!r} differs from device "
                        f"{other.name!r} on the same port {dev.port} "
                        f"({getattr(theirs, 'value', theirs)!r}); devices on one bus share "
                        f"its line settings ({other.line})",
                    )
                )
                break
    return problems
