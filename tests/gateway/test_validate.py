"""`edgegw validate` checks what the files can tell beyond the syntax, so that a config it
passes does not fail at `edgegw run`: the files it names (CA, client certificate and key,
password file, models and their pins), the drivers and libraries it needs, and tags that
read the same registers (a warning naming both places)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from inference.config import SHIPPED_MODELS
from tests.conftest import REPO
from tests.tlscerts import make_pki

DEFAULT_SHA = (SHIPPED_MODELS / "default.onnx.sha256").read_text().split()[0]


def validate(cfg: Path, block: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run `edgegw validate` in a fresh interpreter; ``block``: modules made unimportable
    there, as on an installation without them."""
    code = (
        "import sys\n"
        + "".join(f"sys.modules[{m!r}] = None\n" for m in block)
        + "from gateway.cli import main\n"
        + f"sys.exit(main(['validate', {str(cfg)!r}]))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def write(tmp_path: Path, body: str, devices: str | None = None) -> Path:
    f = tmp_path / "c.yaml"
    f.write_text(
        "gateway: {id: gw, state_dir: state}\n"
        + body
        + "devices:\n"
        + (
            devices
            or "  - name: plc\n    protocol: modbus_tcp\n    host: 127.0.0.1\n"
            "    tags: [{name: t, address: 0}]\n"
        )
    )
    return f


MODEL = """\
inference:
  models:
    - name: m
      model: {model}
      sha256: {sha}
      inputs: [plc/t]
      sample_ms: 1000
      window: 4
      threshold: {{enter: 1, exit: 0.5}}
"""


def test_a_missing_ca_file_is_an_error_at_its_line(tmp_path: Path) -> None:
    f = write(tmp_path, "uplink:\n  tls: {ca_file: ca.pem}\n")
    r = validate(f)
    assert r.returncode == 2, r.stderr
    assert f"{f}:3:18: uplink.tls.ca_file: {tmp_path / 'ca.pem'} does not exist" in r.stderr
    assert "would stop `edgegw run`" in r.stderr and "Traceback" not in r.stderr


def test_tls_files_must_be_what_they_say(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    f = write(tmp_path, "uplink:\n  tls: {ca_file: junk.pem}\n")
    r = validate(f)
    assert r.returncode == 2 and "uplink.tls.ca_file:" in r.stderr, r.stderr
    assert "holds no usable CA certificate" in r.stderr
    # a client key that is not the certificate's
    f = write(
        tmp_path,
        f"uplink:\n  tls: {{ca_file: {pki.ca}, cert_file: {pki.client_cert}, "
        f"key_file: {pki.server_key}}}\n",
    )
    r = validate(f)
    assert r.returncode == 2 and "uplink.tls.key_file:" in r.stderr, r.stderr
    assert "does not belong to the certificate" in r.stderr
    f = write(
        tmp_path,
        f"uplink:\n  tls: {{ca_file: {pki.ca}, cert_file: {pki.client_cert}, "
        f"key_file: {pki.client_key}}}\n",
    )
    r = validate(f)
    assert r.returncode == 0, r.stderr


def test_the_password_file_is_checked_as_the_daemon_reads_it(tmp_path: Path) -> None:
    body = "uplink:\n  username: gw\n  password_file: pw\n"
    r = validate(write(tmp_path, body))
    assert (
        r.returncode == 2 and "uplink.password_file:" in r.stderr and "does not exist" in (r.stderr)
    )
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    pw.chmod(0o644)
    r = validate(write(tmp_path, body))
    assert r.returncode == 2 and "readable by everyone" in r.stderr, r.stderr
    pw.chmod(0o600)
    r = validate(write(tmp_path, body))
    assert r.returncode == 0, r.stderr
    assert "secret" not in r.stdout + r.stderr


def test_a_missing_model_and_a_wrong_pin_are_errors(tmp_path: Path) -> None:
    r = validate(write(tmp_path, MODEL.format(model="absent.onnx", sha=DEFAULT_SHA)))
    assert r.returncode == 2, r.stderr
    assert f"inference.models[0].model: {tmp_path / 'absent.onnx'} does not exist" in r.stderr
    r = validate(write(tmp_path, MODEL.format(model="nosuch", sha=DEFAULT_SHA)))
    assert r.returncode == 2 and "no shipped model nosuch; shipped: default" in r.stderr
    wrong = "ab" * 32
    r = validate(write(tmp_path, MODEL.format(model="default", sha=wrong)))
    assert r.returncode == 2, r.stderr
    assert "inference.models[0].sha256:" in r.stderr
    assert f"has sha256 {DEFAULT_SHA} but the config pins {wrong}" in r.stderr
    assert f"pin it with sha256: {DEFAULT_SHA}" in r.stderr


def test_a_right_pin_passes(tmp_path: Path) -> None:
    devices = "  - name: plc\n    protocol: modbus_tcp\n    host: 127.0.0.1\n    tags:\n" + "".join(
        f"      - {{name: t{i}, address: {i}}}\n" for i in range(6)
    )
    body = MODEL.format(model="default", sha=DEFAULT_SHA).replace(
        "[plc/t]", "[plc/t0, plc/t1, plc/t2, plc/t3, plc/t4, plc/t5]"
    )
    r = validate(write(tmp_path, body, devices))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    ("protocol", "device", "module", "extra"),
    [
        (
            "opcua",
            "  - name: ua\n    protocol: opcua\n    endpoint: opc.tcp://[::1]:4840\n"
            "    tags: [{name: t, node: 'ns=2;i=1'}]\n",
            "asyncua",
            "opcua",
        ),
        (
            "s7",
            "  - name: press\n    protocol: s7\n    host: 127.0.0.1\n"
            "    tags: [{name: t, address: DB1.DBW0}]\n",
            "snap7",
            "s7",
        ),
    ],
)
def test_a_protocol_whose_library_is_missing_is_refused(
    tmp_path: Path, protocol: str, device: str, module: str, extra: str
) -> None:
    f = write(tmp_path, "", device)
    assert validate(f).returncode == 0
    r = validate(f, block=(module,))
    assert r.returncode == 2, r.stderr
    assert f"devices[0].protocol: protocol {protocol}" in r.stderr
    assert f"the Python module {module!r} is not installed" in r.stderr
    assert f"pip install 'edgegw[{extra}]'" in r.stderr
    assert "Traceback" not in r.stderr


def test_models_without_onnxruntime_are_refused(tmp_path: Path) -> None:
    r = validate(
        write(tmp_path, MODEL.format(model="default", sha=DEFAULT_SHA)), block=("onnxruntime",)
    )
    assert r.returncode == 2
    assert "inference.models: 1 model(s) are bound but the inference engine cannot" in r.stderr
    assert "pip install 'edgegw[inference]'" in r.stderr


def _hint_with_build_info(tmp_path: Path, info: str, extra: str, what: str) -> str:
    from gateway import preflight

    preflight.build_info.cache_clear()
    try:
        preflight.BUILD_INFO = tmp_path / "build_info.json"
        preflight.BUILD_INFO.write_text(info)
        return preflight.install_hint(extra, what)
    finally:
        preflight.BUILD_INFO = Path(preflight.__file__).with_name("build_info.json")
        preflight.build_info.cache_clear()


def test_a_package_built_without_a_part_says_so_not_the_architecture(tmp_path: Path) -> None:
    """An amd64 package built with `--extras none` (build_info.json as images/build-deb.sh
    writes it): the part was the builder's choice, so the advice is the full package, not
    another architecture."""
    hint = _hint_with_build_info(
        tmp_path,
        '{"package": "deb", "arch": "amd64", "extras": "none", "parts": [],'
        ' "left_out": {"opcua": "images/build-deb.sh --extras none",'
        ' "s7": "images/build-deb.sh --extras none",'
        ' "inference": "images/build-deb.sh --extras none"},'
        ' "unavailable": {}, "full_on": ["amd64", "arm64"]}',
        "opcua",
        "OPC UA (asyncua)",
    )
    assert hint.startswith(
        "this edgegw package (amd64) was built without OPC UA (asyncua) "
        "(images/build-deb.sh --extras none); install the package built with every part"
    ), hint
    assert "architecture" not in hint and "pip install" not in hint


def test_a_part_with_no_build_for_the_architecture_says_so(tmp_path: Path) -> None:
    """A part no package of this architecture can have (onnxruntime on armv7l): the
    message says so and names the architectures that have it, not pip."""
    hint = _hint_with_build_info(
        tmp_path,
        '{"arch": "armhf", "left_out": {}, "unavailable": {"inference":'
        ' "onnxruntime has no armv7l build"}, "full_on": ["amd64", "arm64"]}',
        "inference",
        "ONNX inference (onnxruntime)",
    )
    assert hint.startswith(
        "ONNX inference (onnxruntime) has no build for this architecture (armhf): "
        "onnxruntime has no armv7l build; use a gateway of an architecture that has it "
        "(amd64, arm64)"
    ), hint
    assert "built without" not in hint and "pip install" not in hint


def test_overlapping_and_duplicate_registers_are_warned_with_both_places(tmp_path: Path) -> None:
    devices = """\
  - name: plc
    protocol: modbus_tcp
    host: 127.0.0.1
    tags:
      - {name: a, address: 0, type: float32}
      - {name: b, address: 1, type: float32}
      - {name: status, address: 5}
      - {name: ready, address: 5, type: bool, bit: 0}
      - {name: alarm, address: 5, type: bool, bit: 1}
      - {name: a_copy, register: 40001, type: float32}
      - {name: c0, table: coil, address: 0}
      - {name: c0b, table: coil, address: 0}
  - name: press
    protocol: s7
    host: 127.0.0.1
    tags:
      - {name: force, address: DB1.DBD0}
      - {name: low, address: DB1.DBW2}
      - {name: run, address: DB1.DBX0.1}
"""
    f = write(tmp_path, "", devices)
    r = validate(f)
    assert r.returncode == 0, r.stderr  # warnings do not fail
    warn = [ln for ln in r.stderr.splitlines() if "warning:" in ln]
    assert f"{f}:8:9: devices[0].tags[1]: warning: device plc: tag 'b' reads holding " in (
        "\n".join(warn)
    )
    assert any(
        "tag 'b' reads holding registers 1..2, overlapping tag 'a' (holding registers "
        f"0..1, at {f}:7:9)" in w
        for w in warn
    ), warn
    assert any("tag 'a_copy' reads the same data as tag 'a'" in w for w in warn), warn
    assert any("tag 'c0b' reads the same data as tag 'c0' (coil bit 0" in w for w in warn), warn
    assert any("tag 'low' reads DB1.DBW2, overlapping tag 'force' (DB1.DBD0" in w for w in warn)
    # a status word and its bits, and S7 bits inside a word, are the usual way: no warning
    assert not any("'ready'" in w or "'alarm'" in w or "'run'" in w for w in warn), warn
    assert len(warn) == 5, warn
    assert "OK (5 warning(s) above)" in r.stdout


def test_messages_larger_than_the_receiver_takes_by_default_are_warned(tmp_path: Path) -> None:
    from gateway.preflight import RECEIVER_MAX_MESSAGE_BYTES
    from gateway.receiver import DEFAULT_MAX_MESSAGE_BYTES

    assert RECEIVER_MAX_MESSAGE_BYTES == DEFAULT_MAX_MESSAGE_BYTES  # one figure, two places
    big = DEFAULT_MAX_MESSAGE_BYTES + 1
    f = write(tmp_path, f"uplink: {{host: '::1', max_message_bytes: {big}}}\n")
    r = validate(f)
    assert r.returncode == 0, r.stderr  # a warning: the receiver may be started to fit
    warn = [ln for ln in r.stderr.splitlines() if "warning:" in ln]
    assert len(warn) == 1, r.stderr
    assert warn[0].startswith(f"{f}:2:42: uplink.max_message_bytes: warning: {big} bytes")
    assert f"`edgegw receive --max-message-bytes {big}`" in warn[0]
    # at the receiver's default: nothing to say
    f = write(tmp_path, f"uplink: {{host: '::1', max_message_bytes: {big - 1}}}\n")
    r = validate(f)
    assert r.returncode == 0 and "warning:" not in r.stderr, r.stderr


def test_an_outbox_folder_that_is_a_file_is_refused_everywhere(tmp_path: Path) -> None:
    """outbox.path under a file (not a folder): validate and doctor name the file and the
    fix, and `edgegw run` refuses with exit 2 before anything is written, instead of
    "Not a directory" at the first write (exit 1, a restart loop under systemd)."""
    from gateway.commands import doctor

    state = tmp_path / "state"
    state.mkdir()
    (state / "spool").write_text("a file where the outbox's folder should be\n")
    f = write(tmp_path, "uplink: {host: '::1', port: 1}\noutbox:\n  path: spool/outbox.db\n")
    r = validate(f)
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert (
        f"{f}:4:9: outbox.path: {state / 'spool'} is a file, not a folder, so the outbox "
        f"{state / 'spool' / 'outbox.db'} cannot be made there; fix outbox.path, or move "
        f"{state / 'spool'} away" in r.stderr
    ), r.stderr
    row = {c.name: c for c in doctor.run_checks(str(f), timeout=1)}["outbox path"]
    assert row.outcome == "fail" and f"{state / 'spool'} is a file" in row.detail, row
    assert row.fix.startswith(f"fix outbox.path, or move {state / 'spool'} away"), row
    run = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "-c", str(f)],
        capture_output=True,
        text=True,
        timeout=60,  # catches a hang; a refusal takes about as long as the imports
        check=False,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert f"edgegw: refusing to start: {f}:4:9: outbox.path: " in run.stderr, run.stderr
    assert sorted(p.name for p in state.iterdir()) == ["spool"]  # no key, no outbox


def test_the_outbox_reserve_is_checked_before_ok(tmp_path: Path) -> None:
    """A free-disk reserve the outbox's filesystem cannot give is an error like the others:
    exit 2, nothing on stdout (no "OK" first), the line of outbox.min_free_mib."""
    import shutil

    huge = 2 * shutil.disk_usage(tmp_path).total // 2**20
    f = write(tmp_path, f"uplink: {{host: '::1', port: 1}}\noutbox: {{min_free_mib: {huge}}}\n")
    r = validate(f)
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith(f"{f}:3:24: outbox.min_free_mib: {huge} MiB is more than"), lines
    assert "; set outbox.min_free_mib to at most" in lines[0]
    assert lines[-1] == f"{f}: 1 problem(s)", lines  # not one that stops `edgegw run`


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a read-only file system")
def test_an_outbox_on_a_read_only_mount_is_an_error(tmp_path: Path) -> None:
    """Even root may not write there: blamed on the mount, not on permissions."""
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    try:
        r = validate(write(tmp_path, f"outbox: {{path: {ro / 'outbox.db'}, min_free_mib: 0}}\n"))
    finally:
        subprocess.run(["umount", str(ro)], check=True)
    assert r.returncode == 2, r.stderr
    assert f"the outbox's folder {ro}: {ro} is on a file system mounted read-only" in r.stderr
    assert "remount it read-write, or put outbox.path on a writable disk" in r.stderr
