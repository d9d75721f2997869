"""`edgegw simulate`: serve simulated devices for a config (demo, benchmarks, trying a
device map before the PLC is wired)."""

from __future__ import annotations

import asyncio
import signal
import sys

from .config import Config


def simulate(cfg: Config, update_interval_s: float = 0.1) -> int:
    from drivers.modbus.simulator import serve_devices

    from .daemon import run_async

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        ports = sorted({(d.host, d.port) for d in cfg.devices})
        print(
            "simulating " + ", ".join(f"[{h}]:{p}" for h, p in ports), file=sys.stderr, flush=True
        )
        await serve_devices(list(cfg.devices), stop, interval_s=update_interval_s)

    run_async(main())
    return 0
