"""Anomalies the simulator can put on top of its waveforms: spike, drift, stuck sensor.

Importable from ``drivers.modbus.simulator`` as well (where they used to live).
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from drivers.contract import Value

from .config import ModbusTag
from .types import TYPES
from .waveforms import engineering, waveform_raw

__all__ = [
    "SCHEDULE_DURATIONS",
    "Anomaly",
    "AnomalyKind",
    "anomalous_raw",
    "anomalous_value",
    "anomaly_schedule",
    "parse_anomaly",
]


class AnomalyKind(StrEnum):
    """What a scheduled anomaly does to a tag's value while it is active."""

    SPIKE = "spike"
    """``magnitude`` (engineering units) is added; a bool tag is inverted instead."""
    DRIFT = "drift"
    """An offset growing linearly from 0 to ``magnitude`` over the duration; bools unchanged."""
    STUCK = "stuck"
    """The value at ``start_t`` is held (a frozen sensor); ``magnitude`` is unused."""


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One anomaly on one tag, active for ``start_t <= t < start_t + duration_s``."""

    device: str
    tag: str
    kind: AnomalyKind
    start_t: float
    duration_s: float
    magnitude: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise ValueError(f"anomaly duration_s {self.duration_s!r}: accepted: a number > 0")
        if not (math.isfinite(self.start_t) and math.isfinite(self.magnitude)):
            raise ValueError(f"anomaly start_t/magnitude must be finite: {self!r}")

    @property
    def end_t(self) -> float:
        return self.start_t + self.duration_s


def anomalous_raw(
    device_name: str, tag: ModbusTag, t: float, anomalies: Iterable[Anomaly]
) -> Value:
    """The raw waveform value with ``anomalies`` (all on this tag) applied."""
    raw = waveform_raw(device_name, tag, t)
    spec = TYPES[tag.type]
    for a in anomalies:
        if not a.start_t <= t < a.end_t:
            continue
        if a.kind is AnomalyKind.STUCK:
            raw = waveform_raw(device_name, tag, a.start_t)
        elif spec.is_bool:
            raw = not raw if a.kind is AnomalyKind.SPIKE else raw
        elif spec.is_string or isinstance(raw, str) or raw is None:
            continue  # text has no magnitude
        else:
            delta = a.magnitude / tag.scale  # engineering units -> raw
            if a.kind is AnomalyKind.DRIFT:
                delta *= (t - a.start_t) / a.duration_s
            # Clamped to the type, so the registers can always hold it.
            x = min(max(float(raw) + delta, spec.lo), spec.hi)
            if not spec.is_float:
                raw = int(min(max(round(x), spec.lo), spec.hi))
            elif spec.code == "f":
                raw = float(struct.unpack("f", struct.pack("f", x))[0])
            else:
                raw = x
    return raw


def anomalous_value(
    device_name: str, tag: ModbusTag, t: float, anomalies: Iterable[Anomaly]
) -> Value:
    """``waveform_value`` with the anomalies of this tag applied (the others are ignored):
    what the driver decodes from a simulator with those anomalies injected."""
    mine = [a for a in anomalies if a.device == device_name and a.tag == tag.name]
    return engineering(tag, anomalous_raw(device_name, tag, t, mine))


# Default durations of anomaly_schedule, per kind (seconds).
SCHEDULE_DURATIONS: dict[AnomalyKind, float] = {
    AnomalyKind.SPIKE: 2.0,
    AnomalyKind.DRIFT: 60.0,
    AnomalyKind.STUCK: 30.0,
}


def anomaly_schedule(
    targets: Sequence[tuple[str, ModbusTag]],
    *,
    seed: int,
    start_t: float,
    end_t: float,
    every_s: float = 120.0,
    kinds: Sequence[AnomalyKind] = tuple(AnomalyKind),
    magnitude: float = 0.5,
    durations: Mapping[AnomalyKind, float] = SCHEDULE_DURATIONS,
) -> list[Anomaly]:
    """A deterministic (by ``seed``) schedule: one anomaly every ``every_s`` seconds from
    ``start_t`` (the first after one interval) until ``end_t``, kinds taken in turn, each
    on a tag drawn from ``targets`` ((device name, tag) pairs) early in its slot, so the
    tag is normal again for a while before the next. Spikes and drifts have a random sign
    and ``magnitude`` times the tag's demo span (its waveform's range) in engineering
    units. Anomalies never overlap."""
    if not targets or not kinds:
        raise ValueError("anomaly_schedule needs at least one target and one kind")
    longest = max(durations[k] for k in kinds)
    if every_s <= longest:
        raise ValueError(f"every_s {every_s} must exceed the longest duration {longest}")
    rng = random.Random(seed)
    out: list[Anomaly] = []
    slot = start_t + every_s
    i = 0
    while slot + every_s <= end_t:
        device, tag = targets[rng.randrange(len(targets))]
        kind = kinds[i % len(kinds)]
        lo, hi = TYPES[tag.type].demo
        size = magnitude * (hi - lo) * abs(tag.scale) * rng.choice((-1.0, 1.0))
        # In the first half of what the slot leaves: the tag is normal again for a while.
        begin = slot + rng.uniform(0.0, (every_s - durations[kind]) / 2)
        out.append(Anomaly(device, tag.name, kind, begin, durations[kind], size))
        slot += every_s
        i += 1
    return out


def parse_anomaly(spec: str, t0: float = 0.0) -> Anomaly:
    """``device/tag:kind:start_s:duration_s[:magnitude]`` (start relative to ``t0``), the
    form a command-line flag takes, e.g. ``boiler/temperature:spike:30:2:50``."""
    parts = spec.split(":")
    name = parts[0].split("/")
    try:
        if len(parts) not in (4, 5) or len(name) != 2 or not all(name):
            raise ValueError("expected device/tag:kind:start_s:duration_s[:magnitude]")
        if parts[1] not in AnomalyKind.__members__.values():
            raise ValueError(f"unknown kind {parts[1]!r}; accepted: {', '.join(AnomalyKind)}")
        numbers = [float(x) for x in parts[2:]]
        return Anomaly(name[0], name[1], AnomalyKind(parts[1]), t0 + numbers[0], *numbers[1:])
    except ValueError as exc:
        raise ValueError(
            f"anomaly {spec!r}: {exc} (e.g. boiler/temperature:spike:30:2:50)"
        ) from None
