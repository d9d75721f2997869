"""Nothing wakes without work: a gateway whose device is not due does not wake its threads
on timers of its own (the status every second, the metrics server's poll, the audit tick,
the archiver's look-around, paho's network loop every second), and yet its status stays
fresh (a heartbeat) and its metrics server still answers and stops at once.

Wakeups are counted, not timed: a thread's voluntary context switches
(``/proc/self/task/TID/status``) go up by one each time it sleeps after waking, so an
idle thread's count does not move however loaded the machine is. The bounds below leave
room for one pass of the heartbeat falling inside the window; the timers that were
removed would each add several (the metrics server polled twice a second, the status
task, the audit tick and the outbox trip of the snapshot ran every second)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import gateway.daemon as daemon_mod
from drivers.modbus.simulator import ModbusSimulator
from gateway.audit_archive import AuditArchiver
from gateway.config import load_config
from gateway.daemon import Daemon
from gateway.metrics import MetricsServer
from gateway.mosquitto import Mosquitto
from gateway.status import STATUS_EVERY_ENV, STATUS_FILE, status_every_s

IDLE_S = 4.0  # the window watched: four seconds of the old timers ran 20-odd wakeups


def wakeups(tid: int) -> int:
    """Voluntary context switches of one of our threads: how often it went to sleep."""
    for line in Path(f"/proc/self/task/{tid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches for thread {tid}")


def thread_wakeups() -> dict[str, int]:
    """Name -> wakeups of every live Python thread (paho's named without its client id)."""
    out = {}
    for t in threading.enumerate():
        if t.native_id is None:
            continue
        name = "paho" if t.name.startswith("paho-mqtt-client") else t.name
        try:
            out[name] = wakeups(t.native_id)
        except FileNotFoundError:  # ended meanwhile
            continue
    return out


def write_config(path: Path, broker: Mosquitto, sim_port: int, poll_ms: int) -> None:
    path.write_text(
        "gateway: {id: gw-idle, state_dir: state}\n"
        f"uplink: {{host: '::1', port: {broker.port}}}\n"
        "metrics: {port: 0}\n"
        "audit: {archive: move}\n"  # the archiver has work to look for
        "devices:\n"
        f"  - {{name: d, protocol: modbus_tcp, host: 127.0.0.1, port: {sim_port}, "
        f"poll_interval_ms: {poll_ms}, tags: [{{name: t, address: 0}}]}}\n"
    )


async def settled(d: Daemon) -> None:
    """Up, connected, the first window sealed and acknowledged, and the status pass that
    followed it done: from here on, nothing is due before the device's next poll."""
    deadline = time.monotonic() + 30  # a bound only: a cold start on a loaded machine
    while not (
        d.forwarder
        and d.forwarder.stats.link_up
        and d.pipeline
        and d.pipeline.stats.messages_sealed
        and d.forwarder.stats.acked >= d.pipeline.stats.messages_sealed
        and d.status_passes >= 1
        and not d._status_changed.is_set()
    ):
        assert time.monotonic() < deadline, "the daemon did not settle"
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # the pass's snapshot written, its outbox trip done


def test_an_idle_gateway_does_not_wake_its_threads(
    tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Device polled once a minute: between two polls the event loop, the outbox, the
    status writer, the audit thread and the metrics server sleep until work comes."""
    monkeypatch.delenv(STATUS_EVERY_ENV)  # the default (conftest makes it 1 s)
    sim = ModbusSimulator()
    path = tmp_path / "gw.yaml"
    loop_tid = threading.get_native_id()  # the daemon's event loop runs in this thread

    async def main() -> dict[str, Any]:
        await sim.start()
        write_config(path, broker, sim.port, 60_000)
        d = Daemon(load_config(path), path)
        stop = asyncio.Event()
        run = asyncio.create_task(d.run(stop))
        try:
            await settled(d)
            passes, before, loop0 = d.status_passes, thread_wakeups(), wakeups(loop_tid)
            await asyncio.sleep(IDLE_S)  # one wakeup of the loop: this sleep's end
            after, loop1 = thread_wakeups(), wakeups(loop_tid)
            passes = d.status_passes - passes
            assert d._metrics is not None
            url = d._metrics.url
            # it still answers when asked, with a snapshot at most a heartbeat old
            with urllib.request.urlopen(url + "/healthz", timeout=10) as r:
                health = json.loads(r.read())
        finally:
            stop.set()
            await asyncio.wait_for(run, 60)
            await sim.stop()
        woke = {n: after[n] - before[n] for n in after if n in before}
        return {"passes": passes, "woke": woke, "loop": loop1 - loop0, "health": health}

    out = asyncio.run(main())
    woke = out["woke"]
    assert {"metrics", "outbox_0", "status", "audit_0", "mqtt_link"} <= woke.keys(), woke
    assert out["passes"] <= 1, out  # a heartbeat at most (every second: 4)
    assert woke["metrics"] == 0, out  # it polled twice a second: 8
    assert woke["status"] <= 2, out  # one write, its rename (every second: ~12)
    assert woke["outbox_0"] <= 2, out  # the snapshot's counts (every second: ~8)
    assert woke["audit_0"] <= 2, out  # the interval checkpoint's tick (every second: ~8)
    # paho's network thread sleeps a quarter of the keep-alive (30 s: 7.5 s); a PINGREQ
    # and its PINGRESP may fall inside the window (loop_start's thread woke every second: 4)
    assert woke["mqtt_link"] <= 2, out
    assert out["loop"] <= 6, out  # the sleep above, one pass (every second: ~12)
    assert out["health"]["live"] is True, out


def test_the_status_stays_fresh_on_its_heartbeat(
    tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing changing, the status is still rewritten every heartbeat (so readers
    can tell a running daemon from a dead one), and no more often than that. Here the
    heartbeat is cut to 1 s so that the test does not wait for the real one (10 s)."""
    monkeypatch.setattr(daemon_mod, "STATUS_HEARTBEAT_S", 1.0)
    monkeypatch.setenv(STATUS_EVERY_ENV, "0.5")
    sim = ModbusSimulator()
    path = tmp_path / "gw.yaml"

    async def main() -> dict[str, Any]:
        await sim.start()
        write_config(path, broker, sim.port, 60_000)
        d = Daemon(load_config(path), path)
        stop = asyncio.Event()
        run = asyncio.create_task(d.run(stop))
        status = d.cfg.state_dir / STATUS_FILE
        try:
            await settled(d)
            passes = d.status_passes
            times = set()
            t0 = time.monotonic()
            while time.monotonic() - t0 < 3.5:
                await asyncio.sleep(0.1)
                try:
                    times.add(json.loads(status.read_text())["time_ns"])
                except (OSError, ValueError):  # replaced while read: the next read
                    continue
            passes = d.status_passes - passes
        finally:
            stop.set()
            await asyncio.wait_for(run, 60)
            await sim.stop()
        return {"passes": passes, "distinct_status_times": len(times)}

    out = asyncio.run(main())
    # 3.5 s of 1 s heartbeats: 3, and a slow machine may miss one; a bound, not a timing
    assert 2 <= out["passes"] <= 5, out
    assert out["distinct_status_times"] >= 2, out  # each pass rewrote status.json


def test_busy_status_passes_are_spaced(
    tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While windows seal all the time (a device polled every 50 ms), the status is
    taken at most every STATUS_EVERY_S, not for every change (here 1 s, for a short
    test; the default is 5 s)."""
    monkeypatch.setenv(STATUS_EVERY_ENV, "1")
    sim = ModbusSimulator()
    path = tmp_path / "gw.yaml"

    async def main() -> dict[str, Any]:
        await sim.start()
        write_config(path, broker, sim.port, 50)
        d = Daemon(load_config(path), path)
        stop = asyncio.Event()
        run = asyncio.create_task(d.run(stop))
        try:
            await settled(d)
            passes, sealed = d.status_passes, d.pipeline.stats.messages_sealed  # type: ignore[union-attr]
            await asyncio.sleep(3.5)
            passes = d.status_passes - passes
            sealed = d.pipeline.stats.messages_sealed - sealed  # type: ignore[union-attr]
        finally:
            stop.set()
            await asyncio.wait_for(run, 60)
            await sim.stop()
        return {"passes": passes, "sealed": sealed}

    out = asyncio.run(main())
    assert out["sealed"] >= 5, out  # there were changes, many more than passes
    assert 2 <= out["passes"] <= 4, out  # one a second (a bound; each seal: ~14)


def test_the_metrics_server_sleeps_until_asked_and_stops_at_once() -> None:
    """No poll: an idle server's thread does not wake (the stdlib's serve_forever woke
    twice a second); a request wakes it, and stop() ends it without waiting a poll."""
    with MetricsServer(lambda: None, port=0) as srv:
        tid = srv._thread.native_id
        assert tid is not None
        time.sleep(0.2)  # started and asleep in select
        before = wakeups(tid)
        time.sleep(1.5)
        idle = wakeups(tid) - before
        with urllib.request.urlopen(srv.url + "/", timeout=10) as r:
            assert r.status == 200
        asked = srv.wakeups
    assert idle == 0, idle
    assert asked == 1, asked
    assert not srv._thread.is_alive()  # stop() (the with block's end) joined it


def test_the_archiver_looks_again_only_while_segments_wait(tmp_path: Path) -> None:
    """With no closed segment waiting, the archiver sleeps until woken (a roll-over, a
    reload); it polled every 5 s before, whatever there was."""
    passes: list[int] = []

    class Counted(AuditArchiver):
        async def pass_once(self) -> int:
            passes.append(self.waiting)
            self.waiting = 0
            return 0

    async def main() -> None:
        log = SimpleNamespace(path=tmp_path / "audit.cborseq", log_id=b"\0" * 16)
        arch = Counted(log, None, None, lambda: ("move", tmp_path), check_s=0.05)  # type: ignore[arg-type]
        task = asyncio.create_task(arch.run())
        await asyncio.sleep(0.5)  # ten check_s: one pass at the start, then asleep
        first = len(passes)
        arch.wake()
        await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert first == 1 and len(passes) == 2, passes

    asyncio.run(main())


def test_the_status_interval_from_the_environment(caplog: pytest.LogCaptureFixture) -> None:
    """EDGEGW_STATUS_EVERY_S sets how often the status may be taken while things change;
    a value that is not a number of seconds in range is said, and the default kept."""
    assert status_every_s({}) == 5.0
    assert status_every_s({STATUS_EVERY_ENV: "1"}) == 1.0
    assert status_every_s({STATUS_EVERY_ENV: " 2.5 "}) == 2.5
    for bad in ("soon", "0", "-1", "11", "nan"):
        caplog.clear()
        assert status_every_s({STATUS_EVERY_ENV: bad}) == 5.0, bad
        assert f"EDGEGW_STATUS_EVERY_S={bad!r} is not a number of seconds" in caplog.text
