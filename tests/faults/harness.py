"""The rig every fault test uses: real processes, counted end to end.

    simulator (edgegw simulate) ─► gateway (edgegw run) ─► [link proxy] ─► mosquitto ─► receiver

The gateway and the simulator are subprocesses, so they can be SIGKILLed like in the
field. The receiver runs in the test with a persistent broker session (fixed client id,
session expiry, mosquitto persistence on), as a platform should, so messages the broker
acknowledged survive a broker restart. Scale: reduced by default (CI), full with
EDGEGW_FULL=1.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.mosquitto import Mosquitto, free_port, wait_listening
from gateway.receiver import MqttReceiver, Payload, Receiver, summary
from gateway.status import read_status
from security import DeviceKey
from tests.linkproxy import LinkProxy

REPO = Path(__file__).resolve().parents[2]
FULL = os.environ.get("EDGEGW_FULL") == "1"
GW = "fault-gw"


def scale(ci: float, full: float) -> float:
    return full if FULL else ci


class CountingSink:
    """Keeps, per device, the reading times seen (for the SIGKILL loss bound) and the
    readings by quality (for the hostile-device case)."""

    def __init__(self) -> None:
        self.last_ts: dict[str, list[int]] = {}
        self.qualities: dict[str, Counter[int]] = {}
        self.reasons: dict[str, Counter[str]] = {}

    def write(self, p: Payload, kid: bytes, received_ns: int) -> None:
        for r in p.readings:
            dev = r[0].split("/", 1)[0]
            self.last_ts.setdefault(dev, []).append(r[1])
            self.qualities.setdefault(dev, Counter())[r[3]] += 1
            if len(r) > 4 and r[4]:
                self.reasons.setdefault(dev, Counter())[r[4].split(" reading ")[0]] += 1

    def close(self) -> None:
        pass


@dataclass
class Rig:
    tmp: Path
    devices: int = 5
    tags: int = 40
    interval_ms: int = 100
    flush_ms: int = 250
    proxy: bool = False
    outbox: str = ""
    outbox_file: str = "outbox.db"  # relative to the state dir, as in the config
    state_dir: Path | None = None
    extra_devices: str = ""  # YAML list items appended to the devices (other peers)
    broker_saves_on_change: bool = False  # True: saved after every change (crash-safe)
    broker: Mosquitto = field(init=False)
    link: LinkProxy | None = field(init=False, default=None)
    gw: subprocess.Popen[bytes] | None = field(init=False, default=None)
    sim: subprocess.Popen[bytes] | None = field(init=False, default=None)
    rx: Receiver = field(init=False)
    sink: CountingSink = field(init=False)
    mr: MqttReceiver | None = field(init=False, default=None)
    runs: int = field(init=False, default=0)
    polled: int = field(init=False, default=0)

    @property
    def points_per_s(self) -> float:
        return self.devices * self.tags * 1000 / self.interval_ms

    def start(self) -> Rig:
        """Start everything; if any part fails, stop what already runs."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> Rig:
        self.broker = Mosquitto(
            host="::1",
            workdir=self.tmp / "broker",
            persistence=True,
            save_on_change=self.broker_saves_on_change,
            extra_conf=os.environ.get("EDGEGW_BROKER_CONF", ""),
        ).start()
        uplink_port = self.broker.port
        if self.proxy:
            self.link = LinkProxy(("::1", self.broker.port))
            uplink_port = self.link.port
        state = self.state_dir or self.tmp / "state"
        sim_port = free_port("127.0.0.1")
        self.cfg = self.tmp / "gw.yaml"
        lines = [
            "gateway:",
            f"  id: {GW}",
            f"  state_dir: {state}",
            f"  flush_window_ms: {self.flush_ms}",
            "  shutdown_drain_s: 30",
            "uplink:",
            "  host: '::1'",
            f"  port: {uplink_port}",
            "  keepalive_s: 5",
            self.outbox,
            "devices:",
        ]
        for d in range(self.devices):
            lines += [
                f"  - name: plc{d}",
                "    protocol: modbus_tcp",
                "    host: 127.0.0.1",
                f"    port: {sim_port}",
                f"    unit_id: {d + 1}",
                f"    poll_interval_ms: {self.interval_ms}",
                "    tags:",
            ]
            lines += [
                f"      - {{name: t{t}, address: {2 * t}, type: float32}}" for t in range(self.tags)
            ]
        self.cfg.write_text("\n".join(x for x in lines if x) + "\n")
        self.state = state
        self.sim = self._spawn(
            ["simulate", "-c", str(self.cfg), "--update-interval", "1"], "sim.log"
        )
        wait_listening("127.0.0.1", sim_port, 20)
        if self.extra_devices:  # the gateway's only: the simulator has read its own
            self.cfg.write_text(self.cfg.read_text() + self.extra_devices)
        key, _ = DeviceKey.load_or_create(state)
        self.sink = CountingSink()
        self.rx = Receiver({GW: key.public_key}, "edgegw", self.sink)
        self.connect_receiver()
        return self

    def connect_receiver(self) -> None:
        self.mr = MqttReceiver(
            self.rx, "::1", self.broker.port, client_id="fault-rx", session_expiry_s=3600
        ).start()

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=open(self.tmp / log, "ab"),
            stderr=subprocess.STDOUT,
        )

    def start_gateway(self) -> None:
        self.gw = self._spawn(["run", "-c", str(self.cfg)], "gateway.log")
        self.runs += 1

    def kill_gateway(self) -> int:
        """SIGKILL; returns the kill time (ns)."""
        assert self.gw is not None
        t = time.time_ns()
        self.gw.send_signal(signal.SIGKILL)
        self.gw.wait(10)
        return t

    def stop_gateway(self, timeout: float = 60) -> int:
        """SIGTERM (seal, drain), count what the run polled; returns the exit code."""
        assert self.gw is not None
        self.gw.send_signal(signal.SIGTERM)
        rc = self.gw.wait(timeout)
        st = read_status(self.state) or {}
        if st.get("final"):
            self.polled += st["pipeline"]["points_polled"]
        return rc

    def wait_delivered(self, timeout: float = 60) -> bool:
        """Until every seq the outbox ever assigned is received or explained."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = self.last_seq()
            if last and self.rx.received(GW) == [(1, last)]:
                return True
            time.sleep(0.2)
        return False

    def delivery(self) -> str:
        """What arrived vs what was committed, for assertion messages."""
        return (
            f"outbox last seq {self.last_seq()}, received {self.rx.received(GW)}, "
            f"missing {self.rx.missing().get(GW)}; {self.counts()}"
        )

    def last_seq(self) -> int:
        """Read-only, so inspecting never changes (or fails on) a full disk."""
        con = sqlite3.connect(f"file:{self.state / self.outbox_file}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            return int(row[0]) if row else 0
        finally:
            con.close()

    def outbox_check(self) -> tuple[str, int]:
        """(integrity check result, unsent rows), read-only."""
        con = sqlite3.connect(f"file:{self.state / self.outbox_file}?mode=ro", uri=True)
        try:
            ok = con.execute("PRAGMA quick_check").fetchone()[0]
            return ok, con.execute("SELECT count(*) FROM outbox").fetchone()[0]
        finally:
            con.close()

    def stop(self) -> None:
        if not hasattr(self, "broker"):
            return
        for p in (self.gw, self.sim):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)
        if self.mr is not None:
            self.mr.stop()
        if self.link is not None:
            self.link.close()
        self.broker.stop()

    def counts(self) -> dict[str, Any]:
        s = summary(self.rx)
        return {
            k: s[k]
            for k in (
                "messages_verified",
                "points_verified",
                "duplicates",
                "gaps",
                "conflicts",
                "signature_failures",
                "malformed",
                "dropped_points",
                "dropped_seqs",
                "notices",
            )
        }

    def delivered_and_dropped(self) -> int:
        """Points of telemetry messages that arrived and are also named in a drop notice:
        published, then evicted from a full outbox before the broker's PUBACK came (the
        platform stores them: a notice's seq may still arrive). Counted once."""
        store = self.rx.store
        with store._lock:  # type: ignore[attr-defined]
            row = store.db.execute(  # type: ignore[attr-defined]
                "SELECT coalesce(sum(m.points), 0) FROM messages m WHERE m.kind = 'telemetry'"
                " AND EXISTS (SELECT 1 FROM notices n WHERE n.gw = m.gw"
                " AND m.seq BETWEEN n.first_seq AND n.last_seq)"
            ).fetchone()
        return int(row[0])

    def log(self) -> str:
        return (self.tmp / "gateway.log").read_text(errors="replace")


def report(case: str, **row: Any) -> None:
    """One row of the README's fault table: printed, and appended to
    $EDGEGW_FAULT_REPORT when set."""
    row = {"case": case, "scale": "full" if FULL else "ci", **row}
    print("FAULT-REPORT " + json.dumps(row))
    path = os.environ.get("EDGEGW_FAULT_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
