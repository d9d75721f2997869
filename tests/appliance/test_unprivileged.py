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

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from gateway.mosquitto import Mosquitto, free_port
from gateway.status import read_status
from tests.conftest import REPO

NOBODY = 65534
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="setpriv needs root"),
    pytest.mark.usefixtures("reachable_by_others"),
]


AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def run_daemon_as_nobody(config: Path, log: IO[bytes]) -> subprocess.Popen[bytes]:
    """`edgegw run -c CONFIG` as nobody, its output to ``log``."""
    return subprocess.Popen(
        [*AS_NOBODY, sys.executable, "-m", "gateway.cli", "run", "-c", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def as_nobody(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AS_NOBODY, sys.executable, "-m", "gateway.cli", *argv],
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
        [*AS_NOBODY, sys.executable, "-c", "import gateway"],
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
        proc = run_daemon_as_nobody(site / "gw.yaml", log)
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
        proc = run_daemon_as_nobody(site / "gw.yaml", log)
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


def test_audit_segments_and_their_archive_belong_to_the_service_user(site: Path) -> None:
    """The daemon as nobody with tiny audit segments and ``archive: move``: the segment
    files, the archive folder and the segments moved there are nobody's, files 0600 and
    folders 0750, like the rest of the state dir."""
    state = site / "state"
    shutil.rmtree(state)
    state.mkdir(mode=0o750)
    os.chown(state, NOBODY, NOBODY)
    with Mosquitto(host="::1", workdir=site / "broker") as broker:
        cfg = (site / "gw.yaml").read_text()
        old = cfg.split("uplink: ")[1].split("\n")[0]
        cfg = cfg.replace(old, f"{{host: '::1', port: {broker.port}}}")
        cfg += "audit: {checkpoint_every: 1, segment_mib: 0.002, archive: move}\n"
        (site / "gw.yaml").write_text(cfg)
        log = open(site / "run.log", "wb")  # noqa: SIM115 - closed below
        proc = run_daemon_as_nobody(site / "gw.yaml", log)
        archive = state / "audit-archive"
        try:
            deadline = time.monotonic() + 30  # generous: a cold start on a loaded machine
            while time.monotonic() < deadline and proc.poll() is None:
                if (read_status(state) or {}).get("pid") == proc.pid:
                    break
                time.sleep(0.2)
            deadline = time.monotonic() + 90  # bounds a hang only
            while len(list(archive.rglob("*.cborseq"))) < 2:
                assert proc.poll() is None, (site / "run.log").read_text()
                assert time.monotonic() < deadline, (site / "run.log").read_text()
                proc.send_signal(signal.SIGHUP)  # each reload: an audit record
                time.sleep(0.3)
            proc.terminate()
            assert proc.wait(60) == 0, (site / "run.log").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    made = [state / n for n in os.listdir(state) if n.startswith("audit.")]
    moved = list(archive.rglob("*.cborseq"))
    assert len(moved) >= 2 and any(".0000" in p.name for p in made), made
    for p in [*made, *moved, archive, *archive.iterdir()]:
        st = p.stat()
        assert st.st_uid == NOBODY, (p, st.st_uid)
        want = 0o750 if p.is_dir() else 0o600
        assert st.st_mode & 0o777 == want, (p, oct(st.st_mode))


def test_import_csv_without_rights_says_path_owner_and_fix(site: Path) -> None:
    """A sheet it may not read, a folder it may not write: the path, the owner, the fix
    (was a bare "Permission denied")."""
    sheet = site / "map.csv"
    sheet.write_text("name,register\na,40001\n")
    sheet.chmod(0o600)
    r = as_nobody("import-csv", str(sheet), "--host", "::1")
    assert r.returncode == 2
    assert one_clear_line(r) == (
        f"edgegw: import-csv: {sheet}: permission denied for user nobody ({sheet} belongs "
        "to root:root, mode 0600): run it with sudo"
    )
    sheet.chmod(0o644)
    out = site / "state" / "meter.yaml"  # root's, mode 0700
    r = as_nobody("import-csv", str(sheet), "--host", "::1", "-o", str(out))
    assert r.returncode == 1 and not out.exists()
    assert one_clear_line(r) == (
        f"edgegw: import-csv: {out}: permission denied for user nobody ({site / 'state'} "
        "belongs to root:root, mode 0700): run it with sudo"
    )
