"""A signed config push: validated as `edgegw validate` would, applied through the reload
path, watched for health, rolled back when the new config breaks it; the version must
increase; a refused push changes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gateway.mosquitto import Mosquitto, free_port
from tests.gateway.commandrig import Rig


def test_config_push_applies_a_good_config_and_rolls_back_a_bad_one(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Rig(tmp_path, broker.port, health_s=2.0) as rig:
            assert rig.daemon is not None
            original = rig.cfg_path.read_text()

            def push(text: str, version: int) -> bytes:
                return rig.message("config", {"version": version, "config": text}, key=rig.admin)

            # a good push: a faster poll of the Modbus device
            faster = original.replace(
                "poll_interval_ms: 100\n    timeout_ms: 500",
                "poll_interval_ms: 50\n    timeout_ms: 500",
            )
            assert faster != original
            # a write that arrives while the push is being applied waits for it
            pushing = asyncio.create_task(rig.send(push(faster, 2), timeout=30))
            await asyncio.sleep(0.5)
            write = rig.message("write", {"tag": "ua/sp", "value": 5.0})
            out["good"], out["write_during"] = await asyncio.gather(pushing, rig.send(write))
            out["after_good"] = rig.cfg_path.read_text()
            out["interval"] = next(
                d for d in rig.daemon.cfg.devices if d.name == "plc"
            ).poll_interval_ms
            # a push that does not validate: refused, nothing changes
            out["invalid"] = await rig.send(push(faster.replace("type: float32", "type: float"), 3))
            out["after_invalid"] = rig.cfg_path.read_text()
            # an older version: refused
            out["old"] = await rig.send(push(faster, 2))
            # a push that breaks health (a device on a port where nothing listens): rolled back
            dead = free_port("127.0.0.1")
            broken = faster + (
                "  - name: ghost\n    protocol: modbus_tcp\n    host: 127.0.0.1\n"
                f"    port: {dead}\n    timeout_ms: 200\n"
                "    tags:\n      - {name: x, address: 0}\n"
            )
            out["broken"] = await rig.send(push(broken, 4), timeout=30)
            out["after_broken"] = rig.cfg_path.read_text()
            # a push naming a file the gateway does not have (validate's checks, not only
            # the model's): refused before anything changes, the uplink never stopped
            fwd = rig.daemon.forwarder
            nofile = faster.replace(
                "protocol: mqtt5}", "protocol: mqtt5, tls: {ca_file: nope.pem}}"
            )
            assert nofile != faster
            out["nofile"] = await rig.send(push(nofile, 5), timeout=30)
            out["after_nofile"] = rig.cfg_path.read_text()
            out["same_forwarder"] = rig.daemon.forwarder is fwd
            out["devices_after"] = sorted(rig.daemon.devices)
            out["running_cfg"] = sorted(d.name for d in rig.daemon.cfg.devices)
            # a push from a key without the config operation
            out["ops"] = await rig.send(rig.message("config", {"version": 9, "config": faster}))
        out["audit"] = rig.audit_records()
        out["changes"] = [r.detail for r in rig.audit_records("config_change")]
        return out

    out = asyncio.run(main())
    good = out["good"]
    assert (good["outcome"], good["version"]) == ("done", 2), good
    assert "poll_interval_ms: 50" in out["after_good"] and out["interval"] == 50
    during = out["write_during"]
    assert during["outcome"] == "done" and during["after"] == 5.0
    assert during["done"] >= good["done"]  # it ran after the push was settled
    assert (out["invalid"]["outcome"], out["invalid"]["reason"]) == ("refused", "invalid_config")
    assert "float" in out["invalid"]["detail"] and "pushed config" in out["invalid"]["detail"]
    assert out["after_invalid"] == out["after_good"]
    assert (out["old"]["outcome"], out["old"]["reason"]) == ("refused", "version_not_newer")
    broken = out["broken"]
    assert (broken["outcome"], broken["reason"]) == ("rolled_back", "unhealthy"), broken
    assert "ghost" in broken["detail"]
    assert out["after_broken"] == out["after_good"]
    assert "ghost" not in out["running_cfg"] and "ghost" not in out["devices_after"]
    nofile = out["nofile"]
    assert (nofile["outcome"], nofile["reason"]) == ("refused", "invalid_config"), nofile
    assert "nope.pem" in nofile["detail"]
    assert out["after_nofile"] == out["after_good"] and out["same_forwarder"]
    assert (out["ops"]["outcome"], out["ops"]["reason"]) == ("refused", "not_authorised")
    events = [(r.event, r.detail.get("reason")) for r in out["audit"]]
    assert ("command_done", None) in events
    assert ("command_failed", "unhealthy") in events
    assert ("command_refused", "invalid_config") in events
    applied = [c for c in out["changes"] if c.get("outcome") == "applied"]
    assert len(applied) == 3  # the good push, the broken one, and its rollback
