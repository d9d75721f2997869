"""The daemon and the tools as an unprivileged user (`nobody`, through setpriv), and as
root on a state directory that belongs to the service user.

- Every command that meets a file it may not read or write says which path, who owns it,
  who we are and what fixes it, in one line: never a traceback.
- The daemon runs as an unprivileged user on its own state directory.
- Commands run as root there (`keys rotate`, `keys csr`, `read` of an OPC UA device, which
  writes its PKI) leave every file they create to the directory's owner, so the service
  can still read its own key afterwards.

Runs as root only (setpriv needs it); the venv must be usable by other users (it is when
it lives outside /root, as `make setup` makes it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.mosquitto import Mosquitto, free_port
from gateway.status import read_status
from tests.conftest import REPO

NOBODY = 65534
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="setpriv needs root"),
    pytest.mark.usefixtures("reachable_by_others"),
]


def as_nobody(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            sys.executable,
            "-m",
            "gateway.cli",
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=dict(os.environ, PYTHONPATH=str(REPO), HOME="/nonexistent"),
    )


def as_root(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


@pytest.fixture
def site() -> Iterator[Path]:
    """A folder everyone may enter (pytest's own are 0700), with a config whose state
    directory is root's, mode 0700, holding a device key."""
    d = Path(tempfile.mkdtemp(prefix="edgegw-unpriv-", dir="/var/tmp"))
    d.chmod(0o755)
    probe = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            sys.executable,
            "-c",
            "import gateway",
        ],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    if probe.returncode != 0:
        pytest.fail(f"user nobody cannot run {sys.executable}: {probe.stderr[-500:]}")
    dead = free_port("127.0.0.1")
    (d / "gw.yaml").write_text(
        "gateway: {id: gw-u, state_dir: state, flush_window_ms: 100}\n"
        f"uplink: {{host: '::1', port: {free_port()}}}\n"
        "metrics: {enabled: false}\n"
        "devices:\n"
        f"  - {{name: plc, protocol: modbus_tcp, host: 127.0.0.1, port: {dead},\n"
        "      tags: [{name: t, address: 0}]}\n"
        f"  - {{name: ua, protocol: opcua, endpoint: 'opc.tcp://127.0.0.1:{dead}/x',\n"
        "      timeout_ms: 500, tags: [{name: t, node: 'ns=2;i=1'}]}\n"
    )
    (d / "gw.yaml").chmod(0o644)
    state = d / "state"
    state.mkdir(mode=0o700)
    assert as_root("keys", "init", "--state-dir", str(state)).returncode == 0
    yield d
    shutil.rmtree(d, ignore_errors=True)


def one_clear_line(r: subprocess.CompletedProcess[str], *words: str) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("edgegw: ")]
    assert lines, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)
    return lines[-1]


@pytest.mark.parametrize(
    "argv",
    [
        ("keys", "show", "-c", "{cfg}"),
        ("keys", "rotate", "-c", "{cfg}"),
        ("keys", "csr", "-c", "{cfg}"),
        ("keys", "export-public", "-c", "{cfg}"),
        ("read", "-c", "{cfg}", "--device", "ua"),
        ("status", "-c", "{cfg}", "--once"),
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_a_tool_without_rights_says_path_owner_and_fix(site: Path, argv: tuple[str, ...]) -> None:
    cfg = str(site / "gw.yaml")
    r = as_nobody(*(a.format(cfg=cfg) for a in argv))
    assert r.returncode != 0
    line = one_clear_line(r, str(site / "state"))
    assert "nobody" in line or "permission denied" in line.lower(), line
    assert "sudo" in line or "chown" in line or "group" in line, line


def test_doctor_without_rights_shows_every_row(site: Path) -> None:
    r = as_nobody("doctor", "-c", str(site / "gw.yaml"), "--timeout", "1")
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout, r.stderr
    out = r.stdout
    assert "FAIL  device key" in out or "WARN  device key" in out, out
    assert "permission denied" in out.lower() and "sudo" in out, out
    assert "broker IPv6" in out and "device plc" in out  # the other rows still ran


def test_validate_of_a_config_it_may_not_read(site: Path) -> None:
    (site / "gw.yaml").chmod(0o600)
    r = as_nobody("validate", str(site / "gw.yaml"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"{site / 'gw.yaml'}: permission denied for user nobody ({site / 'gw.yaml'} belongs "
        "to root:root, mode 0600): run it with sudo"
    ], r.stderr


def test_the_daemon_refuses_a_state_dir_it_may_not_write(site: Path) -> None:
    r = as_nobody("run", "-c", str(site / "gw.yaml"))
    assert r.returncode == 2, r.stderr
    line = one_clear_line(r, "refusing to start")
    assert f"sudo chown -R nobody:nogroup {site / 'state'}" in r.stderr, r.stderr
    assert not (site / "state" / "outbox.db").exists()
    assert line


def test_the_daemon_runs_as_an_unprivileged_user(site: Path) -> None:
    """The state dir belongs to nobody: the daemon starts, writes its status, and stops
    cleanly on SIGTERM; every file it made is nobody's."""
    state = site / "state"
    shutil.rmtree(state)
    state.mkdir(mode=0o750)
    os.chown(state, NOBODY, NOBODY)
    with Mosquitto(host="::1", workdir=site / "broker") as broker:
        cfg = (site / "gw.yaml").read_text()
        cfg = cfg.replace(
            cfg.split("uplink: ")[1].split("\n")[0], f"{{host: '::1', port: {broker.port}}}"
        )
        (site / "gw.yaml").write_text(cfg)
        log = open(site / "run.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [
                "setpriv",
                f"--reuid={NOBODY}",
                f"--regid={NOBODY}",
                "--clear-groups",
                sys.executable,
                "-m",
                "gateway.cli",
                "run",
                "-c",
                str(site / "gw.yaml"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        try:
            deadline = time.monotonic() + 30  # generous: a cold start on a loaded machine
            while time.monotonic() < deadline:
                st = read_status(state) or {}
                if st.get("pid") == proc.pid or proc.poll() is not None:
                    break
                time.sleep(0.2)
            assert proc.poll() is None, (site / "run.log").read_text()
            proc.terminate()
            assert proc.wait(60) == 0, (site / "run.log").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    assert (read_status(state) or {}).get("final") is True
    owners = {p.relative_to(state): p.stat().st_uid for p in state.rglob("*")}
    assert owners and all(uid == NOBODY for uid in owners.values()), owners


def test_root_keeps_the_state_dir_owner(site: Path) -> None:
    """`keys rotate`, `keys csr` and an OPC UA `read` run as root on nobody's state dir:
    the files they create are nobody's, and nobody can use them afterwards."""
    state = site / "state"
    for p in [state, *state.rglob("*")]:
        os.chown(p, NOBODY, NOBODY)
    assert as_root("keys", "rotate", "-c", str(site / "gw.yaml")).returncode == 0
    assert (
        as_root("keys", "csr", "-c", str(site / "gw.yaml"), "-o", str(site / "gw.csr")).returncode
        == 0
    )
    as_root("read", "-c", str(site / "gw.yaml"), "--device", "ua")  # unreachable: exit 1
    assert (state / "pki").exists()  # the OPC UA client made its certificate as root
    root_owned = [str(p) for p in state.rglob("*") if p.stat().st_uid == 0]
    assert root_owned == [], root_owned
    r = as_nobody("keys", "show", "-c", str(site / "gw.yaml"))
    assert r.returncode == 0 and "rotations:" in r.stdout, r.stderr


def test_a_driver_file_the_service_may_not_use_is_a_device_error(site: Path) -> None:
    """An OPC UA PKI folder left to root (0700) in the service's state dir: the device is
    DOWN with the path and the fix in its error, and the daemon runs on; no dead task."""
    state = site / "state"
    shutil.rmtree(state)
    state.mkdir(mode=0o750)
    os.chown(state, NOBODY, NOBODY)
    (state / "pki" / "ua").mkdir(parents=True, mode=0o700)  # root's, as `sudo edgegw read` left it
    with Mosquitto(host="::1", workdir=site / "broker") as broker:
        cfg = (site / "gw.yaml").read_text()
        old = cfg.split("uplink: ")[1].split("\n")[0]
        (site / "gw.yaml").write_text(cfg.replace(old, f"{{host: '::1', port: {broker.port}}}"))
        log = open(site / "run.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [
                "setpriv",
                f"--reuid={NOBODY}",
                f"--regid={NOBODY}",
                "--clear-groups",
                sys.executable,
                "-m",
                "gateway.cli",
                "run",
                "-c",
                str(site / "gw.yaml"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        try:
            err = ""
            deadline = time.monotonic() + 30  # generous: a cold start on a loaded machine
            while time.monotonic() < deadline and proc.poll() is None:
                dev = ((read_status(state) or {}).get("devices") or {}).get("ua") or {}
                err = dev.get("last_error") or ""
                if "permission denied" in err:
                    break
                time.sleep(0.2)
            assert proc.poll() is None, (site / "run.log").read_text()
            st = read_status(state) or {}
            assert all(st["tasks"].values()), st["tasks"]  # every task alive
            proc.terminate()
            assert proc.wait(60) == 0, (site / "run.log").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    assert f"{state / 'pki' / 'ua'}" in err and "permission denied for user nobody" in err, err
    assert "sudo chown -R nobody:nogroup" in err, err
    assert "Traceback" not in (site / "run.log").read_text()


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
