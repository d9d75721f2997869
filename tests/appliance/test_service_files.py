"""Files the service must write, judged as the service user (`nobody`, through setpriv)
sees them, by `validate`, `doctor` and `run`:

- an outbox folder it may not write, or may not create, is refused by all three with the
  path and the fix (before, `run` failed at its first write: exit 1, a restart loop);
- files left to root in its state directory (the outbox and its -wal, the audit log,
  status.json, the OPC UA PKI, a learned map) are each named by doctor with the chown,
  and `run` refuses to start;
- a serial port it may not open fails doctor's device row, and is read through once open;
- a file it may not read is a row of its own with its own fix.

Runs as root only (setpriv needs it), like test_unprivileged.py, whose helpers it uses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.mosquitto import Mosquitto, free_port
from gateway.status import read_status
from tests.conftest import REPO

from .test_unprivileged import NOBODY, as_nobody, one_clear_line, site

__all__ = ["site"]  # the fixture, used by name
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="setpriv needs root"),
    pytest.mark.usefixtures("reachable_by_others"),
]


def snapshot(state: Path) -> dict[str, bytes]:
    """Every file of a directory, byte for byte."""
    return {str(p.relative_to(state)): p.read_bytes() for p in state.rglob("*") if p.is_file()}


def give_to_nobody(*paths: Path) -> None:
    for top in paths:
        for p in [top, *top.rglob("*")]:
            os.chown(p, NOBODY, NOBODY)


@pytest.mark.parametrize("missing", [False, True], ids=["not writable", "missing, not creatable"])
def test_an_outbox_folder_the_service_may_not_write_is_refused(
    site: Path, missing: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """outbox.path on a partition of its own whose folder is root's (or is missing, in a
    folder of root's): validate exits 2, doctor fails the row, and run refuses with exit
    2 before anything is written, each with the path and the fix, instead of the daemon
    failing at its first write (exit 1, a restart loop under systemd)."""
    from gateway.commands import doctor

    state = site / "state"
    give_to_nobody(state)
    spool = site / "spool"
    spool.mkdir(mode=0o755)  # root's, as a freshly mounted partition is
    folder = spool / "gw" if missing else spool
    cfg = site / "gw.yaml"
    cfg.write_text(cfg.read_text() + f"outbox: {{path: {folder / 'outbox.db'}}}\n")
    fix = (
        f"sudo install -d -o nobody -g nogroup -m 750 {folder}"
        if missing
        else f"sudo chown nobody:nogroup {folder}"
    )
    v = as_nobody("validate", str(cfg))
    assert v.returncode == 2 and v.stdout == "" and "Traceback" not in v.stderr, v.stderr
    assert f"{cfg}:" in v.stderr and "outbox.path: " in v.stderr and fix in v.stderr, v.stderr
    assert f"may not write {spool} (root:root, mode 0755)" in v.stderr, v.stderr
    d = as_nobody("doctor", "-c", str(cfg), "--json", "--timeout", "1")
    row = {c["name"]: c for c in json.loads(d.stdout)}["outbox path"]
    assert row["outcome"] == "fail" and fix in row["fix"], row
    # doctor run as root judges the folder as the service user sees it
    monkeypatch.setattr(doctor, "SERVICE_USER", "nobody")
    c = {c.name: c for c in doctor.run_checks(str(cfg), timeout=1)}["outbox path"]
    assert c.outcome == "fail" and "user nobody (the daemon) may not" in c.detail, c
    assert fix in c.fix, c
    before = snapshot(state)
    r = as_nobody("run", "-c", str(cfg))
    assert r.returncode == 2, r.stderr
    one_clear_line(r, "refusing to start", "outbox.path: ", fix)
    assert list(spool.iterdir()) == [] and snapshot(state) == before


def run_as_root_then_give_the_top_folder_away(site: Path) -> Path:
    """The classic trap: the daemon (or a tool) once ran as root on a root-owned state
    dir, then only the folder itself was given to the service user (chown without -R).
    Every file in it stays root's: the outbox and its -wal, the audit log, status.json,
    the OPC UA PKI, a learned Modbus map."""
    state = site / "state"
    with Mosquitto(host="::1", workdir=site / "broker") as broker:
        cfg = (site / "gw.yaml").read_text()
        old = cfg.split("uplink: ")[1].split("\n")[0]
        (site / "gw.yaml").write_text(cfg.replace(old, f"{{host: '::1', port: {broker.port}}}"))
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(site / "gw.yaml")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        try:
            deadline = time.monotonic() + 30  # generous: a cold start on a loaded machine
            while time.monotonic() < deadline and proc.poll() is None:
                if (read_status(state) or {}).get("pid") == proc.pid and (state / "pki").exists():
                    break
                time.sleep(0.2)
            assert proc.poll() is None
            proc.kill()  # a crash: the -wal and -shm stay
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    learned = state / "modbus-learned"
    learned.mkdir()
    (learned / "plc.json").write_text("{}\n")  # as the driver writes it, as root
    os.chown(state, NOBODY, NOBODY)
    return state


def test_files_left_to_root_in_the_state_dir_fail_doctor_and_refuse_run(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """doctor names every file the service must write but may not (root's), with the
    chown that fixes it, run as the service user or as root for it; the daemon refuses
    to start (exit 2) rather than fail at the outbox."""
    from gateway.commands import doctor

    state = run_as_root_then_give_the_top_folder_away(site)
    must = [
        state / "outbox.db",
        state / "outbox.db-wal",
        state / "audit.cborseq",
        state / "status.json",
        state / "pki",
        state / "modbus-learned",
    ]
    assert all(p.exists() and p.stat().st_uid == 0 for p in must), must
    fix = f"sudo chown -R nobody:nogroup {state}"
    d = as_nobody("doctor", "-c", str(site / "gw.yaml"), "--json", "--timeout", "1")
    assert "Traceback" not in d.stderr, d.stderr
    row = {c["name"]: c for c in json.loads(d.stdout)}["state files"]
    assert row["outcome"] == "fail" and fix in row["fix"], row
    assert f"{state / 'outbox.db'} (root, mode 0644)" in row["detail"], row
    hidden = row["detail"].split("cannot look into ")[1]  # root's folders, mode 0700
    assert f"{state / 'keys'}" in hidden and "permission denied" in hidden, row
    monkeypatch.setattr(doctor, "SERVICE_USER", "nobody")  # root sees every file
    c = {c.name: c for c in doctor.run_checks(str(site / "gw.yaml"), timeout=1)}["state files"]
    assert c.outcome == "fail" and fix in c.fix, c
    for p in must:  # each named; what is in a folder of root's is counted with it
        assert f"\n{p} (root, mode " in c.detail, (p, c.detail)
    assert "belongs to root, the daemon runs as nobody" in c.detail
    assert "(and 1 inside)" in c.detail and "keys/device.ed25519.pem" not in c.detail
    r = as_nobody("run", "-c", str(site / "gw.yaml"))
    assert r.returncode == 2, r.stderr
    one_clear_line(r, "refusing to start", str(state / "outbox.db"), fix)
    # after the fix, both are content
    give_to_nobody(state)
    c = {c.name: c for c in doctor.run_checks(str(site / "gw.yaml"), timeout=1)}["state files"]
    assert c.outcome == "pass" and "nobody's, writable" in c.detail, c


def test_doctor_as_the_service_user_reads_a_serial_device(site: Path) -> None:
    """A serial port the user may not open (the kernel refuses: a pty is its opener's,
    mode 0620) fails with the port and the group to join; opened to everyone, doctor
    reads the first request through it as that user."""
    pytest.importorskip("serial", reason="pyserial is not installed (pyproject.toml)")
    import yaml

    from tests.appliance.conftest import SerialBus, rtu_device

    give_to_nobody(site / "state")
    bus = SerialBus()
    try:
        data = yaml.safe_load((site / "gw.yaml").read_text())
        data["devices"] = [rtu_device(bus.port)]
        (site / "gw.yaml").write_text(yaml.safe_dump(data))
        os.chmod(bus.port, 0o620)
        d = as_nobody("doctor", "-c", str(site / "gw.yaml"), "--json", "--timeout", "1")
        row = {c["name"]: c for c in json.loads(d.stdout)}["device meter"]
        assert row["outcome"] == "fail", row
        assert f"user nobody (the daemon) may not read and write {bus.port}" in row["detail"]
        assert "dialout" in row["fix"], row
        os.chmod(bus.port, 0o666)
        d = as_nobody("doctor", "-c", str(site / "gw.yaml"), "--json", "--timeout", "1")
        row = {c["name"]: c for c in json.loads(d.stdout)}["device meter"]
        assert row["outcome"] == "pass" and "first request read: 3 tag(s)" in row["detail"], row
    finally:
        bus.close()


def test_a_file_only_root_may_read_is_its_own_row_with_its_own_fix(site: Path) -> None:
    """Doctor as an unprivileged user: the CA file it may not read is a warning in the
    row of that file, saying to run doctor with sudo; not a "tag map" row with the fix
    for overlapping registers."""
    ca = site / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    ca.chmod(0o600)
    cfg = (site / "gw.yaml").read_text()
    old = cfg.split("uplink: ")[1].split("\n")[0]
    (site / "gw.yaml").write_text(
        cfg.replace(old, f"{{host: '::1', port: {free_port()}, tls: {{ca_file: {ca}}}}}")
    )
    d = as_nobody("doctor", "-c", str(site / "gw.yaml"), "--json", "--timeout", "1")
    rows = {c["name"]: c for c in json.loads(d.stdout)}
    assert "uplink.tls.ca_file" in rows, d.stdout[:2500]
    row = rows["uplink.tls.ca_file"]
    assert row["outcome"] == "warn" and f"{ca} is not readable by you (nobody)" in row["detail"]
    assert "sudo edgegw doctor" in row["fix"] and "register" not in row["fix"], row
    assert "tag map" not in rows
