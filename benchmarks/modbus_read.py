"""Modbus read throughput and driver CPU per point.

The simulators (pymodbus's servers) run in a child process so that the CPU measured
here is the driver's alone: pymodbus's client plus our planner-compiled decoding.
Scenarios:

1. one connection reading a plan of 4 requests x 124 registers (62 float32 each);
2. 10 connections (10 unit ids on one server) doing the same concurrently;
3. 10 units behind one RTU-over-TCP link (one connection, one lock: requests in turn);
4. decoding only: a 124-register response into 62 readings, no I/O; and a mixed
   response (float32 CDAB, int16 scaled, a string, 16 bits of a register).

Bounded: about 4 s per I/O scenario (``--seconds``). Prints figures, then one JSON line.
Usage: ``python benchmarks/modbus_read.py [--seconds 4] [--connections 10]``
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

from drivers.modbus import Table, compile_plan
from drivers.modbus.config import validate_device
from drivers.modbus.driver import Driver

TAGS_PER_REQUEST = 62  # 124 registers: the most float32 values one 125-register read holds
REQUESTS = 4


def _use_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    uvloop.install()
    return "uvloop"


def _serve(units: int, pipe: Connection) -> None:
    """Child process: a simulator with float32 data for every unit id, until killed."""
    from drivers.modbus.simulator import ModbusSimulator

    _use_uvloop()

    async def main() -> None:
        size = 2 * TAGS_PER_REQUEST * REQUESTS
        sims = [
            ModbusSimulator(unit_ids=range(1, units + 1), size=size, framer=framer)
            for framer in ("socket", "rtu")
        ]
        regs = list(struct.unpack(">2H", struct.pack(">f", 21.5))) * TAGS_PER_REQUEST * REQUESTS
        for sim in sims:
            await sim.start()
            for unit in range(1, units + 1):
                sim.set_registers(unit, Table.HOLDING, 0, regs)
        pipe.send([sim.port for sim in sims])
        await asyncio.Event().wait()

    asyncio.run(main())


def _device(port: int, unit: int, protocol: str = "modbus_tcp") -> Any:
    tags = [
        {"name": f"f{i}", "address": 2 * i, "type": "float32"}
        for i in range(TAGS_PER_REQUEST * REQUESTS)
    ]
    return validate_device(
        {
            "protocol": protocol,
            "name": f"bench{unit}",
            "host": "127.0.0.1",
            "port": port,
            "unit_id": unit,
            "tags": tags,
            "max_gap": 0,
        }
    )


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _poll(
    port: int, connections: int, seconds: float, protocol: str = "modbus_tcp"
) -> dict[str, Any]:
    devices = [_device(port, unit, protocol) for unit in range(1, connections + 1)]
    plans = [compile_plan(d) for d in devices]
    assert all(len(p.requests) == REQUESTS for p in plans)
    drivers = [Driver(d) for d in devices]
    await asyncio.gather(*(d.connect() for d in drivers))
    for driver, plan in zip(drivers, plans, strict=True):  # warm up, and check the values
        batch = await driver.read(plan)
        assert batch.ok and batch.readings[0][2] == 21.5, batch.error
    reads = 0
    deadline = time.monotonic() + seconds

    async def loop(driver: Any, plan: Any) -> None:
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
    requests = reads * REQUESTS
    points = requests * TAGS_PER_REQUEST
    return {
        "protocol": protocol,
        "connections": connections,
        "requests_per_s": requests / wall,
        "registers_per_s": requests * 2 * TAGS_PER_REQUEST / wall,
        "points_per_s": points / wall,
        "cpu_us_per_request": cpu / requests * 1e6,
        "cpu_us_per_point": cpu / points * 1e6,
        "cpu_share": cpu / wall,
    }


def _mixed_device() -> Any:
    tags: list[dict[str, Any]] = []
    for i in range(20):
        tags.append({"name": f"f{i}", "address": 2 * i, "type": "float32", "order": "CDAB"})
    for i in range(40):
        tags.append({"name": f"i{i}", "address": 40 + i, "type": "int16", "scale": 0.1})
    tags.append({"name": "text", "address": 80, "type": "string", "length": 20})
    tags += [{"name": f"b{i}", "address": 90, "type": "bool", "bit": i} for i in range(16)]
    return validate_device(
        {"protocol": "modbus_tcp", "name": "mixed", "host": "::1", "tags": tags, "max_gap": 125}
    )


def _decode_only(seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cases = [
        ("float32", _device(502, 1), struct.pack(">f", 21.5) * TAGS_PER_REQUEST),
        ("mixed", _mixed_device(), bytes(range(256))[: 2 * 91]),
    ]
    for name, dev, raw in cases:
        request = compile_plan(dev).requests[0]
        points = len(request.tags)
        assert len(raw) == 2 * request.count
        decode = request.decoder.decode_bytes  # what the driver calls on each response
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        deadline = t0 + seconds / 2
        while time.perf_counter() < deadline:
            for _ in range(1000):
                decode(raw, 0)
            n += 1000
        cpu = time.process_time() - c0
        out[name] = {
            "points": points,
            "cpu_us_per_request": cpu / n * 1e6,
            "cpu_us_per_point": cpu / n / points * 1e6,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per scenario (default 4)")
    parser.add_argument("--connections", type=int, default=10, help="for scenario 2 (default 10)")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(args.connections, child), daemon=True)
    server.start()
    try:
        if not parent.poll(20):
            raise RuntimeError("simulator did not start")
        port, rtu_port = parent.recv()
        loop_name = _use_uvloop()
        one = asyncio.run(_poll(port, 1, args.seconds))
        many = asyncio.run(_poll(port, args.connections, args.seconds))
        shared = asyncio.run(_poll(rtu_port, args.connections, args.seconds, "modbus_rtu_tcp"))
    finally:
        server.kill()
        server.join(5)
    decode = _decode_only(min(args.seconds, 2.0))

    print(
        f"Modbus read, {loop_name}, plan: {REQUESTS} requests x {2 * TAGS_PER_REQUEST} "
        f"registers ({TAGS_PER_REQUEST} float32 each); simulators in a child process"
    )
    for r in (one, many, shared):
        what = (
            f"{r['connections']:>2} connection(s)"
            if r["protocol"] == "modbus_tcp"
            else f"{r['connections']:>2} units, 1 RTU/TCP link"
        )
        print(
            f"  {what}: {r['requests_per_s']:8.0f} req/s  "
            f"{r['registers_per_s']:10.0f} registers/s  {r['points_per_s']:9.0f} points/s  "
            f"driver CPU {r['cpu_us_per_request']:6.1f} us/request = "
            f"{r['cpu_us_per_point']:5.2f} us/point ({r['cpu_share']:.0%} of a core)"
        )
    for name, d in decode.items():
        print(
            f"  decode only, {name}: {d['cpu_us_per_request']:.2f} us per {d['points']}-point "
            f"response = {d['cpu_us_per_point']:.3f} us/point"
        )
    result = {
        "bench": "modbus_read",
        "loop": loop_name,
        "python": sys.version.split()[0],
        "one_connection": one,
        "many_connections": many,
        "shared_rtu_tcp_link": shared,
        "decode_only": decode,
    }
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
