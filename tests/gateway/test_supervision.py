"""Every long-running task runs under one supervisor: an unexpected exception is logged
at once with the task and the cause, the task starts again with backoff, and what it had
taken is put back. Each task kind of a running daemon is killed by an injected error and
comes back within seconds; the platform then has every point polled, nothing twice."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.simulator import ModbusSimulator
from gateway.config import load_config
from gateway.daemon import Daemon
from gateway.mosquitto import Mosquitto
from gateway.receiver import MqttReceiver, Payload, Receiver
from gateway.snapshot import Snapshot
from gateway.supervisor import FAILING_AFTER, Supervisor
from security import DeviceKey


async def wait_for(cond: Any, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds  # a bound only: each step takes well under 2 s
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


# -- the supervisor itself ----------------------------------------------------------------


def test_a_failing_task_is_logged_at_once_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[float] = []

    async def flaky() -> None:
        runs.append(time.monotonic())
        if len(runs) < 3:
            raise RuntimeError(f"boom {len(runs)}")
        await asyncio.sleep(3600)

    async def main() -> Supervisor:
        sup = Supervisor(first_s=0.01, cap_s=0.05)
        sup.start("worker", flaky)
        assert await wait_for(lambda: len(runs) == 3, 5)
        await sup.stop()
        return sup

    with caplog.at_level(logging.ERROR, "edgegw.supervisor"):
        sup = asyncio.run(main())
    h = sup.health["worker"]
    assert (h.restarts, h.failures, h.last_error) == (2, 2, "RuntimeError: boom 2")
    lines = [r for r in caplog.records if r.name == "edgegw.supervisor"]
    assert [r.getMessage().split(";")[0] for r in lines] == [
        "task worker failed: RuntimeError: boom 1",
        "task worker failed: RuntimeError: boom 2",
    ]
    assert all(r.exc_info for r in lines)  # a new error: with its traceback


def test_backoff_grows_and_a_repeating_failure_is_failing() -> None:
    runs: list[float] = []

    async def broken() -> None:
        runs.append(time.monotonic())
        raise ValueError("always")

    async def main() -> Supervisor:
        sup = Supervisor(first_s=0.02, cap_s=0.3)
        sup.start("broken", broken)
        assert await wait_for(lambda: len(runs) >= 6, 10)
        await sup.stop()
        return sup

    sup = asyncio.run(main())
    h = sup.health["broken"]
    assert h.failing and h.failures >= FAILING_AFTER and list(sup.failing()) == ["broken"]
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    # jittered in [base/2, base]: the fifth wait (base 0.32 -> cap 0.3) is at least
    # 0.15 s, the first at most 0.02 s plus scheduling
    assert gaps[4] >= 0.15 > gaps[0]


def test_backoff_starts_over_after_a_stable_run() -> None:
    runs: list[float] = []

    async def sometimes() -> None:
        runs.append(time.monotonic())
        if len(runs) == 4:
            await asyncio.sleep(0.3)  # ran longer than stable_s: the next failure is new
        raise ValueError("x")

    async def main() -> tuple[int, int]:
        sup = Supervisor(first_s=0.05, cap_s=10, stable_s=0.25)
        sup.start("t", sometimes)
        assert await wait_for(lambda: sup.health["t"].restarts >= 4, 10)
        h = sup.health["t"]
        seen = (h.restarts, h.failures)
        assert await wait_for(lambda: len(runs) >= 5, 10)
        await sup.stop()
        return seen

    assert asyncio.run(main()) == (4, 1)  # counted from the stable run on
    # then the first backoff again (at most 0.05 s), not the fourth (0.2-0.4 s)
    assert runs[4] - runs[3] < 0.3 + 0.1


def test_a_task_that_returns_ends_and_cancellation_is_not_caught() -> None:
    async def done() -> None:
        return None

    async def forever() -> None:
        await asyncio.sleep(3600)

    async def main() -> tuple[bool, bool, bool]:
        sup = Supervisor()
        a = sup.start("done", done)
        b = sup.start("forever", forever)
        await asyncio.wait_for(a, 5)
        await sup.stop(["forever"])
        return sup.health["done"].ended, b.cancelled(), sup.health["forever"].restarts == 0

    assert asyncio.run(main()) == (True, True, True)


# -- each task kind of a running daemon ----------------------------------------------------


class Readings:
    """Every reading the platform verified, with its quality and reason."""

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []

    def write(self, p: Payload, kid: bytes, received_ns: int) -> None:
        self.rows.extend(p.readings)

    def close(self) -> None:
        pass


def once(fn: Any, exc: BaseException, fired: list[str], name: str) -> Any:
    """``fn`` that raises ``exc`` the first time it is called."""

    def wrapper(*a: Any, **kw: Any) -> Any:
        if name not in fired:
            fired.append(name)
            raise exc
        return fn(*a, **kw)

    return wrapper


def once_async(fn: Any, exc: BaseException, fired: list[str], name: str) -> Any:
    async def wrapper(*a: Any, **kw: Any) -> Any:
        if name not in fired:
            fired.append(name)
            raise exc
        return await fn(*a, **kw)

    return wrapper


def test_every_task_kind_comes_back_and_nothing_is_lost(tmp_path: Path, broker: Mosquitto) -> None:
    sim = ModbusSimulator(unit_ids=(1, 2))
    path = tmp_path / "gw.yaml"
    sink = Readings()

    async def main() -> dict[str, Any]:
        await sim.start()
        path.write_text(
            "gateway: {id: gw-sup, state_dir: state, flush_window_ms: 50}\n"
            f"uplink: {{host: '::1', port: {broker.port}}}\n"
            "metrics: {enabled: false}\ndevices:\n"
            f"  - {{name: a, protocol: modbus_tcp, host: '127.0.0.1', port: {sim.port}, "
            "unit_id: 1, poll_interval_ms: 50, tags: [{name: x, address: 0}]}\n"
            f"  - {{name: b, protocol: modbus_tcp, host: '127.0.0.1', port: {sim.port}, "
            "unit_id: 2, poll_interval_ms: 50, tags: [{name: y, address: 0}]}\n"
        )
        cfg = load_config(path)
        key, _ = DeviceKey.load_or_create(cfg.state_dir)
        rx = Receiver({"gw-sup": key.public_key}, "edgegw", sink)
        mr = MqttReceiver(rx, "::1", broker.port).start()
        daemon = Daemon(cfg, path)
        stop = asyncio.Event()
        run = asyncio.create_task(daemon.run(stop))
        fired: list[str] = []
        out: dict[str, Any] = {"rx": rx}
        sup = daemon.sup

        def restarted(name: str, n: int = 1) -> Any:
            return lambda: sup.health[name].restarts >= n and not sup.tasks[name].done()

        try:
            assert await wait_for(lambda: daemon.devices.get("a") and daemon.devices["a"].up)
            assert daemon.pipeline and daemon.forwarder and daemon.uplink and daemon.downlink
            pipe, fwd, uplink, downlink = (
                daemon.pipeline,
                daemon.forwarder,
                daemon.uplink,
                daemon.downlink,
            )
            # the pipeline: fails holding a window; the restart seals it first
            pipe._seal_sync = once(  # type: ignore[method-assign]
                pipe._seal_sync, RuntimeError("injected into the pipeline"), fired, "pipeline"
            )
            assert await wait_for(restarted("pipeline"))
            # the forwarder: fails deleting acknowledged rows (kept, deleted later), and
            # reporting that the link went down fails too
            ob = daemon.outbox.outbox  # type: ignore[union-attr]
            ob.ack = once(ob.ack, RuntimeError("injected ack"), fired, "ack")  # type: ignore[method-assign]
            fwd.on_link = once(
                fwd.on_link, RuntimeError("injected into the forwarder"), fired, "fwd"
            )
            assert await wait_for(restarted("forwarder"))
            # the audit uplink: its error path fails too
            uplink._read_entries = once(  # type: ignore[method-assign]
                uplink._read_entries, OSError("injected read"), fired, "audit-read"
            )
            uplink._failed = once(  # type: ignore[method-assign]
                uplink._failed, RuntimeError("injected into the audit uplink"), fired, "audit"
            )
            daemon._audit("clock_jump", seconds=0.0)  # something to publish
            assert await wait_for(restarted("audit"))
            # the downlink: its error path fails
            downlink._handle = once_async(  # type: ignore[method-assign]
                downlink._handle, RuntimeError("bad command"), fired, "dl-handle"
            )
            downlink._count = once(  # type: ignore[method-assign]
                downlink._count, RuntimeError("injected into the downlink"), fired, "downlink"
            )
            downlink.offer(downlink.topic, b"\x00", lambda: None)
            assert await wait_for(restarted("downlink"))
            # the status task
            daemon.snapshot = once_async(  # type: ignore[method-assign]
                daemon.snapshot, RuntimeError("injected into status"), fired, "status"
            )
            assert await wait_for(restarted("status"))
            # a device: read raises (bad readings, reconnect), then connect raises
            drv = daemon._runtimes["a"].driver
            drv.connect = once_async(  # type: ignore[method-assign]
                drv.connect, RuntimeError("injected connect"), fired, "connect"
            )
            drv.read = once_async(  # type: ignore[method-assign]
                drv.read, RuntimeError("injected read"), fired, "read"
            )
            assert await wait_for(restarted("poll:a"))
            reads = daemon.devices["a"].reads
            assert await wait_for(lambda: daemon.devices["a"].reads > reads + 3)
            out["health"] = {n: (h.restarts, h.failing) for n, h in sup.health.items()}
            out["snapshot"] = await daemon.snapshot()
            out["b_errors"] = daemon.devices["b"].errors
        finally:
            stop.set()
            await asyncio.wait_for(run, 60)
            await sim.stop()
        out["polled"] = pipe.stats.points_polled
        out["last_seq"] = pipe.stats.last_seq
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and rx.stats.points_verified < out["polled"]:
            await asyncio.sleep(0.1)
        mr.stop()
        out["fired"] = fired
        return out

    out = asyncio.run(main())
    rx = out["rx"]
    assert sorted(out["fired"]) == sorted(
        [
            "pipeline",
            "ack",
            "fwd",
            "audit-read",
            "audit",
            "dl-handle",
            "downlink",
            "status",
            "read",
            "connect",
        ]
    )
    for name in ("pipeline", "forwarder", "audit", "downlink", "status", "poll:a"):
        assert out["health"][name] == (1, False), (name, out["health"])
    assert out["health"]["poll:b"] == (0, False) and out["b_errors"] == 0  # untouched
    assert set(out["snapshot"]) <= set(Snapshot.__annotations__)  # the one typed model
    th = out["snapshot"]["task_health"]
    assert th["pipeline"]["restarts"] == 1
    assert th["pipeline"]["last_error"] == "RuntimeError: injected into the pipeline"
    # nothing lost, nothing twice: every point polled verified, every seq received
    assert rx.stats.points_verified == out["polled"], (rx.stats, out["polled"])
    assert (rx.stats.gaps, rx.stats.duplicates, rx.stats.dropped_points) == (0, 0, 0)
    # the failed device said why, in its readings
    reasons = {r[4] for r in sink.rows if r[0] == "a/x" and len(r) > 4 and r[4]}
    assert "driver error: RuntimeError: injected read" in reasons
    assert "poll task failed: RuntimeError: injected connect" in reasons


def test_a_daemon_task_that_keeps_failing_stops_the_watchdog(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """The watchdog is fed only while the daemon's own tasks are sound: one that fails
    again and again (here the downlink, on every command that arrives) makes /healthz
    name it and the WATCHDOG=1 messages stop, so systemd restarts the gateway; a device's
    poll task failing would only make it degraded."""
    import socket

    from gateway.metrics import health_problems
    from gateway.sdnotify import Notifier

    sim = ModbusSimulator()
    path = tmp_path / "gw.yaml"
    sock_path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.setblocking(False)

    def drain() -> list[str]:
        out = []
        while True:
            try:
                out.append(sock.recv(4096).decode())
            except BlockingIOError:
                return out

    async def main() -> dict[str, Any]:
        await sim.start()
        path.write_text(
            "gateway: {id: gw-wd, state_dir: state}\n"
            f"uplink: {{host: '::1', port: {broker.port}}}\n"
            "metrics: {enabled: false}\ndevices:\n"
            f"  - {{name: a, protocol: modbus_tcp, host: '127.0.0.1', port: {sim.port}, "
            "poll_interval_ms: 100, tags: [{name: x, address: 0}]}\n"
        )
        daemon = Daemon(load_config(path), path)
        daemon.notify = Notifier.from_env({"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "2000000"})
        stop = asyncio.Event()
        run = asyncio.create_task(daemon.run(stop))
        out: dict[str, Any] = {}
        try:
            assert await wait_for(lambda: daemon.devices.get("a") and daemon.devices["a"].up)
            await asyncio.sleep(2.5)
            out["fed_before"] = sum("WATCHDOG=1" in m for m in drain())
            dl = daemon.downlink
            assert dl is not None

            def broken(*a: Any, **kw: Any) -> None:
                raise RuntimeError("injected: the downlink keeps failing")

            dl._count = broken  # type: ignore[method-assign]
            h = daemon.sup.health["downlink"]
            deadline = time.monotonic() + 30  # a bound only: backoff 0.5, 1, 2 s + jitter
            while not h.failing and time.monotonic() < deadline:
                dl.offer(dl.topic, b"\x00", lambda: None)
                await asyncio.sleep(0.2)
            out["failing"] = h.failing
            await asyncio.sleep(1.5)  # a status cycle sees it
            drain()
            await asyncio.sleep(3.0)
            out["fed_after"] = sum("WATCHDOG=1" in m for m in drain())
            out["problems"] = health_problems(daemon.last_snapshot)
        finally:
            stop.set()
            await asyncio.wait_for(run, 60)
            await sim.stop()
            sock.close()
        return out

    out = asyncio.run(main())
    assert out["fed_before"] >= 2, out
    assert out["failing"], out
    assert out["fed_after"] == 0, out
    assert any("task downlink keeps failing" in p for p in out["problems"]), out["problems"]
