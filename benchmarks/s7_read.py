"""S7 read throughput and driver CPU per point.

The simulator (snap7's pure-Python server) runs in a child process so that the CPU
measured here is the driver's alone: the event loop, the per-connection worker thread,
snap7's ISO-on-TCP transport, and the plan's precompiled decoding. Scenarios:

1. one connection reading 200 REAL tags (800 bytes of one DB: 2 requests at PDU 480);
2. ``--connections`` connections (one simulated PLC each) doing the same concurrently;
3. decoding only: one 460-byte range into 115 readings, no I/O.

Bounded: about ``--seconds`` (default 4) per scenario, under 30 s in all. Prints figures,
then one JSON line. Usage: ``python benchmarks/s7_read.py [--seconds 4] [--connections 4]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import resource
import struct
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

from drivers.s7 import DeviceConfig, compile_plan
from drivers.s7.driver import Driver

TAGS = 200
VALUE = 21.5


def _use_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    uvloop.install()
    return "uvloop"


def _serve(count: int, pipe: Connection) -> None:
    """Child process: ``count`` simulators with REAL data in DB1, until killed."""
    from drivers.s7.simulator import S7Simulator

    sims = [S7Simulator(dbs={1: 4 * TAGS}) for _ in range(count)]
    for sim in sims:
        sim.set_bytes("DB", 0, struct.pack(f">{TAGS}f", *[VALUE] * TAGS), db=1)
        sim.start()
    pipe.send([sim.port for sim in sims])
    time.sleep(3600)


def _device(port: int, n: int) -> DeviceConfig:
    tags = [{"name": f"f{i}", "address": f"DB1.DBD{4 * i}", "type": "REAL"} for i in range(TAGS)]
    return DeviceConfig.model_validate(
        {"protocol": "s7", "name": f"bench{n}", "host": "127.0.0.1", "port": port, "tags": tags}
    )


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _poll(ports: list[int], seconds: float) -> dict[str, float]:
    devices = [_device(port, n) for n, port in enumerate(ports)]
    plans = [compile_plan(d) for d in devices]
    drivers = [Driver(d) for d in devices]
    await asyncio.gather(*(d.connect() for d in drivers))
    for driver, plan in zip(drivers, plans, strict=True):  # warm up, and check the values
        batch = await driver.read(plan)
        assert batch.ok and batch.readings[0][2] == VALUE, batch.error
    reads = 0
    deadline = time.monotonic() + seconds

    async def loop(driver: Driver, plan: Any) -> None:
        nonlocal reads
        while time.monotonic() < deadline:
            batch = await driver.read(plan)
            if not batch.ok:
                raise RuntimeError(batch.error)
            reads += 1

    cpu0, t0 = _cpu(), time.perf_counter()
    await asyncio.gather(*(loop(d, p) for d, p in zip(drivers, plans, strict=True)))
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    await asyncio.gather(*(d.close() for d in drivers))
    requests = reads * len(plans[0].requests)
    points = reads * TAGS
    return {
        "connections": len(ports),
        "requests_per_cycle": len(plans[0].requests),
        "cycles_per_s": reads / wall,
        "requests_per_s": requests / wall,
        "points_per_s": points / wall,
        "cpu_us_per_request": cpu / requests * 1e6,
        "cpu_us_per_point": cpu / points * 1e6,
        "cpu_share": cpu / wall,
    }


def _decode_only(seconds: float) -> dict[str, float]:
    plan = compile_plan(_device(102, 0))
    r = plan.ranges[0]
    data = struct.pack(f">{r.size // 4}f", *[VALUE] * (r.size // 4))
    decode = r.decoder.decode
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() < t0 + seconds:
        for _ in range(1000):
            decode(data, 0, 0)
        n += 1000
    cpu = time.process_time() - c0
    points = len(r.tags)
    return {
        "points_per_range": points,
        "cpu_us_per_range": cpu / n * 1e6,
        "cpu_us_per_point": cpu / n / points * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per scenario (default 4)")
    parser.add_argument("--connections", type=int, default=4, help="for scenario 2 (default 4)")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(args.connections, child), daemon=True)
    server.start()
    try:
        if not parent.poll(20):
            raise RuntimeError("simulator did not start")
        ports = parent.recv()
        loop_name = _use_uvloop()
        one = asyncio.run(_poll(ports[:1], args.seconds))
        many = asyncio.run(_poll(ports, args.seconds))
    finally:
        server.kill()
        server.join(5)
    decode = _decode_only(min(args.seconds, 2.0))

    print(
        f"S7 read, {loop_name}, {TAGS} REAL tags = {one['requests_per_cycle']:.0f} requests "
        "per cycle at PDU 480; snap7 simulator in a child process"
    )
    for r in (one, many):
        print(
            f"  {r['connections']:>2} connection(s): {r['cycles_per_s']:7.0f} cycles/s  "
            f"{r['requests_per_s']:7.0f} req/s  {r['points_per_s']:9.0f} points/s  "
            f"driver CPU {r['cpu_us_per_request']:6.1f} us/request = "
            f"{r['cpu_us_per_point']:5.2f} us/point ({r['cpu_share']:.0%} of a core)"
        )
    print(
        f"  decode only: {decode['cpu_us_per_range']:.2f} us per "
        f"{decode['points_per_range']:.0f}-point range = {decode['cpu_us_per_point']:.3f} us/point"
    )
    result = {
        "bench": "s7_read",
        "loop": loop_name,
        "python": sys.version.split()[0],
        "tags": TAGS,
        "one_connection": one,
        "many_connections": many,
        "decode_only": decode,
    }
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
