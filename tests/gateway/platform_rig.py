"""Real processes for the platform-trust tests: a simulated PLC (``edgegw simulate``), the
gateway (``edgegw run``), a real mosquitto, and ``edgegw receive`` as its own process with
its own SQLite store, exactly as they run in the field."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.mosquitto import Mosquitto, free_port, wait_listening
from gateway.status import read_status

REPO = Path(__file__).resolve().parents[2]
GW = "gw1"


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@dataclass
class PlatformRig:
    tmp: Path
    broker: Mosquitto
    enrol_extra: list[str] = field(default_factory=list)  # more --pubkey ID=FILE
    gw: subprocess.Popen[bytes] | None = None
    sim: subprocess.Popen[bytes] | None = None
    rx: subprocess.Popen[bytes] | None = None
    polled: int = 0
    rx_runs: int = 0

    def __post_init__(self) -> None:
        self.state = self.tmp / "state"
        sim_port = free_port("::1")
        self.cfg = self.tmp / "gw.yaml"
        tags = "\n".join(
            f"      - {{name: t{i}, address: {2 * i}, type: float32}}" for i in range(10)
        )
        self.cfg.write_text(
            f"gateway: {{id: {GW}, state_dir: {self.state}, flush_window_ms: 100, "
            "shutdown_drain_s: 20}\n"
            f"uplink: {{host: '::1', port: {self.broker.port}}}\n"
            "metrics: {enabled: false}\n"
            "audit: {checkpoint_every: 5}\n"
            "devices:\n"
            f"  - name: plc\n    protocol: modbus_tcp\n    host: '::1'\n    port: {sim_port}\n"
            f"    poll_interval_ms: 100\n    tags:\n{tags}\n"
        )
        r = cli("keys", "init", "-c", str(self.cfg))
        assert r.returncode == 0, r.stderr
        self.root_pem = self.tmp / "gw1.root.pub.pem"
        r = cli("keys", "export-public", "--root", "-c", str(self.cfg), "-o", str(self.root_pem))
        assert r.returncode == 0, r.stderr
        self.sim = self._spawn(["simulate", "-c", str(self.cfg)], "sim.log")
        wait_listening("::1", sim_port, 20)
        self.db = self.tmp / "rx.db"

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=open(self.tmp / log, "ab"),
            stderr=subprocess.STDOUT,
        )

    # -- the receiver process --------------------------------------------------------

    def start_receiver(self) -> None:
        self.rx_runs += 1
        args = [
            "receive",
            "--host", "::1",
            "--port", str(self.broker.port),
            "--pubkey", f"{GW}={self.root_pem}",
            *[a for spec in self.enrol_extra for a in ("--pubkey", spec)],
            "--db", str(self.db),
            "--client-id", "platform-rx",
            "--stats-interval", "1",
        ]  # fmt: skip
        self.rx = self._spawn(args, f"rx{self.rx_runs}.log")
        deadline = time.monotonic() + 20
        while "receiving " not in self.rx_log(self.rx_runs):
            assert self.rx.poll() is None, self.rx_log(self.rx_runs)
            assert time.monotonic() < deadline, "the receiver did not subscribe"
            time.sleep(0.1)

    def stop_receiver(self) -> dict[str, Any]:
        """SIGTERM; returns the final summary it prints."""
        assert self.rx is not None
        self.rx.send_signal(signal.SIGTERM)
        assert self.rx.wait(30) == 0, self.rx_log(self.rx_runs)
        self.rx = None
        return self.summary(self.rx_runs)

    def rx_log(self, run: int) -> str:
        p = self.tmp / f"rx{run}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def summary(self, run: int) -> dict[str, Any]:
        """This process's counters, with the store's gaps and missing ranges."""
        for line in reversed(self.rx_log(run).splitlines()):
            if line.startswith('{"receiver"'):
                final = json.loads(line)
                store = final["store"]
                return {**final["receiver"], "gaps": store["gaps"], "missing": store["missing"]}
        raise AssertionError(f"no final summary in rx{run}.log:\n{self.rx_log(run)[-3000:]}")

    # -- the gateway -----------------------------------------------------------------

    def run_gateway(self, seconds: float) -> None:
        self.start_gateway()
        time.sleep(seconds)
        self.stop_gateway()

    def start_gateway(self) -> None:
        """Start and wait until it polls (a slow start must not eat the run's time, and a
        SIGTERM before its handlers are set would kill it)."""
        before = self.gateway_log().count("polling 1 devices")
        self.gw = self._spawn(["run", "-c", str(self.cfg)], "gateway.log")
        deadline = time.monotonic() + 30
        while self.gateway_log().count("polling 1 devices") == before:
            assert self.gw.poll() is None, self.gateway_log()[-3000:]
            assert time.monotonic() < deadline, "the gateway did not start polling"
            time.sleep(0.05)

    def stop_gateway(self) -> None:
        assert self.gw is not None
        self.gw.send_signal(signal.SIGTERM)
        assert self.gw.wait(60) == 0, self.gateway_log()[-3000:]
        self.gw = None
        st = read_status(self.state) or {}
        assert st.get("final"), st
        self.polled += st["pipeline"]["points_polled"]

    def gateway_log(self) -> str:
        p = self.tmp / "gateway.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def last_seq(self) -> int:
        con = sqlite3.connect(f"file:{self.state / 'outbox.db'}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            return int(row[0]) if row else 0
        finally:
            con.close()

    # -- what the receiver stored ------------------------------------------------------

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def stored_seqs(self) -> int:
        return int(self.query("SELECT count(*) FROM messages WHERE gw = ?", GW)[0][0])

    def wait_stored(self, timeout: float = 60) -> bool:
        """Until every seq the gateway's outbox assigned is stored (or explained)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.db.exists() and self.stored_seqs() >= self.last_seq() > 0:
                return True
            time.sleep(0.2)
        return False

    def alerts(self) -> list[tuple[str, int]]:
        return [(c, s) for c, s in self.query("SELECT class, security FROM alerts ORDER BY id")]

    def stop(self) -> None:
        for p in (self.gw, self.rx, self.sim):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)


class Publisher:
    """An MQTT client of the attacker's: records what the gateway publishes, sends anything."""

    def __init__(self, port: int) -> None:
        self.seen: dict[str, list[bytes]] = {}
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.on_message = lambda c, u, m: self.seen.setdefault(m.topic, []).append(m.payload)
        self.c.connect("::1", port)
        self.c.loop_start()
        self.c.subscribe(f"edgegw/{GW}/#", qos=1)

    def send(self, topic: str, body: bytes) -> None:
        self.c.publish(topic, body, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
