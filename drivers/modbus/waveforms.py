"""Deterministic demo values of the simulator: one waveform per tag, derived from its name."""

from __future__ import annotations

import math
import struct
import zlib

from drivers.contract import Value

from .config import ModbusTag
from .types import TYPES

__all__ = ["STATES", "waveform_raw", "waveform_value"]

STATES = ("RUN", "STOP", "IDLE", "FAULT", "SERVICE")
"""What a string tag shows in the simulator, in turn."""


def waveform_raw(device_name: str, tag: ModbusTag, t: float) -> Value:
    """The raw value (before scale/offset) of a tag's waveform at time ``t``."""
    # crc32, not hash(): the same tag gets the same waveform in every process.
    h = zlib.crc32(f"{device_name}/{tag.name}".encode())
    period = 10.0 + h % 50  # seconds
    x = (t / period + (h >> 8) % 1000 / 1000) % 1.0
    spec = TYPES[tag.type]
    if spec.is_bool:
        return x < 0.5
    if spec.is_string:
        assert tag.length is not None
        return STATES[int(x * len(STATES))][: tag.length]
    shape = (h >> 20) % 3
    u = (0.5 + 0.5 * math.sin(2 * math.pi * x), x, 1.0 if x < 0.5 else 0.0)[shape]
    lo, hi = spec.demo
    raw = lo + u * (hi - lo)
    if not spec.is_float:
        return round(raw)
    if spec.code == "f":  # what a float32 register pair can actually hold
        return float(struct.unpack("f", struct.pack("f", raw))[0])
    return raw


def engineering(tag: ModbusTag, raw: Value) -> Value:
    """raw * scale + offset, as the driver computes it (integers stay integers unscaled)."""
    if isinstance(raw, bool | str) or raw is None or (tag.scale == 1 and tag.offset == 0):
        return raw
    return raw * tag.scale + tag.offset


def waveform_value(device_name: str, tag: ModbusTag, t: float) -> Value:
    """The engineering value (after scale/offset) the simulator serves for a tag at ``t``.

    Deterministic; a sine, ramp or square wave chosen per tag, with a period of 10-59 s,
    whose raw value stays inside the type's range (strings cycle through ``STATES``).
    Equals what the driver decodes.
    """
    return engineering(tag, waveform_raw(device_name, tag, t))
