"""OPC UA read throughput and driver CPU per point: polling and subscriptions.

The simulator (asyncua's own server) runs in a child process so that the CPU measured
here is the client's alone: asyncua's client plus this driver. Scenarios:

1. polling: ``Driver.read`` of a plan of 1,000 Double nodes (one Read request), in a loop;
2. subscriptions: the same 1,000 nodes in one subscription while the server changes
   every one of them every ``--update-ms`` (default 100 ms), as fast as it can: asyncua's
   server manages a few thousand changes per second, so this measures the client's CPU
   per notification, and that it keeps up (points/s equal to changes/s);
3. decoding only: 1,000 DataValues into readings, no I/O (the driver's own share).

Bounded: about ``--seconds`` (default 5) per scenario, plus ~5 s of server start; well
under 60 s. Prints figures, then one JSON line.
Usage: ``python benchmarks/opcua_read.py [--seconds 5] [--nodes 1000] [--update-ms 100]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from drivers.contract import Batch
from drivers.opcua import DeviceConfig, compile_plan


def _use_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    uvloop.install()
    return "uvloop"


def _serve(nodes: int, update_ms: float, pipe: Connection, writes: Any) -> None:
    """Child process: a simulator with ``nodes`` Doubles; on command, every node gets a new
    value every ``update_ms`` (as far as the server keeps up; ``writes`` counts them)."""
    import logging

    from drivers.opcua.simulator import OpcuaSimulator

    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    _use_uvloop()

    async def main() -> None:
        sim = OpcuaSimulator(bulk=nodes)
        await sim.start()
        pipe.send(sim.endpoint)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, pipe.recv)  # "start changing"
        names = [f"ns=2;s=Bulk.{k:04d}" for k in range(nodes)]
        step = 0
        while True:
            t0 = loop.time()
            step += 1
            for k, name in enumerate(names):
                await sim.write(name, float(step * 10_000 + k))  # always a change
            writes.value += nodes
            await asyncio.sleep(max(0.0, update_ms / 1000 - (loop.time() - t0)))

    asyncio.run(main())


def _device(endpoint: str, nodes: int, mode: str) -> DeviceConfig:
    tags = [{"name": f"b{k}", "node": f"ns=2;s=Bulk.{k:04d}"} for k in range(nodes)]
    return DeviceConfig.model_validate(
        {
            "protocol": "opcua",
            "name": "bench",
            "endpoint": endpoint,
            "mode": mode,
            "publishing_interval_ms": 100,
            "sampling_interval_ms": 0,
            "tags": tags,
        }
    )


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _poll(endpoint: str, nodes: int, seconds: float) -> dict[str, float]:
    from drivers.opcua.driver import Driver

    dev = _device(endpoint, nodes, "poll")
    plan = compile_plan(dev)
    driver = Driver(dev, pki_dir=Path(tempfile.mkdtemp(prefix="edgegw-bench-")))
    await driver.connect()
    batch = await driver.read(plan)  # warm up (resolves nodes), and check
    assert batch.ok and len(batch.readings) == nodes, batch.error
    reads, latencies = 0, []
    cpu0, t0 = _cpu(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        batch = await driver.read(plan)
        latencies.append(time.perf_counter() - t)
        if not batch.ok:
            raise RuntimeError(batch.error)
        reads += 1
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    await driver.close()
    latencies.sort()
    return {
        "nodes_per_read": nodes,
        "reads_per_s": reads / wall,
        "points_per_s": reads * nodes / wall,
        "read_p50_ms": latencies[len(latencies) // 2] * 1e3,
        "read_p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
        "cpu_us_per_point": cpu / (reads * nodes) * 1e6,
        "cpu_share": cpu / wall,
    }


async def _subscribe(
    endpoint: str, nodes: int, seconds: float, pipe: Connection, writes: Any
) -> dict[str, Any]:
    from drivers.opcua.driver import Driver

    dev = _device(endpoint, nodes, "subscribe")
    driver = Driver(dev, pki_dir=Path(tempfile.mkdtemp(prefix="edgegw-bench-")))
    await driver.connect()
    counts = {"points": 0, "batches": 0, "bad": 0}

    async def sink(batch: Batch) -> None:
        counts["points"] += len(batch.readings)
        counts["batches"] += 1
        counts["bad"] += not batch.ok

    task = asyncio.create_task(driver.subscribe(compile_plan(dev), sink))
    while counts["points"] < nodes:  # initial values
        await asyncio.sleep(0.05)
    pipe.send("go")
    await asyncio.sleep(1.0)  # let the update rate settle
    p0, b0, w0 = counts["points"], counts["batches"], writes.value
    cpu0, t0 = _cpu(), time.perf_counter()
    await asyncio.sleep(seconds)
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    points, batches = counts["points"] - p0, counts["batches"] - b0
    changed = writes.value - w0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await driver.close()
    if counts["bad"] or not points:
        raise RuntimeError(f"subscription delivered {points} points, {counts['bad']} bad batches")
    return {
        "nodes": nodes,
        "changes_made_per_s": changed / wall,
        "points_per_s": points / wall,
        "batches_per_s": batches / wall,
        "points_per_batch": points / max(batches, 1),
        "cpu_us_per_point": cpu / points * 1e6,
        "cpu_share": cpu / wall,
    }


def _decode_only(nodes: int, seconds: float) -> dict[str, float]:
    from asyncua import ua

    from drivers.opcua.decode import Decoder

    now = datetime.now(UTC)
    values = [
        ua.DataValue(
            ua.Variant(20.0 + k, ua.VariantType.Double),
            SourceTimestamp=now,
            ServerTimestamp=now,
        )
        for k in range(nodes)
    ]
    decoder = Decoder([f"bench/b{k}" for k in range(nodes)], ["n"] * nodes, [None] * nodes)
    indices = list(range(nodes))
    n, c0, t0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        out: list[Any] = []
        decoder.decode(values, indices, out, 0)
        n += 1
    cpu = time.process_time() - c0
    return {"cpu_us_per_point": cpu / (n * nodes) * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per scenario (default 5)")
    parser.add_argument("--nodes", type=int, default=1000, help="nodes (default 1000)")
    parser.add_argument(
        "--update-ms", type=float, default=100.0, help="server change period (default 100)"
    )
    args = parser.parse_args()
    if not 1 <= args.nodes <= 9999 or args.seconds > 20:
        parser.error("--nodes 1..9999, --seconds <= 20 (the benchmark stays under 60 s)")

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    writes = ctx.Value("q", 0, lock=False)
    server = ctx.Process(
        target=_serve, args=(args.nodes, args.update_ms, child, writes), daemon=True
    )
    server.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("simulator did not start")
        endpoint = parent.recv()
        loop_name = _use_uvloop()
        poll = asyncio.run(_poll(endpoint, args.nodes, args.seconds))
        sub = asyncio.run(_subscribe(endpoint, args.nodes, args.seconds, parent, writes))
    finally:
        server.kill()
        server.join(5)
    decode = _decode_only(args.nodes, min(args.seconds, 2.0))

    print(f"OPC UA, {loop_name}, {args.nodes} Double nodes; simulator in a child process")
    print(
        f"  polling: {poll['reads_per_s']:7.1f} reads/s of {args.nodes} nodes = "
        f"{poll['points_per_s']:8.0f} points/s; read p50 {poll['read_p50_ms']:.1f} ms, "
        f"p99 {poll['read_p99_ms']:.1f} ms; client CPU {poll['cpu_us_per_point']:.2f} us/point "
        f"({poll['cpu_share']:.0%} of a core)"
    )
    print(
        f"  subscription: {sub['points_per_s']:8.0f} points/s of "
        f"{sub['changes_made_per_s']:.0f} changes/s the server made, "
        f"{sub['batches_per_s']:.1f} batches/s of {sub['points_per_batch']:.0f}; client CPU "
        f"{sub['cpu_us_per_point']:.2f} us/point ({sub['cpu_share']:.0%} of a core)"
    )
    print(f"  decoding only: {decode['cpu_us_per_point']:.3f} us/point")
    result = {
        "bench": "opcua_read",
        "loop": loop_name,
        "python": sys.version.split()[0],
        "polling": poll,
        "subscription": sub,
        "decode_only": decode,
    }
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
