"""Backlog drain: how fast a 1,000,000-point backlog reaches the platform, and the
latency of live data while it drains.

    python benchmarks/drain.py                 # 1,000,000 points of backlog
    python benchmarks/drain.py --points 200000

Phase 1: the gateway polls 100 devices x 100 tags every 100 ms (100k points/s) with the
broker down, until the outbox holds the backlog; it is stopped. Phase 2: the broker
comes up, the gateway restarts with a light live load (10 devices x 100 tags every 1 s)
and drains; a receiver verifies everything. Prints the drain rate (points/s), live
latency p50/p99 during the drain, and gateway CPU; the last line is JSON. Bounded by
--timeout.
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
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from e2e import pct, proc_cpu_s, write_config  # noqa: E402

from gateway.mosquitto import Mosquitto, free_port, wait_listening  # noqa: E402
from gateway.receiver import MqttReceiver, Receiver  # noqa: E402
from gateway.status import read_status  # noqa: E402
from security import DeviceKey  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument(
        "--batch-points",
        type=int,
        default=2000,
        help="points per message (max_batch_points) while the backlog builds",
    )
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgegw-drain-"))
    state = work / "state"
    broker_port = free_port("::1")
    sim_port = free_port("127.0.0.1")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    exe = [sys.executable, "-m", "gateway.cli"]
    big, live = work / "big.yaml", work / "live.yaml"
    write_config(big, state, broker_port, sim_port, 100, 100, 100, 250)
    write_config(live, state, broker_port, sim_port, 10, 100, 1000, 250)
    for f in (big, live):  # stop quickly in phase 1; drain freely in phase 2
        f.write_text(
            f.read_text().replace(
                "  max_batch_points: 20000",
                f"  max_batch_points: {a.batch_points}\n  shutdown_drain_s: 1",
            )
        )
    procs: list[subprocess.Popen[bytes]] = []
    broker = Mosquitto(host="::1", port=broker_port, workdir=work / "broker")
    try:
        sim = subprocess.Popen(
            [*exe, "simulate", "-c", str(big), "--update-interval", "1"],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        procs.append(sim)
        wait_listening("127.0.0.1", sim_port, 20)
        gw = subprocess.Popen(
            [*exe, "run", "-c", str(big), "--log-level", "WARNING"],
            env=env,
            stdout=open(work / "phase1.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        procs.append(gw)
        t0 = time.monotonic()
        backlog = 0
        while backlog < a.points and time.monotonic() - t0 < a.timeout:
            time.sleep(1)
            backlog = (read_status(state) or {}).get("pipeline", {}).get("points_sealed", 0)
            print(f"  backlog {backlog:>9} points", flush=True)
        gw.send_signal(signal.SIGTERM)
        gw.wait(60)
        backlog = (read_status(state) or {})["pipeline"]["points_sealed"]
        rows = (read_status(state) or {})["outbox"]["rows"]
        print(
            f"phase 1: {backlog} points in {rows} messages committed with the broker down",
            flush=True,
        )

        broker.start()
        key, _ = DeviceKey.load_or_create(state)
        live_lat: list[float] = []
        t_live_ns = time.time_ns()

        class LiveLatency:
            """Latency of points sampled after phase 2 began (the backlog's are not live)."""

            def write(self, p: Any, kid: bytes, received_ns: int) -> None:
                live_lat.extend((received_ns - r[1]) / 1e6 for r in p.readings if r[1] >= t_live_ns)

            def close(self) -> None:
                pass

        rx = Receiver({"bench-gw": key.public_key}, "edgegw", LiveLatency())
        mr = MqttReceiver(rx, "::1", broker_port).start()
        gw = subprocess.Popen(
            [*exe, "run", "-c", str(live), "--log-level", "WARNING"],
            env=env,
            stdout=open(work / "phase2.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        procs.append(gw)
        time.sleep(0.5)
        c0, t0 = proc_cpu_s(gw.pid), time.monotonic()
        while time.monotonic() - t0 < a.timeout:
            time.sleep(0.05)
            if rx.stats.points_verified >= backlog:
                break
        took = time.monotonic() - t0
        cpu = proc_cpu_s(gw.pid) - c0
        time.sleep(2)  # live data keeps flowing after the drain
        gw.send_signal(signal.SIGTERM)
        gw.wait(60)
        time.sleep(1)
        mr.stop()
        res = {
            "backlog_points": backlog,
            "drain_seconds": round(took, 2),
            "drain_points_per_s": round(backlog / took),
            "live_latency_p50_ms": round(pct(live_lat, 0.5), 1),
            "live_latency_p99_ms": round(pct(live_lat, 0.99), 1),
            "gateway_cpu_percent": round(100 * cpu / took, 1),
            "verified": rx.stats.points_verified,
            "gaps": rx.stats.gaps,
            "duplicates": rx.stats.duplicates,
            "signature_failures": rx.stats.signature_failures,
        }
        print(
            f"drained {backlog} points in {took:.1f} s: {res['drain_points_per_s']} points/s; "
            f"live latency while draining p50 {res['live_latency_p50_ms']} ms, p99 "
            f"{res['live_latency_p99_ms']} ms; gateway {res['gateway_cpu_percent']}% CPU"
        )
        print(json.dumps(res), flush=True)
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
