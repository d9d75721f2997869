"""`edgegw run` refuses a device key it cannot justify from the enrolled root: a missing key
where an identity exists, a foreign key, an altered chain. It exits 2 (systemd does not
restart it: RestartPreventExitStatus=2) at once, with a message naming the files and the
fix, and before the outbox is opened: no seq reserved, no boot counted, no notice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.mosquitto import Mosquitto, free_port
from security import AUDIT_FILE, DeviceKey
from security.keyring import ROOT_FILE, rotate

from .upstream import REPO, Gateway

REFUSED = 2


@pytest.fixture
def site(tmp_path: Path, broker: Mosquitto) -> Path:
    """A state directory after one clean run (key, root, outbox and audit log exist)."""
    dead = free_port("127.0.0.1")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        "gateway: {id: gw-keys, state_dir: state, flush_window_ms: 100}\n"
        f"uplink: {{host: '::1', port: {broker.port}}}\n"
        "devices:\n"
        f"  - {{name: plc, protocol: modbus_tcp, host: 127.0.0.1, port: {dead},\n"
        "      tags: [{name: t, address: 0, type: uint16}]}\n"
    )
    gw = Gateway(cfg, tmp_path / "state", tmp_path / "gw.log")
    try:
        gw.start()
        gw.stop()
    finally:
        gw.cleanup()
    return tmp_path


def files(state: Path) -> dict[str, bytes]:
    """The outbox (with any -wal/-shm) and the audit log, byte for byte."""
    return {p.name: p.read_bytes() for p in [*sorted(state.glob("outbox*")), state / AUDIT_FILE]}


def refused(site: Path) -> str:
    """Run `edgegw run`; it must exit 2 and leave the outbox and audit log untouched."""
    state = site / "state"
    before = files(state)
    assert any(n.startswith("outbox") for n in before)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "-c", str(site / "gw.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,  # catches a hang; a refusal takes about as long as the imports
        check=False,
    )
    assert r.returncode == REFUSED, r.stderr
    assert files(state) == before  # no boot, no seq, no notice, no audit record
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("edgegw: refusing to start: "), r.stderr
    return r.stderr


def test_a_missing_key_with_a_root_is_refused(site: Path) -> None:
    state = site / "state"
    priv = state / DeviceKey.PRIVATE_KEY_FILE
    priv.unlink()
    err = refused(site)
    assert str(priv) in err and "missing" in err and ROOT_FILE in err
    assert "Restore" in err and "keys init" in err
    assert not priv.exists()  # no new identity behind the user's back


def test_a_foreign_key_is_refused(site: Path, tmp_path: Path) -> None:
    state = site / "state"
    root = DeviceKey.load(state / DeviceKey.PRIVATE_KEY_FILE)
    other, _ = DeviceKey.load_or_create(tmp_path / "elsewhere")
    priv = state / DeviceKey.PRIVATE_KEY_FILE
    priv.write_bytes((tmp_path / "elsewhere" / DeviceKey.PRIVATE_KEY_FILE).read_bytes())
    err = refused(site)
    assert str(priv) in err and other.kid.hex() in err and root.kid.hex() in err
    assert str(state / ROOT_FILE) in err and "not reached" in err


def test_an_altered_key_certificate_is_refused(site: Path) -> None:
    state = site / "state"
    rot = rotate(state)
    cert = bytearray(rot.certificate_file.read_bytes())
    cert[-1] ^= 1
    rot.certificate_file.write_bytes(bytes(cert))
    err = refused(site)
    assert str(rot.certificate_file) in err and "does not verify" in err
