"""The systemd unit, its sysusers/tmpfiles snippets and the serial drop-in example,
checked with systemd's own tools (Debian package 'systemd')."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

UNIT = REPO / "systemd" / "edgegw.service"
SERIAL_DROPIN = REPO / "systemd" / "edgegw-serial.conf.example"
MAX_EXPOSURE = 2.0


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: it comes with the Debian package 'systemd' "
            "(apt-get install systemd); the CI setup must install it"
        )
    return path


def exposure(unit: Path) -> tuple[float, str]:
    out = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    assert m, f"no score from systemd-analyze (exit {out.returncode}):\n{out.stdout}{out.stderr}"
    return float(m.group(1)), out.stdout


def directives(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_unit_hardening_scores_at_most_2() -> None:
    score, report = exposure(UNIT)
    assert score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}:\n{report}"


def test_unit_with_the_serial_dropin_still_scores_at_most_2(tmp_path: Path) -> None:
    """Drop-in settings come after the unit's: the same as appending them to [Service]."""
    base = UNIT.read_text().split("[Install]")[0]
    extra = [
        line
        for line in SERIAL_DROPIN.read_text().splitlines()
        if line and not line.startswith(("#", "["))
    ]
    combined = tmp_path / "edgegw.service"
    combined.write_text(base + "\n".join(extra) + "\n")
    score, report = exposure(combined)
    assert score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}:\n{report}"
    d = directives(combined)
    assert "char-ttyUSB rw" in d["DeviceAllow"] and d["SupplementaryGroups"] == ["dialout"]


def test_unit_promises() -> None:
    d = directives(UNIT)
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["WatchdogSec"] and d["Restart"] == ["on-failure"]
    assert d["RestartPreventExitStatus"] == ["2"]  # a bad config is not retried forever
    assert d["ExecStart"] == ["/opt/edgegw/bin/edgegw run -c /etc/edgegw/config.yaml"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["User"] == ["edgegw"] and d["StateDirectory"] == ["edgegw"]
    assert d["ConfigurationDirectory"] == ["edgegw"]
    # MQTT, Modbus TCP, OPC UA over IPv4 and IPv6, and AF_UNIX for sd_notify/journald
    assert set(d["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "PrivateNetwork" not in d and "IPAddressDeny" not in d


def test_sysusers_and_tmpfiles_create_user_and_state_dir(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    sysusers = subprocess.run(
        [tool("systemd-sysusers"), f"--root={root}", str(REPO / "systemd" / "edgegw.sysusers")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert sysusers.returncode == 0, sysusers.stderr
    passwd = {
        f[0]: f
        for f in (line.split(":") for line in (root / "etc/passwd").read_text().splitlines())
    }
    user = passwd["edgegw"]
    assert user[5] == "/var/lib/edgegw" and user[6] == "/usr/sbin/nologin"
    assert int(user[2]) < 1000  # a system user
    tmpfiles = subprocess.run(
        [
            tool("systemd-tmpfiles"),
            f"--root={root}",
            "--create",
            str(REPO / "systemd" / "edgegw.tmpfiles"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert tmpfiles.returncode == 0, tmpfiles.stderr
    st = (root / "var/lib/edgegw").stat()
    assert oct(st.st_mode & 0o7777) == "0o750" and st.st_uid == int(user[2])
