"""What the simulator serves: deterministic values per type, its users, and small helpers
(kept apart so ``simulator.py`` stays about the server)."""

from __future__ import annotations

import ipaddress
import math
import socket
import uuid
import zlib
from datetime import UTC, datetime
from typing import Any

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole

__all__ = [
    "SimUsers",
    "child",
    "ensure_namespace",
    "free_port",
    "is_loopback",
    "values",
    "waveform",
]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def waveform(type_name: str, key: str, t: float) -> Any:
    """Deterministic value of a variable at time ``t``: sine, ramp or square per node."""
    h = zlib.crc32(key.encode())  # not hash(): the same node waves alike in every process
    x = (t / (10.0 + h % 50) + (h >> 8) % 1000 / 1000) % 1.0
    u = (0.5 + 0.5 * math.sin(2 * math.pi * x), x, 1.0 if x < 0.5 else 0.0)[(h >> 20) % 3]
    n = int(u * 100)
    if type_name == "Boolean":
        return x < 0.5
    if type_name in ("SByte", "Int16", "Int32", "Int64"):
        return n - 50
    if type_name in ("Byte", "UInt16", "UInt32", "UInt64"):
        return n
    if type_name in ("Float", "Double"):
        return 20.0 + 10.0 * u if type_name == "Double" else float(round(u * 64) / 4)
    if type_name == "DateTime":
        return datetime.fromtimestamp(int(t), UTC)
    values: dict[str, Any] = {
        "String": f"state {n}",
        "Guid": uuid.UUID(int=n),
        "ByteString": bytes([n, 255 - n]),
        "NodeId": ua.NodeId(n, 2),
        "ExpandedNodeId": ua.ExpandedNodeId(n, 2),
        "StatusCode": ua.StatusCode(ua.StatusCodes.Good if n % 2 else ua.StatusCodes.BadNoData),
        "QualifiedName": ua.QualifiedName(f"q{n}", 2),
        "LocalizedText": ua.LocalizedText(f"text {n}", "en"),
    }
    return values[type_name]


def values(type_name: str, key: str, t: float, length: int) -> Any:
    if not length:
        return waveform(type_name, key, t)
    return [waveform(type_name, f"{key}[{k}]", t) for k in range(length)]


class SimUsers:
    """asyncua user manager: anonymous (if allowed) or a known user with its password."""

    def __init__(self, users: dict[str, str], allow_anonymous: bool) -> None:
        self.users, self.allow_anonymous = users, allow_anonymous

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:  # fmt: skip
        if username is None:
            return User(role=UserRole.User) if self.allow_anonymous else None
        if self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


async def ensure_namespace(server: Server, index: int) -> None:
    """Make namespace ``index`` exist (browse paths and ns=<n> may name any index)."""
    while len(await server.get_namespace_array()) <= index:
        n = len(await server.get_namespace_array())
        await server.register_namespace(f"urn:edgegw:simulator:ns{n}")


async def child(parent: Any, qname: ua.QualifiedName) -> Any:
    for child in await parent.get_children():
        if await child.read_browse_name() == qname:
            return child
    return None


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
