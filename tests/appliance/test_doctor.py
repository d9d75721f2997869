"""`edgegw doctor` against real things: a mosquitto on a free port (plain and TLS), a
closed port, a name that cannot resolve, a listening device port, and state
directories and key files with wrong permissions."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.commands import doctor
from gateway.mosquitto import Mosquitto, free_port, wait_listening
from gateway.status import write_status
from security import DeviceKey
from tests.drivers.modbus.conftest import ThreadedSimulator

from .conftest import Pki, make_snapshot, run_command


@pytest.fixture(autouse=True)
def _owner_is_whoever_runs_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    # On the appliance the files belong to user edgegw; here they belong to the tester.
    monkeypatch.setattr(doctor, "SERVICE_USER", "edgegw-test-no-such-user")


@pytest.fixture
def device_port() -> Iterator[int]:
    """A PLC's Modbus server on 127.0.0.1 (pymodbus's, unit 1): doctor reads from it."""
    with ThreadedSimulator() as sim:
        yield sim.port


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never answers: no Modbus server."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


@pytest.fixture
def state(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir(mode=0o750)
    d.chmod(0o750)
    DeviceKey.load_or_create(d)
    return d


def write_config(
    path: Path,
    state: Path,
    uplink: dict[str, Any],
    devices: list[tuple[str, int]],
    gw_id: str = "gw-test",
) -> str:
    cfg = {
        "gateway": {"id": gw_id, "state_dir": str(state)},
        "uplink": uplink,
        "devices": [
            {
                "name": f"plc{i}",
                "protocol": "modbus_tcp",
                "host": host,
                "port": port,
                "tags": [{"name": "t", "address": 0, "type": "int16"}],
            }
            for i, (host, port) in enumerate(devices, 1)
        ],
    }
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


def test_a_healthy_site_passes(
    tmp_path: Path, broker: Mosquitto, device_port: int, state: Path
) -> None:
    cfg = write_config(
        tmp_path / "gw.yaml",
        state,
        {"host": "::1", "port": broker.port},
        [("127.0.0.1", device_port)],
    )
    write_status(state, make_snapshot())
    files = sorted(state.rglob("*"))
    c = by_name(doctor.run_checks(cfg, timeout=2))
    # a check writes nothing: run as root it left root-owned keys/root.pub.pem and
    # keys/public/ in the service user's state dir (found in the armhf chroot run)
    assert sorted(state.rglob("*")) == files
    assert c["config"].outcome == "pass" and "gateway gw-test" in c["config"].detail
    assert c["state dir"].outcome == "pass", c["state dir"]
    assert c["device key"].outcome == "pass" and "kid " in c["device key"].detail
    assert c["broker DNS"].outcome == "skip"  # an IP literal needs no lookup
    assert c["broker IPv6"].outcome == "pass" and f"[::1]:{broker.port}" in c["broker IPv6"].detail
    assert c["broker IPv4"].outcome == "skip"
    assert c["broker TLS"].outcome == "skip"  # not configured, broker on this machine
    assert (
        c["device plc1"].outcome == "pass" and f"127.0.0.1:{device_port}" in c["device plc1"].detail
    )
    assert "first request read: 1 tag(s)" in c["device plc1"].detail  # a real Modbus read
    assert c["disk"].outcome in ("pass", "warn")
    assert c["daemon"].outcome == "pass" and "1 of 2 devices up" in c["daemon"].detail
    assert "gateway id" not in c


def test_closed_ports_fail_with_what_to_do(
    tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    closed_broker, closed_device = free_port("::1"), free_port("127.0.0.1")
    cfg = write_config(
        tmp_path / "gw.yaml",
        state,
        {"host": "::1", "port": closed_broker},
        [("127.0.0.1", closed_device)],
    )
    assert run_command(doctor, "doctor", "-c", cfg, "--timeout", "2") == 1
    out = capsys.readouterr().out
    c = by_name(doctor.run_checks(cfg, timeout=2))
    assert c["broker IPv6"].outcome == "fail"
    assert "connection refused" in c["broker IPv6"].detail
    assert f"nothing listens on port {closed_broker}" in c["broker IPv6"].fix
    assert c["device plc1"].outcome == "fail" and "connection refused" in c["device plc1"].detail
    assert "FAIL  broker IPv6" in out and "→ the host answers but nothing listens" in out
    assert "failure(s)" in out.splitlines()[-1]


def test_unresolvable_names_fail(tmp_path: Path, state: Path) -> None:
    cfg = write_config(
        tmp_path / "gw.yaml",
        state,
        {"host": "nonexistent.invalid", "port": 1883},
        [("nonexistent.invalid", 502)],
    )
    c = by_name(doctor.run_checks(cfg, timeout=5))
    assert c["broker DNS"].outcome == "fail"
    assert "cannot resolve nonexistent.invalid" in c["broker DNS"].detail
    assert "IP address in uplink.host" in c["broker DNS"].fix
    assert c["broker TCP"].outcome == "skip"
    assert c["device plc1"].outcome == "fail" and "cannot resolve" in c["device plc1"].detail


def test_one_family_failing_while_the_other_works_is_a_warning(broker: Mosquitto) -> None:
    """mosquitto listens on [::1] only: a name with both addresses still gets through."""
    addrs = [(socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1")]
    checks, working = doctor.check_broker_tcp("broker.test", broker.port, addrs, 2)
    c = by_name(checks)
    assert working == (socket.AF_INET6, "::1")
    assert c["broker IPv6"].outcome == "pass"
    assert (
        c["broker IPv4"].outcome == "warn"
        and "still reaches the broker over IPv6" in c["broker IPv4"].fix
    )


@pytest.mark.parametrize(
    ("mode", "outcome", "words"),
    [
        (0o777, "fail", "writable by everyone"),
        (0o770, "fail", "writable by its group"),
        (0o755, "warn", "others may read"),
        (0o750, "pass", "mode 0750"),
    ],
)
def test_state_dir_permissions(state: Path, mode: int, outcome: str, words: str) -> None:
    state.chmod(mode)
    c = doctor.check_state_dir(state)
    assert c.outcome == outcome and words in c.detail
    if outcome != "pass":
        assert f"chmod 750 {state}" in c.fix


def test_state_dir_of_another_owner_fails(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "_expected_owner", lambda: (os.geteuid() + 1, "edgegw"))
    c = doctor.check_state_dir(state)
    assert c.outcome == "fail" and f"chown -R edgegw:edgegw {state}" in c.fix


def test_key_readable_by_others_fails(state: Path) -> None:
    key = state / "keys/device.ed25519.pem"
    key.chmod(0o644)
    c = doctor.check_key(state)
    assert c.outcome == "fail" and "mode 0644" in c.detail and f"chmod 600 {key}" in c.fix


def test_missing_key_and_state_dir_are_warnings(tmp_path: Path) -> None:
    assert doctor.check_state_dir(tmp_path / "none").outcome == "warn"
    c = doctor.check_key(tmp_path)
    assert c.outcome == "warn" and "first start" in c.fix


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Iterator[tuple[Mosquitto, int]]:
    tls_port = free_port("::1")
    conf = (
        f"listener {tls_port} ::1\n"
        f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
        "allow_anonymous true\n"
    )
    with Mosquitto(host="::1", workdir=tmp_path / "tlsbroker", extra_conf=conf) as b:
        wait_listening("::1", tls_port)
        yield b, tls_port


def test_tls_handshake_verified(
    tmp_path: Path, state: Path, pki: Pki, tls_broker: tuple[Mosquitto, int]
) -> None:
    _, tls_port = tls_broker
    cfg = write_config(
        tmp_path / "gw.yaml",
        state,
        {"host": "::1", "port": tls_port, "tls": {"ca_file": str(pki.ca)}},
        [("127.0.0.1", free_port("127.0.0.1"))],
    )
    c = by_name(doctor.run_checks(cfg, timeout=3))["broker TLS"]
    assert c.outcome == "pass", c
    assert "TLSv1." in c.detail and "certificate verified" in c.detail and "valid until" in c.detail


def test_tls_with_the_wrong_ca_fails(
    tmp_path: Path, state: Path, pki: Pki, tls_broker: tuple[Mosquitto, int]
) -> None:
    _, tls_port = tls_broker
    cfg = write_config(
        tmp_path / "gw.yaml",
        state,
        {"host": "::1", "port": tls_port, "tls": {"ca_file": str(pki.rogue_ca)}},
        [("127.0.0.1", free_port("127.0.0.1"))],
    )
    c = by_name(doctor.run_checks(cfg, timeout=3))["broker TLS"]
    assert c.outcome == "fail" and "not trusted" in c.detail and "ca_file" in c.fix


def test_tls_against_a_plaintext_port_fails(
    tmp_path: Path, state: Path, pki: Pki, tls_broker: tuple[Mosquitto, int]
) -> None:
    broker, _ = tls_broker
    cfg = write_config(
        tmp_path / "gw.yaml",
        state,
        {"host": "::1", "port": broker.port, "tls": {"ca_file": str(pki.ca)}},
        [("127.0.0.1", free_port("127.0.0.1"))],
    )
    c = by_name(doctor.run_checks(cfg, timeout=3))["broker TLS"]
    assert c.outcome == "fail" and "handshake" in c.detail and "TLS listener" in c.fix


def test_missing_ca_file_fails(tmp_path: Path, state: Path, broker: Mosquitto) -> None:
    cfg = write_config(
        tmp_path / "gw.yaml",
        state,
        {"host": "::1", "port": broker.port, "tls": {"ca_file": "missing-ca.pem"}},
        [("127.0.0.1", free_port("127.0.0.1"))],
    )
    c = by_name(doctor.run_checks(cfg, timeout=2))["broker TLS"]
    assert c.outcome == "fail" and f"{tmp_path / 'missing-ca.pem'} does not exist" in c.detail


def test_the_unedited_example_config_fails_without_touching_the_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The packaged config: placeholder id, a documentation address for the PLC."""
    from tests.conftest import REPO

    def no_connect(*a: object, **k: object) -> None:
        raise AssertionError("doctor connected to an example address")

    monkeypatch.setattr(doctor, "connect", no_connect)
    cfg = str(REPO / "images/debian/config.yaml")
    checks, _ = doctor.check_config(cfg)
    c = by_name(checks)
    assert c["gateway id"].outcome == "fail" and "CHANGE-ME" in c["gateway id"].detail
    dev = doctor.check_device(doctor.load_config(cfg).devices[0], 1)
    assert dev.outcome == "fail" and "example address" in dev.detail


def test_bad_config_fails_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway:\n  id: gw-1\n  flush_window_ms: -5\ndevices: []\n")
    assert run_command(doctor, "doctor", "-c", str(bad)) == 1
    out = capsys.readouterr().out
    assert "FAIL  config" in out and f"{bad}:3:" in out and "edgegw validate" in out


def test_daemon_not_running_is_a_warning(tmp_path: Path) -> None:
    tmp_path.chmod(0o750)
    c = doctor.check_daemon(tmp_path)
    assert c.outcome == "warn" and "not running" in c.detail and "systemctl" in c.fix


def test_every_warning_and_failure_says_what_to_do(tmp_path: Path, state: Path) -> None:
    cfg = write_config(
        tmp_path / "gw.yaml",
        state,
        {"host": "nonexistent.invalid", "port": 8883},
        [("127.0.0.1", free_port("127.0.0.1"))],
        gw_id="CHANGE-ME",
    )
    checks = doctor.run_checks(cfg, timeout=2)
    assert doctor.exit_code(checks) == 1
    for c in checks:
        if c.outcome in ("warn", "fail"):
            assert c.fix, f"{c.name} gives no advice: {c.detail}"
    report = doctor.format_report(checks)
    assert report.count("→") == sum(c.outcome in ("warn", "fail") for c in checks)


def test_json_output(
    tmp_path: Path, state: Path, broker: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(
        tmp_path / "gw.yaml", state, {"host": "::1", "port": broker.port}, [("::1", broker.port)]
    )
    run_command(doctor, "doctor", "-c", cfg, "--json")
    rows = json.loads(capsys.readouterr().out)
    assert {"name", "outcome", "detail", "fix"} <= set(rows[0])
    # the "device" is the MQTT broker: its port connects, but it speaks no Modbus
    dev = next(r for r in rows if r["name"] == "device plc1")
    assert dev["outcome"] == "fail" and "Modbus TCP server" in dev["fix"], dev


def test_exit_code_ignores_warnings() -> None:
    ok = doctor.Check("a", "pass", "")
    warn = doctor.Check("b", "warn", "", "do x")
    fail = doctor.Check("c", "fail", "", "do y")
    assert doctor.exit_code([ok, warn]) == 0
    assert doctor.exit_code([ok, warn, fail]) == 1
