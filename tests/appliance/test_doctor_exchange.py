"""`edgegw doctor` checks what a TCP connect cannot: one real exchange per device in its
protocol (against pymodbus, snap7 and asyncua servers), the device key against the
enrolled root, the models loaded in onnxruntime, the files as the service user sees
them, a read-only state directory, and certificate dates blamed on the clock when the
clock is the likely culprit."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from drivers.s7.simulator import S7Simulator
from gateway.commands import doctor
from gateway.mosquitto import Mosquitto, free_port, wait_listening
from inference.config import SHIPPED_MODELS
from security import DeviceKey
from tests.drivers.modbus.conftest import ThreadedSimulator
from tests.drivers.opcua.conftest import SimThread
from tests.tlscerts import Pki, _write_cert, _write_key, issue

from .conftest import SerialBus, rtu_device

DEFAULT_SHA = (SHIPPED_MODELS / "default.onnx.sha256").read_text().split()[0]


@pytest.fixture(autouse=True)
def _owner_is_whoever_runs_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "SERVICE_USER", "edgegw-test-no-such-user")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir(mode=0o750)
    d.chmod(0o750)
    DeviceKey.load_or_create(d)
    return d


def write(tmp_path: Path, state: Path, devices: list[dict[str, Any]], **extra: Any) -> str:
    cfg = {"gateway": {"id": "gw-test", "state_dir": str(state)}, "devices": devices, **extra}
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(cfg))
    return str(tmp_path / "gw.yaml")


def rows(cfg: str) -> dict[str, doctor.Check]:
    return {c.name: c for c in doctor.run_checks(cfg, timeout=2)}


@pytest.fixture
def modbus() -> Iterator[int]:
    with ThreadedSimulator() as sim:
        yield sim.port


@pytest.fixture
def s7() -> Iterator[S7Simulator]:
    with S7Simulator(dbs={1: 64}) as s:
        yield s


@pytest.fixture(scope="module")
def ua() -> Iterator[SimThread]:
    s = SimThread()
    yield s
    s.close()


def test_an_s7_config_on_a_modbus_port_fails(tmp_path: Path, state: Path, modbus: int) -> None:
    dev = {
        "name": "press",
        "protocol": "s7",
        "host": "127.0.0.1",
        "port": modbus,
        "tags": [{"name": "f", "address": "DB1.DBD0"}],
    }
    c = rows(write(tmp_path, state, [dev]))["device press"]
    assert c.outcome == "fail", c
    assert "TCP connects, but the s7 exchange failed" in c.detail
    assert "rack and slot" in c.fix and "ISO-on-TCP" in c.fix


def test_a_modbus_config_on_an_s7_port_fails(tmp_path: Path, state: Path, s7: S7Simulator) -> None:
    dev = {
        "name": "plc",
        "protocol": "modbus_tcp",
        "host": "127.0.0.1",
        "port": s7.port,
        "timeout_ms": 1000,
        "tags": [{"name": "t", "address": 0}],
    }
    c = rows(write(tmp_path, state, [dev]))["device plc"]
    assert c.outcome == "fail", c
    assert f"is port {s7.port} a Modbus TCP server, and unit id 1 right?" in c.fix


def test_s7_reads_the_first_request_and_names_a_missing_db(
    tmp_path: Path, state: Path, s7: S7Simulator
) -> None:
    ok = {
        "name": "press",
        "protocol": "s7",
        "host": "127.0.0.1",
        "port": s7.port,
        "tags": [{"name": "f", "address": "DB1.DBD0"}],
    }
    c = rows(write(tmp_path, state, [ok]))["device press"]
    assert c.outcome == "pass" and "rack/slot accepted" in c.detail, c
    bad = {**ok, "tags": [{"name": "f", "address": "DB9.DBD0"}]}
    c = rows(write(tmp_path, state, [bad]))["device press"]
    assert c.outcome == "fail" and "DB9" in c.detail and "object does not exist" in c.detail, c


def test_a_modbus_address_the_device_refuses_fails(
    tmp_path: Path, state: Path, modbus: int
) -> None:
    dev = {
        "name": "plc",
        "protocol": "modbus_tcp",
        "host": "127.0.0.1",
        "port": modbus,
        "tags": [{"name": "far", "address": 60000, "type": "float32"}],
    }
    c = rows(write(tmp_path, state, [dev]))["device plc"]
    assert c.outcome == "fail" and "far:" in c.detail, c
    assert "device's map" in c.fix


def test_opcua_session_and_nodes(tmp_path: Path, state: Path, ua: SimThread) -> None:
    good = {
        "name": "ua",
        "protocol": "opcua",
        "endpoint": ua.endpoint,
        "tags": [{"name": "now", "node": "i=2258"}],
    }  # Server_ServerStatus_CurrentTime
    c = rows(write(tmp_path, state, [good]))["device ua"]
    assert c.outcome == "pass" and "session opened, 1 node(s) read" in c.detail, c
    bad = {
        **good,
        "tags": [{"name": "now", "node": "i=2258"}, {"name": "ghost", "node": "ns=2;i=999999"}],
    }
    c = rows(write(tmp_path, state, [bad]))["device ua"]
    assert c.outcome == "fail" and "ghost: BAD_DEVICE BadNodeIdUnknown" in c.detail, c
    assert "node ids" in c.fix


def test_a_key_the_enrolled_root_does_not_reach_fails(tmp_path: Path, state: Path) -> None:
    from security.keyring import ROOT_FILE

    other = tmp_path / "other"
    other.mkdir()
    DeviceKey.load_or_create(other)  # another device's key
    (state / ROOT_FILE).write_bytes((state / DeviceKey.PUBLIC_KEY_FILE).read_bytes())
    (state / DeviceKey.PRIVATE_KEY_FILE).write_bytes(
        (other / DeviceKey.PRIVATE_KEY_FILE).read_bytes()
    )
    c = doctor.check_key(state)
    assert c.outcome == "fail" and "the daemon will refuse this key" in c.detail, c
    (state / DeviceKey.PRIVATE_KEY_FILE).unlink()
    c = doctor.check_key(state)
    assert c.outcome == "fail" and "is missing, but" in c.detail and "restore" in c.fix, c


def test_models_are_loaded_in_onnxruntime(tmp_path: Path, state: Path, modbus: int) -> None:
    dev = {
        "name": "plc",
        "protocol": "modbus_tcp",
        "host": "127.0.0.1",
        "port": modbus,
        "tags": [{"name": f"t{i}", "address": i} for i in range(6)],
    }
    binding = {
        "name": "m",
        "model": "default",
        "sha256": DEFAULT_SHA,
        "inputs": [f"plc/t{i}" for i in range(6)],
        "sample_ms": 1000,
        "window": 16,
        "threshold": {"enter": 1, "exit": 0.5},
    }
    cfg = write(tmp_path, state, [dev], inference={"models": [binding]})
    c = rows(cfg)["model m"]
    assert c.outcome == "pass" and "loads in onnxruntime" in c.detail, c
    # passes the pin (validate), but its shape does not fit the binding: doctor loads it
    binding["window"] = 8
    c = rows(write(tmp_path, state, [dev], inference={"models": [binding]}))["model m"]
    assert c.outcome == "fail" and "[batch, 8, 6]" in c.detail, c


_CLEANUP: list[Path] = []


def request_cleanup(path: Path) -> None:
    _CLEANUP.append(path)


@pytest.fixture(autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    while _CLEANUP:
        shutil.rmtree(_CLEANUP.pop(), ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs files owned by another user")
def test_files_are_judged_as_the_service_user_sees_them(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service user here is `nobody`: a CA file only root may read fails, naming it;
    the same file readable by nobody's group passes."""
    monkeypatch.setattr(doctor, "SERVICE_USER", "nobody")
    # pytest's own tmp folders are 0700: a folder everyone may enter, as /etc is
    tmp_path = Path(tempfile.mkdtemp(prefix="edgegw-test-", dir="/var/tmp"))
    request_cleanup(tmp_path)
    state = tmp_path / "state"
    state.mkdir(mode=0o750)
    DeviceKey.load_or_create(state)
    for f in [state, *state.rglob("*")]:  # the state dir is the service user's
        os.chown(f, 65534, 65534)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.ca.read_bytes())
    ca.chmod(0o600)
    tmp_path.chmod(0o755)
    dev = {
        "name": "plc",
        "protocol": "modbus_tcp",
        "host": "127.0.0.1",
        "port": 1,
        "tags": [{"name": "t", "address": 0}],
    }
    cfg = write(tmp_path, state, [dev], uplink={"host": "::1", "tls": {"ca_file": str(ca)}})
    Path(cfg).chmod(0o644)
    c = doctor.check_service_access(doctor.load_config(cfg), cfg)
    assert c.outcome == "fail" and f"uplink.tls.ca_file: {ca} (root, mode 0600)" in c.detail, c
    assert "user nobody (the daemon) cannot read" in c.detail and "chmod 640" in c.fix
    os.chown(ca, 0, 65534)
    ca.chmod(0o640)
    c = doctor.check_service_access(doctor.load_config(cfg), cfg)
    assert c.outcome == "pass", c


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a read-only file system")
def test_a_read_only_state_dir_is_blamed_on_the_mount(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o750)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,mode=0750", "tmpfs", str(ro)], check=True)
    try:
        c = doctor.check_state_dir(ro)
    finally:
        subprocess.run(["umount", str(ro)], check=True)
    assert c.outcome == "fail" and "mounted read-only" in c.detail, c
    assert "remount" in c.fix and "chmod" not in c.fix


def listener(port: int, pki: Pki, crt: Path, key: Path) -> str:
    return (
        f"listener {port} ::1\ncafile {pki.ca}\ncertfile {crt}\nkeyfile {key}\n"
        "allow_anonymous true\n"
    )


def _server_cert(pki: Pki, out: Path, start: dt.datetime, end: dt.datetime) -> tuple[Path, Path]:
    ca = (
        x509.load_pem_x509_certificate(pki.ca.read_bytes()),
        serialization.load_pem_private_key(pki.ca_key.read_bytes(), None),
    )
    cert, key = issue(ca, "broker", ("::1", "localhost"), client=False, valid=(start, end))  # type: ignore[arg-type]
    _write_cert(out / "srv.crt", cert)
    _write_key(out / "srv.key", key)
    return out / "srv.crt", out / "srv.key"


@pytest.mark.parametrize("when", ["future", "expired"])
def test_certificate_dates_name_the_clock(
    tmp_path: Path, state: Path, pki: Pki, when: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A certificate not valid yet, or long expired, on a clock that NTP does not keep:
    the TLS row and the clock row both say to set the clock first, not to get a new CA."""
    now = dt.datetime.now(dt.UTC)
    start, end = (
        (now + dt.timedelta(days=400), now + dt.timedelta(days=800))
        if when == "future"
        else (now - dt.timedelta(days=800), now - dt.timedelta(days=400))
    )
    crt, key = _server_cert(pki, tmp_path, start, end)
    port = free_port("::1")
    conf = listener(port, pki, crt, key)
    monkeypatch.setattr(doctor, "_clock_synchronised", lambda: False)
    monkeypatch.setattr(doctor, "_timedatectl", lambda: {"NTP": "yes", "NTPSynchronized": "no"})
    with Mosquitto(host="::1", workdir=tmp_path / "b", extra_conf=conf):
        wait_listening("::1", port)
        dev = {
            "name": "plc",
            "protocol": "modbus_tcp",
            "host": "127.0.0.1",
            "port": free_port("127.0.0.1"),
            "tags": [{"name": "t", "address": 0}],
        }
        cfg = write(
            tmp_path,
            state,
            [dev],
            uplink={"host": "::1", "port": port, "tls": {"ca_file": str(pki.ca)}},
        )
        c = rows(cfg)
    tls, clock = c["broker TLS"], c["clock"]
    assert tls.outcome == "fail" and "NOT synchronised" in tls.detail, tls
    if when == "future":
        assert f"valid only from {start:%Y-%m-%d}" in tls.detail
        assert "clock is behind" in tls.fix and "not the problem" in tls.fix
    else:
        assert f"expired on {end:%Y-%m-%d}" in tls.detail
        assert "clock is probably wrong" in tls.fix
    assert "CA" not in tls.fix
    assert clock.outcome == "fail" and "set the clock" in clock.fix, clock


def test_an_expired_certificate_on_a_synchronised_clock_is_the_certificate(
    tmp_path: Path, state: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = dt.datetime.now(dt.UTC)
    crt, key = _server_cert(pki, tmp_path, now - dt.timedelta(days=100), now - dt.timedelta(days=1))
    port = free_port("::1")
    conf = listener(port, pki, crt, key)
    monkeypatch.setattr(doctor, "_clock_synchronised", lambda: True)
    with Mosquitto(host="::1", workdir=tmp_path / "b", extra_conf=conf):
        wait_listening("::1", port)
        cfg = write(
            tmp_path,
            state,
            [
                {
                    "name": "plc",
                    "protocol": "modbus_tcp",
                    "host": "127.0.0.1",
                    "port": 1,
                    "tags": [{"name": "t", "address": 0}],
                }
            ],
            uplink={"host": "::1", "port": port, "tls": {"ca_file": str(pki.ca)}},
        )
        tls = rows(cfg)["broker TLS"]
    assert tls.outcome == "fail" and "synchronised by NTP" in tls.detail
    assert "ask the platform team to renew it" in tls.fix


class SlotCheckingPlc:
    """snap7's server accepts any rack and slot; a real PLC refuses a connection request
    (COTP CR) for a TSAP that is not its CPU's. This proxy in front of the simulator does
    what the PLC does: it reads the CR's destination TSAP and hangs up unless it is rack
    0, slot 1 (0x0101); everything else is passed through."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            first = client.recv(4096)
            params, tsap = first[11:], None
            while len(params) >= 2:
                code, n = params[0], params[1]
                if code == 0xC2:
                    tsap = int.from_bytes(params[2 : 2 + n], "big")
                params = params[2 + n :]
            if tsap != 0x0101:
                self.refused += 1
                return  # hang up, as the CPU does for a TSAP it does not serve
            with socket.create_connection(("127.0.0.1", self.target)) as up:
                up.sendall(first)
                pipes = [(client, up), (up, client)]
                for a, b in pipes:
                    threading.Thread(target=_pipe, args=(a, b), daemon=True).start()
                while True:
                    time.sleep(0.2)
                    if client.fileno() < 0 or up.fileno() < 0:
                        return
                    try:
                        if client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                            return
                    except BlockingIOError:
                        continue
                    except OSError:
                        return

    def close(self) -> None:
        self.sock.close()


def _pipe(a: socket.socket, b: socket.socket) -> None:
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass


def test_a_wrong_s7_slot_fails(tmp_path: Path, state: Path, s7: S7Simulator) -> None:
    plc = SlotCheckingPlc(s7.port)
    try:
        dev = {
            "name": "press",
            "protocol": "s7",
            "host": "127.0.0.1",
            "port": plc.port,
            "rack": 0,
            "slot": 1,
            "tags": [{"name": "f", "address": "DB1.DBD0"}],
        }
        c = rows(write(tmp_path, state, [dev]))["device press"]
        assert c.outcome == "pass", c
        dev["slot"] = 3
        c = rows(write(tmp_path, state, [dev]))["device press"]
        assert c.outcome == "fail" and "s7 exchange failed" in c.detail, c
        assert "rack and slot" in c.fix
        assert plc.refused >= 1
    finally:
        plc.close()


# -- Modbus RTU on a serial port --------------------------------------------------------


def test_a_serial_device_reads_its_first_request(
    tmp_path: Path, state: Path, serial_bus: SerialBus
) -> None:
    """A modbus_rtu device is not skipped: the port opens with the configured line
    settings and the first planned request is read from the simulator behind it."""
    r = rows(write(tmp_path, state, [rtu_device(serial_bus.port)]))["device meter"]
    assert r.outcome == "pass", r
    assert f"modbus_rtu {serial_bus.port} (115200 8N1, unit 1)" in r.detail, r
    assert "first request read: 3 tag(s)" in r.detail, r


def test_a_serial_unit_that_does_not_answer_blames_wiring_settings_and_unit(
    tmp_path: Path, state: Path, serial_bus: SerialBus
) -> None:
    r = rows(write(tmp_path, state, [rtu_device(serial_bus.port, unit=9, retries=0)]))
    c = r["device meter"]
    assert c.outcome == "fail" and "3 of 3 tag(s) bad" in c.detail, c
    assert "check the wiring" in c.fix and "115200 8N1" in c.fix and "unit id 9" in c.fix, c


def test_a_missing_serial_port_fails_naming_it(tmp_path: Path, state: Path) -> None:
    port = "/dev/serial/by-id/usb-edgegw-test-no-such-adapter"
    c = rows(write(tmp_path, state, [rtu_device(port)]))["device meter"]
    assert c.outcome == "fail" and f"{port} does not exist" in c.detail, c
    assert "/dev/serial/by-id/" in c.fix and "plugged in" in c.fix, c


@pytest.mark.skipif(os.geteuid() != 0, reason="judges a port as another user (nobody)")
def test_a_serial_port_the_service_user_may_not_open_fails(
    tmp_path: Path, state: Path, serial_bus: SerialBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Doctor run as root, the daemon's user `nobody`: a port only root and its group may
    open (a pty's mode 0620) fails with the path, its owner and mode, and the group to
    join; the same port open to everyone passes, with the real exchange."""
    monkeypatch.setattr(doctor, "SERVICE_USER", "nobody")
    os.chmod(serial_bus.port, 0o620)
    cfg = write(tmp_path, state, [rtu_device(serial_bus.port)])
    c = rows(cfg)["device meter"]
    assert c.outcome == "fail", c
    assert f"user nobody (the daemon) may not read and write {serial_bus.port} (root:" in c.detail
    assert "mode 0620)" in c.detail, c
    assert "sudo usermod -aG dialout nobody" in c.fix and "edgegw-serial.conf" in c.fix, c
    os.chmod(serial_bus.port, 0o666)
    c = rows(cfg)["device meter"]
    assert c.outcome == "pass" and "first request read" in c.detail, c


# -- what validate finds, one row each ----------------------------------------------------


def test_each_preflight_finding_has_its_own_row_and_fix(tmp_path: Path, state: Path) -> None:
    """Overlapping tags, a missing CA file and a wrong model pin: three rows, each named
    after what it is about and with its own fix (not every finding under "tag map" with
    the fix for overlapping registers)."""
    dev = {
        "name": "plc",
        "protocol": "modbus_tcp",
        "host": "127.0.0.1",
        "port": 1,
        "tags": [
            {"name": "a", "address": 0, "type": "float32"},
            {"name": "b", "address": 1},
        ],
    }
    model = {
        "name": "m",
        "model": "default",
        "sha256": "ab" * 32,
        "inputs": ["plc/a", "plc/b"],
        "sample_ms": 1000,
        "window": 4,
        "threshold": {"enter": 1, "exit": 0.5},
    }
    cfg = write(
        tmp_path,
        state,
        [dev],
        uplink={"host": "::1", "port": 1, "tls": {"ca_file": "ca.pem"}},
        inference={"models": [model]},
    )
    r = rows(cfg)
    tags, ca, pin = r["tags of plc"], r["uplink.tls.ca_file"], r["model file m"]
    assert tags.outcome == "warn" and "tag 'b' reads holding register 1" in tags.detail, tags
    assert "off-by-one" in tags.fix, tags
    assert ca.outcome == "fail" and f"{tmp_path / 'ca.pem'} does not exist" in ca.detail, ca
    assert ca.fix.startswith("fix uplink.tls.ca_file, or put the file there"), ca
    assert pin.outcome == "fail" and f"has sha256 {DEFAULT_SHA}" in pin.detail, pin
    assert f"pin it with sha256: {DEFAULT_SHA}" in pin.fix, pin
    assert [c.name for c in r.values() if "off-by-one" in c.fix] == ["tags of plc"]
    assert "tag map" not in r and "config files" not in r


@pytest.mark.skipif(os.geteuid() != 0, reason="makes files owned by another user")
def test_state_files_the_service_may_not_write_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """The service user (`nobody` here) owns its state dir, but one learned map is
    read-only and status.json is a folder: each is named with its fix; fixed, it passes."""
    monkeypatch.setattr(doctor, "SERVICE_USER", "nobody")
    tmp_path = Path(tempfile.mkdtemp(prefix="edgegw-test-", dir="/var/tmp"))
    request_cleanup(tmp_path)
    tmp_path.chmod(0o755)
    state = tmp_path / "state"
    state.mkdir(mode=0o750)
    DeviceKey.load_or_create(state)
    learned = state / "modbus-learned" / "plc.json"
    learned.parent.mkdir()
    learned.write_text("{}\n")
    learned.chmod(0o400)
    (state / "status.json").mkdir()
    for f in [state, *state.rglob("*")]:
        os.chown(f, 65534, 65534)
    dev = {"name": "plc", "protocol": "modbus_tcp", "host": "127.0.0.1", "port": 1}
    cfg = write(tmp_path, state, [{**dev, "tags": [{"name": "t", "address": 0}]}])
    c = doctor.check_state_files(doctor.load_config(cfg))
    assert c.outcome == "fail", c
    assert f"{learned} (nobody, mode 0400): user nobody may not read and write" in c.detail, c
    assert f"{state / 'status.json'} (nobody, mode " in c.detail, c
    assert "a folder where the daemon writes a file" in c.detail, c
    assert (
        f"sudo chmod -R u+rwX {state}" in c.fix and f"sudo rm -r {state / 'status.json'}" in c.fix
    )
    learned.chmod(0o600)
    (state / "status.json").rmdir()
    c = doctor.check_state_files(doctor.load_config(cfg))
    assert c.outcome == "pass" and "nobody's, writable" in c.detail, c
