"""Ad-hoc targets for the command line tools (``edgegw read``, ``edgegw scan``):
``modbus-tcp://[::1]:5020``, ``modbus-rtu-tcp://10.0.0.9:4001``,
``modbus-rtu:///dev/ttyUSB0?baudrate=9600&parity=N`` (or a bare ``/dev/ttyUSB0``).
They become the same device config a map would give, so the same checks apply."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

__all__ = ["SCHEMES", "TARGET_FORMS", "parse_target"]

SCHEMES = {
    "modbus-tcp": "modbus_tcp",
    "modbus-rtu-tcp": "modbus_rtu_tcp",
    "modbus-rtu": "modbus_rtu",
}
TARGET_FORMS = (
    "modbus-tcp://HOST[:PORT], modbus-rtu-tcp://HOST[:PORT], "
    "modbus-rtu:///dev/ttyUSB0[?baudrate=9600&parity=N&stopbits=1&bytesize=8] "
    "(IPv6 hosts in brackets: modbus-tcp://[::1]:5020)"
)
_SERIAL = ("baudrate", "parity", "stopbits", "bytesize")


def parse_target(text: str) -> dict[str, Any]:
    """Device fields (protocol, host/port or serial port and line settings) of a target;
    ValueError quotes it and lists the accepted forms."""
    if text.startswith("/"):
        text = "modbus-rtu://" + text
    parts = urlsplit(text)
    protocol = SCHEMES.get(parts.scheme)
    if protocol is None or "://" not in text:
        raise ValueError(f"target {text!r} is not understood; accepted: {TARGET_FORMS}")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if protocol == "modbus_rtu":
        if parts.netloc or not parts.path:
            raise ValueError(
                f"target {text!r}: a serial port is a path after three slashes, e.g. "
                "modbus-rtu:///dev/ttyUSB0"
            )
        unknown = set(query) - set(_SERIAL)
        if unknown:
            raise ValueError(
                f"target {text!r}: unknown setting {sorted(unknown)[0]!r}; accepted: "
                + ", ".join(_SERIAL)
            )
        return {"protocol": protocol, "port": parts.path, **query}
    if query or parts.path not in ("", "/"):
        raise ValueError(f"target {text!r}: nothing may follow host:port; accepted: {TARGET_FORMS}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise ValueError(f"target {text!r}: the port is not a number 1..65535") from None
    if not host:
        raise ValueError(f"target {text!r} has no host; accepted: {TARGET_FORMS}")
    return {"protocol": protocol, "host": host, **({"port": port} if port else {})}
