"""Shared fixtures: a real snap7 server (the simulator) on a free 127.0.0.1 port."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from drivers.contract import Batch
from drivers.s7 import DeviceConfig
from drivers.s7.simulator import S7Simulator


@pytest.fixture
def sim() -> Iterator[S7Simulator]:
    """DB1 (256 bytes), DB2 (64), DB3 (600) and M, I, Q (1024 each); stopped after."""
    with S7Simulator(dbs={1: 256, 2: 64, 3: 600}) as s:
        yield s


def device(port: int, *tags: dict[str, Any], host: str = "127.0.0.1", **kw: Any) -> DeviceConfig:
    return DeviceConfig.model_validate(
        {"protocol": "s7", "name": "plc", "host": host, "port": port, "tags": list(tags), **kw}
    )


def by_tag(batch: Batch) -> dict[str, tuple[Any, ...]]:
    """Readings keyed by the short tag name; each tag must appear once."""
    out = {r[0].split("/", 1)[1]: r for r in batch.readings}
    assert len(out) == len(batch.readings), "a tag was reported twice"
    return out


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def closed_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])  # nothing listens once closed
