"""Config loading: every case folder holds a config.yaml and the error it must give.

``expected.txt`` is either ``OK`` or the start of each expected error line
(``file:line:col: field: message``), so a bug report can become a folder.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config

CASES = sorted((Path(__file__).parent / "config_cases").iterdir())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_config_case(case: Path) -> None:
    expected = (case / "expected.txt").read_text().strip().splitlines()
    cfg_file = case / "config.yaml"
    if expected == ["OK"]:
        load_config(cfg_file)
        return
    with pytest.raises(ConfigError) as err:
        load_config(cfg_file)
    got = [line.replace(str(case) + "/", "") for line in err.value.lines]
    for want in expected:
        assert any(g.startswith(want) for g in got), f"want {want!r} in {got!r}"


def test_relative_state_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    case = Path(__file__).parent / "config_cases" / "ok_minimal" / "config.yaml"
    cfg = load_config(case)
    assert cfg.gateway.state_dir == case.parent / "state"
    assert cfg.uplink.host == "::1" and cfg.uplink.port == 1883
    assert cfg.topic("telemetry") == "edgegw/gw-01/telemetry"


def test_bracketed_ipv6_host_is_accepted(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        "gateway: {id: g}\nuplink: {host: '[2001:db8::1]'}\n"
        "devices: [{name: d, protocol: modbus_tcp, host: h, tags: [{name: t, address: 0}]}]\n"
    )
    assert load_config(f).uplink.host == "2001:db8::1"


def test_validate_exits_2_without_traceback() -> None:
    case = Path(__file__).parent / "config_cases" / "bad_type" / "config.yaml"
    r = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "validate", str(case)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert f"{case}:10:15: devices[0].tags[0].type:" in r.stderr
    assert "Traceback" not in r.stderr


def test_validate_prints_the_read_plan(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        "gateway: {id: g}\n"
        "devices:\n"
        "  - name: d\n    protocol: modbus_tcp\n    host: 127.0.0.1\n    tags:\n"
        + "".join(f"      - {{name: t{i}, address: {i * 2}, type: float32}}\n" for i in range(100))
    )
    r = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "validate", str(f)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    # 100 float32 tags = 200 registers: two requests of at most 125 registers
    assert "100 tags in 2 request(s) per cycle" in r.stdout
