"""Readings as the gateway hands them to the engine, from the Modbus simulator's own
waveforms (plus injected anomalies), in-process: no server, no network.

Each demo device is polled at its demo interval with a random phase; a reading's
timestamp is the poll time plus a little latency, and its value is what the simulator
served then (it refreshes its registers every 100 ms, so values are up to 100 ms old).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from drivers.modbus.config import ModbusTag
from drivers.modbus.simulator import Anomaly, anomalous_value
from inference.window import Reading

# (device, poll interval s) as in gateway/demo.py
POLL_S = {"boiler": 0.1, "pump": 0.2, "meter": 0.5}
SIM_REFRESH_S = 0.1


def demo_batches(
    tags: Sequence[tuple[str, ModbusTag]],
    start_t: float,
    seconds: float,
    anomalies: Sequence[Anomaly] = (),
    *,
    seed: int = 0,
) -> list[list[Reading]]:
    """One batch per poll of each device, all devices merged in time order."""
    rng = random.Random(seed)
    sim_phase = rng.uniform(0, SIM_REFRESH_S)
    by_device: dict[str, list[ModbusTag]] = {}
    for device, tag in tags:
        by_device.setdefault(device, []).append(tag)
    polls: list[tuple[float, str]] = []
    for device in by_device:
        every = POLL_S[device]
        t = start_t + rng.uniform(0, every)
        while t < start_t + seconds:
            polls.append((t + rng.uniform(0.0005, 0.003), device))  # response latency
            t += every
    polls.sort()
    mine = {
        (d, t.name): [a for a in anomalies if (a.device, a.tag) == (d, t.name)] for d, t in tags
    }
    batches = []
    for t, device in polls:
        served_t = sim_phase + (t - sim_phase) // SIM_REFRESH_S * SIM_REFRESH_S
        ts = int(t * 1e9)
        batches.append(
            [
                (
                    f"{device}/{tag.name}",
                    ts,
                    anomalous_value(device, tag, served_t, mine[device, tag.name]),
                    0,
                )
                for tag in by_device[device]
            ]
            + [(f"{device}/unbound", ts, 1.0, 0)]
        )  # a tag no model reads
    return batches
