"""Config parsing is bounded: a YAML alias bomb, a recursive alias, absurd nesting or a
huge file is refused quickly with its place, at start and on a SIGHUP reload (which
keeps the running config); the config cases hold the exact messages."""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.daemon import Daemon
from gateway.mosquitto import Mosquitto
from gateway.yamlsource import MAX_VALUES, YamlError, load_yaml

CASES = Path(__file__).parent / "config_cases"


def bomb(levels: int) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [9, 30])
def test_an_alias_bomb_is_refused_quickly(tmp_path: Path, levels: int) -> None:
    """9 levels: 10^9 values from 700 bytes (it took 38 s and 2.9 GB); 30: 10^30."""
    f = tmp_path / "bomb.yaml"
    f.write_text(bomb(levels))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    with pytest.raises(YamlError) as err:
        load_yaml(f)
    took = time.monotonic() - t0
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert f"the file expands to more than {MAX_VALUES:,} values" in str(err.value)
    assert str(err.value).startswith(f"{f}:")
    # Generous bounds that catch the blow-up (it is about 0.5 s and tens of MiB).
    assert took < 20, took
    assert grown_mib < 400, grown_mib


def test_a_config_near_the_bound_still_loads(tmp_path: Path) -> None:
    """Real configs with anchors are far below the bound: 40 devices of 1,000 tags each
    sharing one aliased tag list (about 160,000 values) load."""
    tags = ", ".join(f"{{name: t{i}, address: {2 * i}}}" for i in range(1000))
    devices = [f"  - {{name: d0, protocol: modbus_tcp, host: h, tags: &tags [{tags}]}}"]
    devices += [
        f"  - {{name: d{i}, protocol: modbus_tcp, host: h, tags: *tags}}" for i in range(1, 40)
    ]
    f = tmp_path / "big.yaml"
    f.write_text("gateway: {id: gw}\nuplink: {host: '::1'}\ndevices:\n" + "\n".join(devices))
    cfg = load_config(f)
    assert len(cfg.devices) == 40 and all(len(d.tags) == 1000 for d in cfg.devices)


def test_nesting_and_size_are_bounded(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 300 + "]" * 300 + "\n")
    with pytest.raises(YamlError, match=r"nested more than 200 levels deep|nested too deeply"):
        load_yaml(deep)
    deeper = tmp_path / "deeper.yaml"
    deeper.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(YamlError, match="nested"):
        load_yaml(deeper)
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as fh:
        fh.truncate(65 * 2**20)  # sparse: takes no disk
    with pytest.raises(YamlError, match="larger than any config"):
        load_yaml(huge)


def test_a_bomb_in_a_devices_dir_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "devices.d").mkdir()
    (tmp_path / "devices.d" / "bomb.yaml").write_text(bomb(9) + "devices: *a8\n")
    f = tmp_path / "gw.yaml"
    f.write_text("gateway: {id: gw}\nuplink: {host: '::1'}\ndevices_dir: devices.d\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert err.value.lines[0].startswith(str(tmp_path / "devices.d" / "bomb.yaml") + ":")
    assert "alias bomb" in err.value.lines[0]


def test_a_reload_with_a_bomb_is_refused_and_the_running_config_stays(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gw.yaml"
    good = (
        "gateway: {id: gw-bomb, state_dir: state}\n"
        f"uplink: {{host: '::1', port: {broker.port}}}\n"
        "metrics: {enabled: false}\n"
        "devices:\n  - {name: d, protocol: modbus_tcp, host: 127.0.0.1, port: 1, "
        "tags: [{name: t, address: 0}]}\n"
    )
    path.write_text(good)

    async def main() -> tuple[bool, float, str]:
        daemon = Daemon(load_config(path), path)
        stop = asyncio.Event()
        run = asyncio.create_task(daemon.run(stop))
        try:
            for _ in range(500):
                if daemon.pipeline is not None and "poll:d" in daemon.tasks:
                    break
                await asyncio.sleep(0.02)
            path.write_text(bomb(9) + good)
            t0 = time.monotonic()
            applied = await daemon.reload()
            took = time.monotonic() - t0
            return applied, took, daemon.cfg.gateway.id
        finally:
            stop.set()
            await asyncio.wait_for(run, 60)

    with caplog.at_level(logging.ERROR, "edgegw.daemon"):
        applied, took, gw = asyncio.run(main())
    assert not applied and gw == "gw-bomb"
    assert took < 20  # bound only: the refusal takes well under a second
    refused = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
    assert refused and f"{path}:" in refused[0] and "alias bomb" in refused[0], refused
