"""`edgegw simulate`: serve simulated devices for a config's devices, every protocol
(demo, benchmarks, trying a device map before the PLC is wired)."""

from __future__ import annotations

import asyncio
import importlib
import signal
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from .config import Config
from .registry import PACKAGES


async def serve_all(
    devices: Sequence[Any],
    stop: asyncio.Event,
    *,
    interval_s: float = 0.1,
    anomalies: Iterable[Any] = (),
) -> None:
    """Each protocol's own simulator for its devices, side by side, until ``stop``."""
    by_pkg: dict[str, list[Any]] = {}
    for d in devices:  # one simulator module per package (Modbus TCP, RTU, RTU over TCP)
        by_pkg.setdefault(PACKAGES[d.protocol], []).append(d)
    runs = []
    for pkg, group in by_pkg.items():
        sim = importlib.import_module(pkg + ".simulator")
        kwargs: dict[str, Any] = {"interval_s": interval_s}
        if pkg == "drivers.modbus":
            kwargs["anomalies"] = anomalies
        runs.append(sim.serve_devices(group, stop, **kwargs))
    await asyncio.gather(*runs)


def _where(d: Any) -> str:
    """A device's address: host, endpoint or serial port."""
    return str(getattr(d, "host", None) or getattr(d, "endpoint", None) or getattr(d, "port", ""))


def simulate(cfg: Config, update_interval_s: float = 0.1) -> int:
    from .daemon import run_async

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        where = sorted({f"{d.protocol} {_where(d)}" for d in cfg.devices})
        print("simulating " + ", ".join(where), file=sys.stderr, flush=True)
        await serve_all(list(cfg.devices), stop, interval_s=update_interval_s)

    run_async(main())
    return 0
