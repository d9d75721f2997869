"""Clean start failures: everything that can refuse a start (config, drivers, files, models,
the key) is checked before a task starts or a seq is reserved. A refused `edgegw run` exits
2 (systemd does not restart it: RestartPreventExitStatus=2) with one message, and leaves
the state directory byte for byte as it was: no boot counted, no seq reserved, no
unclean-stop notice at the next start, no audit record. Nothing can leave it hanging: 20
refused starts in a row all end on their own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.mosquitto import Mosquitto, free_port
from gateway.status import read_status
from inference.config import SHIPPED_MODELS

from .upstream import REPO, Gateway

REFUSED = 2
DEFAULT_SHA = (SHIPPED_MODELS / "default.onnx.sha256").read_text().split()[0]
INPUTS = "[plc/t0, plc/t1, plc/t2, plc/t3, plc/t4, plc/t5]"


def config(broker_port: int, dead_port: int, extra: str = "", device: str = "") -> str:
    return (
        "gateway: {id: gw-refuse, state_dir: state, flush_window_ms: 100}\n"
        f"uplink: {{host: '::1', port: {broker_port}}}\n" + extra + "devices:\n"
        f"  - name: plc\n    protocol: modbus_tcp\n    host: 127.0.0.1\n    port: {dead_port}\n"
        "    tags:\n"
        + "".join(f"      - {{name: t{i}, address: {i}}}\n" for i in range(6))
        + device
    )


def model(window: int = 16, sha: str = DEFAULT_SHA, file: str = "default") -> str:
    return (
        "inference:\n  models:\n"
        f"    - {{name: m, model: {file}, sha256: {sha}, inputs: {INPUTS},\n"
        f"       sample_ms: 1000, window: {window}, threshold: {{enter: 1, exit: 0.5}}}}\n"
    )


@pytest.fixture
def site(tmp_path: Path, broker: Mosquitto) -> tuple[Path, Callable[..., str]]:
    """A state directory after one clean run with a model (key, root, outbox and audit log
    exist), and a function that writes the config with a change."""
    dead = free_port("127.0.0.1")

    def write(extra: str = "", device: str = "") -> str:
        (tmp_path / "gw.yaml").write_text(config(broker.port, dead, extra, device))
        return str(tmp_path / "gw.yaml")

    write(model())
    gw = Gateway(tmp_path / "gw.yaml", tmp_path / "state", tmp_path / "gw.log")
    try:
        gw.start()
        gw.stop()
    finally:
        gw.cleanup()
    return tmp_path, write


def snapshot(state: Path) -> dict[str, bytes]:
    """Every file of the state directory, byte for byte."""
    return {
        str(p.relative_to(state)): p.read_bytes() for p in sorted(state.rglob("*")) if p.is_file()
    }


def run(
    cfg: str, block: tuple[str, ...] = (), prelude: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`edgegw run`; ``block``: modules made unimportable, as on an installation without
    them (in the config check's child process too: a folder of stand-ins that fail to
    import, first on its path); ``prelude``: code run before it (a seeded fault)."""
    code = (
        "import sys\n"
        + "".join(f"sys.modules[{m!r}] = None\n" for m in block)
        + prelude
        + "from gateway.cli import main\n"
        + f"sys.exit(main(['run', '-c', {cfg!r}]))\n"
    )
    path = [str(REPO)]
    if block:
        blocked = Path(cfg).parent / "blocked-modules"
        for m in block:
            (blocked / m).mkdir(parents=True, exist_ok=True)
            (blocked / m / "__init__.py").write_text(
                f"raise ModuleNotFoundError({f'No module named {m!r} (blocked)'!r}, name={m!r})\n"
            )
        path.insert(0, str(blocked))
    return subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(path)),
        capture_output=True,
        text=True,
        timeout=timeout,  # catches a hang; a refusal takes about as long as the imports
        check=False,
    )


def refused(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == REFUSED, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    err = r.stderr[r.stderr.index("edgegw: ") :]  # after any warnings logged
    assert err.startswith("edgegw: refusing to start: "), r.stderr
    assert "(`edgegw validate" in err
    return err


CAUSES: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    # name: (config extra, extra device, blocked modules, words in the message)
    "model file missing": (model(file="gone.onnx"), "", (), "gone.onnx does not exist"),
    "model pin wrong": (model(sha="ab" * 32), "", (), f"has sha256 {DEFAULT_SHA}"),
    # passes the pin, fails when onnxruntime loads it: the last check before the key
    "model shape wrong": (model(window=8), "", (), "this binding needs [batch, 8, 6]"),
    "onnxruntime missing": (model(), "", ("onnxruntime",), "'onnxruntime' is not installed"),
    "driver missing": (
        "",
        "  - name: ua\n    protocol: opcua\n    endpoint: opc.tcp://[::1]:4840\n"
        "    tags: [{name: t, node: 'ns=2;i=1'}]\n",
        ("asyncua",),
        "protocol opcua (device ua) cannot be used here",
    ),
    "CA file missing": (
        "uplink: {host: '::1', tls: {ca_file: ca.pem}}\n",
        "",
        (),
        "ca.pem does not exist",
    ),
}


@pytest.mark.parametrize("cause", list(CAUSES))
def test_a_refusal_exits_2_and_writes_nothing(
    site: tuple[Path, Callable[..., str]], cause: str
) -> None:
    tmp, write = site
    extra, device, block, words = CAUSES[cause]
    if extra.startswith("uplink:"):  # replaces the uplink line
        cfg = write(device=device)
        text = Path(cfg).read_text().splitlines(keepends=True)
        Path(cfg).write_text(
            text[0] + extra.replace("'::1'", f"'::1', port: {free_port()}") + "".join(text[2:])
        )
    else:
        cfg = write(extra, device)
    before = snapshot(tmp / "state")
    err = refused(run(cfg, block))
    assert words in err, err
    assert snapshot(tmp / "state") == before


def test_the_next_good_start_sees_no_gap(site: tuple[Path, Callable[..., str]]) -> None:
    """Refused starts count no boot: the next good start is the second boot (and the
    outbox is byte for byte unchanged, so no seq was reserved: see above)."""
    tmp, write = site
    for _ in range(3):
        refused(run(write(model(window=8))))
    write(model())
    gw = Gateway(tmp / "gw.yaml", tmp / "state", tmp / "gw2.log")
    try:
        gw.start()
        gw.stop()
    finally:
        gw.cleanup()
    log = gw.text()
    assert "boot 2," in log, log  # one clean run before, this is the second boot


def test_twenty_refused_starts_end_twenty_times(site: tuple[Path, Callable[..., str]]) -> None:
    """The causes that got furthest into the start before (models, drivers, files), in
    turn: each run ends by itself with exit 2 (the timeout in run() catches a hang)."""
    tmp, write = site
    before = snapshot(tmp / "state")
    cases = [
        ("model shape wrong", model(window=8), ()),
        ("model pin wrong", model(sha="cd" * 32), ()),
        ("onnxruntime missing", model(), ("onnxruntime",)),
        ("model file missing", model(file="x.onnx"), ()),
    ]
    ended = 0
    for i in range(20):
        _, extra, block = cases[i % len(cases)]
        r = run(write(extra), block)
        refused(r)
        ended += 1
    assert ended == 20
    assert snapshot(tmp / "state") == before


def test_a_sigterm_while_starting_is_a_clean_stop(site: tuple[Path, Callable[..., str]]) -> None:
    """systemd may stop a unit that is still starting: a SIGTERM that arrives while the
    process is still importing is remembered, and the daemon starts and stops cleanly
    (exit 0, a final status), instead of dying by the signal."""
    _, write = site
    cfg = write(model())
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", "-c", cfg],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    # as soon as the process catches SIGTERM (SigCgt), long before it is ready
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not catches_sigterm(proc.pid):
        time.sleep(0.01)
    assert (read_status(Path(cfg).parent / "state") or {}).get("pid") != proc.pid  # not up
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)  # catches a hang
    assert proc.returncode == 0, out.decode(errors="replace")[-2000:]
    assert b"stop requested while starting" in out


def catches_sigterm(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("SigCgt")), 16)
    return bool(mask & (1 << (signal.SIGTERM - 1)))


# -- after the start began: exit 1 (a restart may cure it) or 2 (a person must fix a file) --

FAILED = 1


def failed(r: subprocess.CompletedProcess[str], *words: str) -> str:
    """Ended by itself with exit 1 and one line saying why; no traceback."""
    assert r.returncode == FAILED, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("edgegw: start failed: "), r.stderr[-3000:]
    for w in words:
        assert w in last, (w, last)
    return last


def test_a_failure_after_every_task_started_ends_the_process(
    site: tuple[Path, Callable[..., str]],
) -> None:
    """The last step of the start, the first status file, fails with an I/O error (seeded:
    a failing SD card is not something a test can make on demand) after the pipeline,
    forwarder, audit uplink, inference and poll tasks all run: Daemon._abort_start ends
    them and closes the outbox, and the process exits 1 by itself with one line; the
    next start is a good one."""
    tmp, write = site
    cfg = write(model())
    seeded = (
        "import errno\n"
        "import gateway.daemon\n"
        "def _eio(state_dir, data):\n"
        "    where = str(state_dir / 'status.json')\n"
        "    raise OSError(errno.EIO, 'Input/output error (seeded)', where)\n"
        "gateway.daemon.write_status = _eio\n"
    )
    # 30 s: a start takes a few seconds even on a loaded machine; a hang would take forever
    r = run(cfg, prelude=seeded, timeout=30)
    assert "polling 1 devices" in r.stderr, r.stderr[-3000:]  # the tasks had started
    failed(r, "Input/output error (seeded)", str(tmp / "state" / "status.json"))
    gw = Gateway(tmp / "gw.yaml", tmp / "state", tmp / "gw2.log")
    try:
        gw.start()
        gw.stop()
    finally:
        gw.cleanup()


def test_a_status_file_made_a_folder_is_refused_after_the_tasks_started(
    site: tuple[Path, Callable[..., str]],
) -> None:
    """status.json is a folder (the daemon's first write of it is the last step of the
    start, after every task started): the process ends by itself with exit 2, a person's
    to fix, naming it; doctor's state files row names it before (test_doctor_exchange)."""
    tmp, write = site
    cfg = write(model())
    status = tmp / "state" / "status.json"
    status.unlink()
    (status / "x").mkdir(parents=True)  # not empty: a rename onto it fails
    r = run(cfg, timeout=30)  # a start takes a few seconds; a hang would not end
    assert "polling 1 devices" in r.stderr, r.stderr[-3000:]  # the tasks had started
    assert r.returncode == REFUSED and "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"edgegw: refusing to start: {status}: a folder where a file"), last


def test_an_audit_log_held_by_another_process_exits_1(
    site: tuple[Path, Callable[..., str]],
) -> None:
    """Another process holds the audit log (another edgegw, or `keys rotate` at that
    moment): the outbox is already open when the start finds it, so this is after the
    start began; the process ends by itself with exit 1, which systemd restarts after
    RestartSec: the cure, once the other process lets go."""
    import fcntl

    from security import AUDIT_FILE

    tmp, write = site
    cfg = write(model())
    with open(tmp / "state" / AUDIT_FILE, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        r = run(cfg, timeout=30)  # a start takes a few seconds; a hang would not end
    failed(r, "the audit log is in use by another process")


def test_a_damaged_key_or_outbox_is_refused_with_2(
    site: tuple[Path, Callable[..., str]],
) -> None:
    """A key file or an outbox that is not what it should be: a person must restore or
    move it, so exit 2 (no restart loop), naming the file, and nothing else written."""
    tmp, write = site
    cfg = write(model())
    state = tmp / "state"
    key = state / "keys" / "device.ed25519.pem"
    good = key.read_bytes()
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    before = snapshot(state)
    r = run(cfg)
    assert r.returncode == REFUSED and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"edgegw: refusing to start: {key}")
    assert snapshot(state) == before
    key.write_bytes(good)
    (state / "outbox.db").write_bytes(b"not an outbox " * 100)
    before = snapshot(state)
    r = run(cfg)
    assert r.returncode == REFUSED and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"edgegw: refusing to start: {state / 'outbox.db'}: not a usable")
    assert "move" in last
    assert snapshot(state) == before
