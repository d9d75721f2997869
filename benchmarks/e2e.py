"""End to end: simulated PLCs → gateway → mosquitto → verifying receiver, at a chosen load.

    python benchmarks/e2e.py                          # 100 devices x 100 tags every 1 s
    python benchmarks/e2e.py --max-rate --duration 20 # poll as fast as the devices answer
    python benchmarks/e2e.py --devices 1 --tags 1 --interval-ms 60000 --threads
                                    # an idle gateway: CPU and wakeups per second, by thread

The simulator, the broker and the gateway are separate processes, so the gateway's CPU
time and RSS are its own. The receiver runs here and verifies every signature.
Prints points/s delivered, gateway CPU µs per point, sample→verified latency p50/p99,
gateway RSS (peak, and its anonymous part: what is not shared library code) and bytes on
the wire per point (sealed telemetry messages as published, COSE envelope included,
before any compression); the last line is JSON. Bounded: it stops after --duration
seconds. ``--payload-version 1`` measures the older payload format.

The simulated devices answer from the simulator's lean Modbus TCP server by default
(``edgegw simulate --modbus-server fast``): pymodbus's server took as much CPU as the
gateway at max rate and was the limit on a 2-core machine. The frames are the same, so
the gateway's figures do not depend on it; ``--sim-server pymodbus`` uses pymodbus's.
The simulator's and this process's (the verifying receiver's) CPU are printed too, to
show what else shares the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# benchmarks/platform.py would shadow the stdlib's `platform`: keep this folder off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "benchmarks"))  # after the stdlib: for threadstat only

import threadstat  # noqa: E402  (benchmarks/threadstat.py)

from gateway.mosquitto import Mosquitto, free_port, wait_listening  # noqa: E402
from gateway.receiver import MqttReceiver, Receiver, summary  # noqa: E402
from security import DeviceKey  # noqa: E402


def write_config(
    path: Path,
    state: Path,
    broker_port: int,
    sim_port: int,
    devices: int,
    tags: int,
    interval_ms: int,
    flush_ms: int,
    payload_version: int | None = None,
    metrics_port: int = 0,
) -> None:
    lines = [
        "gateway:",
        "  id: bench-gw",
        f"  state_dir: {state}",
        f"  flush_window_ms: {flush_ms}",
        "  max_batch_points: 20000",
        *([f"  payload_version: {payload_version}"] if payload_version else []),
        "uplink:",
        "  host: '::1'",
        f"  port: {broker_port}",
        "  max_inflight: 128",
        # a port of its own: the default one may be taken by another gateway on the
        # machine, and then this one would run without its metrics server
        *(["metrics:", f"  port: {metrics_port}"] if metrics_port else []),
        "devices:",
    ]
    for d in range(devices):
        lines += [
            f"  - name: plc{d:03d}",
            "    protocol: modbus_tcp",
            "    host: 127.0.0.1",
            f"    port: {sim_port}",
            f"    unit_id: {d % 247 + 1}",
            f"    poll_interval_ms: {interval_ms}",
            "    tags:",
        ]
        lines += [
            f"      - {{name: t{t:03d}, address: {2 * t}, type: float32}}" for t in range(tags)
        ]
    path.write_text("\n".join(lines) + "\n")


def proc_cpu_s(pid: int) -> float:
    """CPU seconds of the process: its threads' run time in ns (``schedstat``), which is
    finer than ``stat``'s clock ticks (10 ms: 4% of what an idle gateway uses in 30 s).
    A thread that ends between two readings takes its time with it: the gateway's
    threads live as long as it does."""
    try:
        return (
            sum(
                int((task / "schedstat").read_text().split()[0])
                for task in Path(f"/proc/{pid}/task").iterdir()
            )
            / 1e9
        )
    except (OSError, ValueError, IndexError):  # no schedstat (a kernel without it)
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mib(pid: int, field: str = "VmRSS") -> float:
    """VmRSS, or RssAnon (heap and stacks: what is not file-backed library code)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--tags", type=int, default=100)
    ap.add_argument("--interval-ms", type=int, default=1000)
    ap.add_argument(
        "--max-rate", action="store_true", help="poll every 10 ms: as fast as the devices answer"
    )
    ap.add_argument("--flush-ms", type=int, default=250)
    ap.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument(
        "--payload-version", type=int, choices=(1, 2), help="gateway.payload_version to send"
    )
    ap.add_argument(
        "--sim-server",
        choices=("fast", "pymodbus"),
        default="fast",
        help="the simulator's Modbus TCP server (default: fast, the lean one)",
    )
    ap.add_argument(
        "--threads",
        action="store_true",
        help="also print each gateway thread's CPU and wakeups per second (names the "
        "kernel threads after the Python ones: benchmarks/threadnames)",
    )
    a = ap.parse_args()
    interval = 10 if a.max_rate else a.interval_ms

    work = Path(tempfile.mkdtemp(prefix="edgegw-bench-"))
    state = work / "state"
    procs: list[subprocess.Popen[bytes]] = []
    broker = Mosquitto(host="::1", workdir=work / "broker").start()
    try:
        sim_port = free_port("127.0.0.1")
        cfg = work / "bench.yaml"
        write_config(
            cfg,
            state,
            broker.port,
            sim_port,
            a.devices,
            a.tags,
            interval,
            a.flush_ms,
            a.payload_version,
            free_port("127.0.0.1"),
        )
        exe = [sys.executable, "-m", "gateway.cli"]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        sim = subprocess.Popen(
            [
                *exe,
                *("simulate", "-c", str(cfg), "--update-interval", "1.0"),
                *("--modbus-server", a.sim_server),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(work / "sim.log", "wb"),  # noqa: SIM115
        )
        procs.append(sim)
        wait_listening("127.0.0.1", sim_port, 20)
        key, _ = DeviceKey.load_or_create(state)
        rx = Receiver({"bench-gw": key.public_key}, "edgegw", track_latency=True)
        wire = [0]  # bytes of telemetry messages received (the paho thread adds)
        prepare = rx.prepare  # every message passes here (paho's thread), once

        def counted(topic: str, body: bytes, received_ns: int | None = None) -> Any:
            if topic.endswith("/telemetry"):
                wire[0] += len(body)
            return prepare(topic, body, received_ns)

        rx.prepare = counted  # type: ignore[method-assign]
        mr = MqttReceiver(rx, "::1", broker.port).start()
        gw_env = env
        if a.threads:
            names = str(REPO / "benchmarks" / "threadnames")
            gw_env = dict(env, PYTHONPATH=os.pathsep.join([names, str(REPO)]))
        gw = subprocess.Popen(
            [*exe, "run", "-c", str(cfg), "--log-level", "WARNING"],
            env=gw_env,
            stdout=open(work / "gateway.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        procs.append(gw)
        print(
            f"load: {a.devices} devices x {a.tags} float32 tags every {interval} ms "
            f"({a.devices * a.tags * 1000 // interval} points/s offered); warming up "
            f"{a.warmup:.0f} s, measuring {a.duration:.0f} s; work dir {work}",
            flush=True,
        )
        time.sleep(a.warmup)
        if gw.poll() is not None:
            raise SystemExit(f"gateway exited: see {work}/gateway.log")
        assert rx.latencies_ms is not None
        with rx.lock:
            del rx.latencies_ms[:]
            p0 = rx.stats.points_verified
            b0 = wire[0]
        th0 = threadstat.sample(gw.pid)
        c0, t0 = proc_cpu_s(gw.pid), time.monotonic()
        s0, r0 = proc_cpu_s(sim.pid), time.process_time()
        rss_max = anon_max = 0.0
        while time.monotonic() - t0 < a.duration:
            time.sleep(1.0)
            rss_max = max(rss_max, proc_rss_mib(gw.pid))
            anon_max = max(anon_max, proc_rss_mib(gw.pid, "RssAnon"))
            el = time.monotonic() - t0
            print(
                f"  {el:5.1f}s  {(rx.stats.points_verified - p0) / el:10.0f} points/s  "
                f"gateway CPU {100 * (proc_cpu_s(gw.pid) - c0) / el:5.1f}%  "
                f"RSS {rss_max:6.1f} MiB",
                flush=True,
            )
        c1, t1 = proc_cpu_s(gw.pid), time.monotonic()
        threads = threadstat.per_second(gw.pid, th0, threadstat.sample(gw.pid), t1 - t0)
        s1, r1 = proc_cpu_s(sim.pid), time.process_time()
        with rx.lock:
            p1 = rx.stats.points_verified
            b1 = wire[0]
            lat = list(rx.latencies_ms)
        points = p1 - p0
        gw.send_signal(signal.SIGTERM)
        gw.wait(60)
        time.sleep(1.0)
        mr.stop()
        res = {
            "devices": a.devices,
            "tags": a.tags,
            "interval_ms": interval,
            "points_per_s": round(points / (t1 - t0), 1),
            "cpu_us_per_point": round((c1 - c0) / max(points, 1) * 1e6, 3),
            "gateway_cpu_percent": round(100 * (c1 - c0) / (t1 - t0), 2),
            "latency_p50_ms": round(pct(lat, 0.5), 2),
            "latency_p99_ms": round(pct(lat, 0.99), 2),
            "rss_mib": round(rss_max, 1),
            "rss_anon_mib": round(anon_max, 1),
            "bytes_per_point": round((b1 - b0) / max(points, 1), 2),
            "simulator_cpu_percent": round(100 * (s1 - s0) / (t1 - t0), 1),
            "receiver_cpu_percent": round(100 * (r1 - r0) / (t1 - t0), 1),
            "load_average": round(os.getloadavg()[0], 2),
            **{
                k: v
                for k, v in summary(rx).items()
                if k in ("duplicates", "gaps", "signature_failures")
            },
        }
        print(
            f"delivered {res['points_per_s']:.0f} points/s; gateway {res['cpu_us_per_point']} "
            f"µs CPU per point ({res['gateway_cpu_percent']}% of a core); latency p50 "
            f"{res['latency_p50_ms']} ms, p99 {res['latency_p99_ms']} ms; "
            f"RSS {res['rss_mib']} MiB ({res['rss_anon_mib']} anonymous); "
            f"{res['bytes_per_point']} bytes per point on the wire; simulator "
            f"{res['simulator_cpu_percent']}% of a core, receiver {res['receiver_cpu_percent']}%, "
            f"load average {res['load_average']}"
        )
        if a.threads:
            print("gateway threads:\n" + threadstat.table(threads))
            res["threads"] = threads
        print(json.dumps(res), flush=True)
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
