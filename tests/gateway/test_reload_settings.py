"""A SIGHUP reload is honest: every setting of the config has a rule (applied at once,
at the next restart, or refused while running), each one is changed here in a running
daemon and the reload says which it was; the ones it calls applied are in force."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from drivers.modbus.simulator import ModbusSimulator
from gateway.config import Config, load_config
from gateway.daemon import Daemon
from gateway.mosquitto import Mosquitto, free_port
from gateway.reloadplan import RULES, Effect, changed, effect, plan


def leaves(model: type[BaseModel], prefix: str = "") -> list[str]:
    out: list[str] = []
    for name, f in model.model_fields.items():
        if f.exclude:
            continue
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += leaves(ann, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def test_every_setting_has_a_reload_rule() -> None:
    for name in leaves(Config):
        effect(name)  # raises for a setting nobody decided about
    assert effect("gateway.durability") is Effect.RESTART
    assert effect("uplink.tls.ca_file") is Effect.APPLIED
    assert effect("gateway.id") is Effect.FIXED
    with pytest.raises(KeyError):
        effect("no_such.setting")


HEAD = """gateway:
  id: {id}
  state_dir: state
  flush_window_ms: {flush}
  max_batch_points: {points}
  durability: {durability}
  shutdown_drain_s: {drain}
  payload_version: {payload}
uplink: {{host: '::1', port: {port}, keepalive_s: {keepalive}}}
outbox: {{max_mib: {max_mib}, when_full: {when_full}, min_free_mib: {min_free}}}
metrics: {{host: 127.0.0.1, port: {metrics_port}}}
audit: {{checkpoint_every: {cp_every}, checkpoint_interval_s: {cp_interval},
        segment_mib: {seg_mib}, archive: {archive}}}
devices:
  - {{name: d, protocol: modbus_tcp, host: 127.0.0.1, port: {sim}, poll_interval_ms: {poll},
     tags: [{{name: t, address: 0}}]}}
"""

# setting -> (the value in the file it is changed to, what the running daemon shows)
CHANGES: dict[str, tuple[str, dict[str, Any]]] = {
    "gateway.flush_window_ms": ("flush", {"flush": 700}),
    "gateway.max_batch_points": ("points", {"points": 77}),
    "gateway.shutdown_drain_s": ("drain", {"drain": 3.5}),
    "gateway.payload_version": ("payload", {"payload": 1}),
    "gateway.durability": ("durability", {"durability": "FULL"}),
    "outbox.max_mib": ("max_mib", {"max_mib": 12}),
    "outbox.when_full": ("when_full", {"when_full": "stop_acquisition"}),
    "outbox.min_free_mib": ("min_free", {"min_free": 3}),
    "uplink.keepalive_s": ("keepalive", {"keepalive": 11}),
    "audit.checkpoint_every": ("cp_every", {"cp_every": 7}),
    "audit.checkpoint_interval_s": ("cp_interval", {"cp_interval": 99.0}),
    "audit.segment_mib": ("seg_mib", {"seg_mib": 2.5}),
    "audit.archive": ("archive", {"archive": "move"}),
    "metrics.port": ("metrics_port", {}),
    "devices": ("poll", {"poll": 300}),
    "gateway.id": ("id", {"id": "gw-other"}),
}


def in_force(d: Daemon, key: str) -> Any:
    assert d.pipeline is not None and d.outbox is not None and d.outbox.outbox is not None
    ob = d.outbox.outbox
    return {
        "flush": round(d.pipeline.window * 1000),
        "points": d.pipeline.max_points,
        "drain": d.cfg.gateway.shutdown_drain_s,
        "payload": d.pipeline.payload_version,
        "durability": ob._synchronous,
        "max_mib": ob.max_bytes // 2**20 if ob.max_bytes else None,
        "when_full": ob.policy,
        "min_free": ob.min_free_bytes // 2**20,
        "keepalive": d.forwarder.uplink.keepalive_s if d.forwarder else None,
        "cp_every": d.audit.checkpoint_every if d.audit else None,
        "cp_interval": d.audit.checkpoint_interval_s if d.audit else None,
        "seg_mib": d.audit.segment_bytes / 2**20 if d.audit and d.audit.segment_bytes else None,
        "archive": d.archiver.settings()[0] if d.archiver else None,
        "poll": round(d._runtimes["d"].interval_s * 1000),
        "id": d.cfg.gateway.id,
    }[key]


def file_values(gw: str, broker_port: int) -> dict[str, Any]:
    """The values HEAD is filled with at the start of a test."""
    return {
        "id": gw,
        "flush": 100,
        "points": 5000,
        "durability": "NORMAL",
        "drain": 5,
        "payload": 2,
        "port": broker_port,
        "keepalive": 30,
        "max_mib": 100,
        "when_full": "drop_oldest",
        "min_free": 1,
        "metrics_port": free_port("127.0.0.1"),
        "cp_every": 100,
        "cp_interval": 300.0,
        "seg_mib": 8.0,
        "archive": "keep",
        "poll": 100,
    }


def test_each_setting_changed_by_a_reload_is_applied_or_named(
    tmp_path: Path, broker: Mosquitto
) -> None:
    sim = ModbusSimulator()
    path = tmp_path / "gw.yaml"
    base = file_values("gw-rl", broker.port)

    async def main() -> dict[str, Any]:
        await sim.start()
        values = {**base, "sim": sim.port}
        path.write_text(HEAD.format(**values))
        daemon = Daemon(load_config(path), path)
        stop = asyncio.Event()
        run = asyncio.create_task(daemon.run(stop))
        out: dict[str, Any] = {}
        try:
            deadline = time.monotonic() + 20  # a bound only
            while "poll:d" not in daemon.tasks or daemon._metrics is None:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            for setting, (key, shown) in CHANGES.items():
                new = dict(values)
                new[key] = shown.get(key, free_port("127.0.0.1"))
                path.write_text(HEAD.format(**new))
                applied = await daemon.reload()
                result = dict(daemon.last_reload or {})
                now = in_force(daemon, key) if key != "metrics_port" else daemon._metrics.port
                out[setting] = (applied, result, now, new[key])
                if applied and not result.get("needs_restart"):
                    values = new  # the next change starts from what is in force
                else:
                    path.write_text(HEAD.format(**values))
                    await daemon.reload()
        finally:
            stop.set()
            await asyncio.wait_for(run, 60)
            await sim.stop()
        return out

    out = asyncio.run(main())
    assert set(out) == set(CHANGES)
    print(out)
    for setting, (applied, result, now, wanted) in out.items():
        rule = effect(setting)
        if rule is Effect.APPLIED:
            assert applied and result["applied"] == [setting], (setting, result)
            assert now == wanted, (setting, now, wanted)
        elif rule is Effect.RESTART:
            assert applied and result["needs_restart"] == [setting], (setting, result)
            assert now != wanted, (setting, now)  # not in force, as the reload said
        else:
            assert not applied and result["refused"] == [setting], (setting, result)
            assert now != wanted


def test_the_plan_names_nested_settings(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        "gateway: {id: g}\nuplink: {host: '::1'}\n"
        "devices: [{name: d, protocol: modbus_tcp, host: h, tags: [{name: t, address: 0}]}]\n"
    )
    a = load_config(f)
    f.write_text(
        f.read_text().replace("uplink: {host: '::1'}", "uplink: {host: '::1', port: 8883}")
    )
    b = load_config(f)
    assert changed(a, b) == ["uplink.port"]
    assert plan(a, b).applied == ["uplink.port"]
    assert set(RULES.values()) == set(Effect)


def test_a_reload_naming_a_missing_file_is_refused_and_the_gateway_goes_on(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """A config whose TLS CA file does not exist loads (the model cannot know), but a
    reload must not stop the uplink for it: refused before anything changes, the old
    forwarder still delivers, and the reload says why."""
    sim = ModbusSimulator()
    path = tmp_path / "gw.yaml"
    values = file_values("gw-ca", broker.port)

    async def main() -> tuple[bool, dict[str, Any], int, int, bool]:
        await sim.start()
        good = HEAD.format(**values, sim=sim.port)
        path.write_text(good)
        daemon = Daemon(load_config(path), path)
        stop = asyncio.Event()
        run = asyncio.create_task(daemon.run(stop))
        try:
            deadline = time.monotonic() + 20  # a bound only
            while daemon.forwarder is None or not daemon.forwarder.stats.link_up:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            fwd = daemon.forwarder
            bad = good.replace(
                f"keepalive_s: {values['keepalive']}}}",
                f"keepalive_s: {values['keepalive']}, tls: {{ca_file: nope.pem}}}}",
            )
            assert bad != good
            path.write_text(bad)
            applied = await daemon.reload()
            result = dict(daemon.last_reload or {})
            acked = fwd.stats.acked
            await asyncio.sleep(1.5)  # still delivering with the old uplink
            return applied, result, acked, fwd.stats.acked, daemon.forwarder is fwd
        finally:
            stop.set()
            await asyncio.wait_for(run, 60)
            await sim.stop()

    applied, result, before, after, same = asyncio.run(main())
    assert not applied and result["outcome"] == "refused", result
    assert any("nope.pem" in line for line in result["why"]), result
    assert same and after > before  # the running uplink was never stopped
