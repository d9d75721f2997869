"""The Debian package's parts agree with each other. The full build-and-install test
(debootstrap, apt, PyPI; about 2.5 minutes with a warm pip cache) runs with
EDGEGW_DEB_TEST=1 or EDGEGW_FULL=1 (on by default as root in `make test`): it installs the
package into a Debian 12 chroot and runs `edgegw demo --duration 20 --json` there, every
protocol and the model from the package. The same for arm64 and armhf (no inference
there) under qemu-user-static runs wherever its tools are present (root, debootstrap,
qemu-user-static's binfmt entry for aarch64 / arm; slow: 3-8 minutes each, figures in
images/README.md): EDGEGW_ARM_TEST=0 turns them off, EDGEGW_ARM_TEST=1 makes missing tools
a failure."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.commands.doctor import PLACEHOLDER_ID
from gateway.config import load_config
from tests.conftest import REPO

from .test_systemd import directives

IMAGES = REPO / "images"
FULL = os.environ.get("EDGEGW_FULL") == "1" or os.environ.get("EDGEGW_DEB_TEST") == "1"


@pytest.mark.parametrize("script", ["postinst", "prerm", "postrm"])
def test_maintainer_scripts_are_posix_sh(script: str) -> None:
    path = IMAGES / "debian" / script
    assert os.access(path, os.X_OK), f"{path} is not executable"
    assert path.read_text().startswith("#!/bin/sh\n")
    r = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("script", ["build-deb.sh", "test-deb.sh"])
def test_scripts_parse(script: str) -> None:
    path = IMAGES / script
    assert os.access(path, os.X_OK)
    r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def test_default_config_is_valid_and_marked_unedited() -> None:
    cfg = load_config(IMAGES / "debian" / "config.yaml")
    assert cfg.gateway.id == PLACEHOLDER_ID  # `edgegw doctor` fails until it is changed
    assert cfg.state_dir == Path("/var/lib/edgegw")  # the unit's StateDirectory=edgegw


def test_unit_user_and_paths_match_the_package() -> None:
    unit = directives(REPO / "systemd" / "edgegw.service")
    sysusers = (REPO / "systemd" / "edgegw.sysusers").read_text()
    assert f"u {unit['User'][0]} " in sysusers
    build = (IMAGES / "build-deb.sh").read_text()
    assert "PREFIX=/opt/edgegw" in build
    assert unit["ExecStart"][0].startswith("/opt/edgegw/bin/edgegw ")
    assert "/etc/edgegw/config.yaml" in (IMAGES / "debian" / "postinst").read_text()


@pytest.mark.slow
@pytest.mark.skipif(
    not FULL, reason="builds the .deb and a Debian chroot: set EDGEGW_DEB_TEST=1 (or EDGEGW_FULL=1)"
)
def test_deb_installs_and_works_in_a_debian_chroot(tmp_path: Path) -> None:
    """images/test-deb.sh end to end: build, debootstrap bookworm, apt install, edgegw
    --version, edgegw validate, doctor, the demo, then (--exec) benchmarks/footprint_chroot.py
    against the installed package, remove, purge."""
    if os.geteuid() != 0:
        pytest.fail("the .deb test needs root (debootstrap, chroot, mount)")
    for tool, package in (("debootstrap", "debootstrap"), ("dpkg-deb", "dpkg")):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: apt-get install {package}")
    out = tmp_path / "footprint.json"
    footprint = (
        f"{sys.executable} {REPO}/benchmarks/footprint_chroot.py --configs modbus --tags 200 "
        f"--duration 3 --steps rss,heap --out {out}"
    )
    r = run_test_deb(tmp_path, "--exec", footprint)
    assert r.returncode == 0 and "test-deb: OK" in r.stdout, r.stdout + r.stderr[-8000:]
    assert "test-deb: footprint amd64:" in r.stdout
    assert "demo: " in r.stderr and "points verified of" in r.stderr
    # Without emulation the guest's mappings are the whole process: the pages counted
    # through the guest's map and the host's pagemap must add up to the kernel's VmRSS
    # (read a moment later: a little slack), which is what makes them trustworthy under
    # qemu, where they differ by qemu's own memory.
    report = json.loads(out.read_text())
    assert report["arch"] == "amd64" and not report["failed"], report
    rss, heap = report["runs"]
    assert rss["points_polled"] > 0 and rss["guest_rss_end_mib"] > 10, rss
    assert abs(rss["qemu_own_end_mib"]) < 3, rss  # VmRSS - guest RSS: no qemu here
    assert 0 < rss["guest_anon_end_mib"] < rss["guest_rss_end_mib"], rss
    assert 0 < heap["traced_end_mib"] <= heap["traced_peak_mib"] < rss["guest_anon_end_mib"], (
        heap,
        rss,
    )


def run_test_deb(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """images/test-deb.sh with the demo, a fast compression, and the chroot cache."""
    args = ["bash", str(IMAGES / "test-deb.sh"), "--demo", "--compress", "gzip", *extra]
    if os.environ.get("EDGEGW_DEB_CACHE"):
        args += ["--cache", os.environ["EDGEGW_DEB_CACHE"]]
    return subprocess.run(
        args,
        env={**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )


ARM = os.environ.get("EDGEGW_ARM_TEST") == "1"


def _emulation_ready(qemu: str) -> None:
    if os.geteuid() != 0:
        pytest.fail("the arm tests need root (debootstrap, chroot, mount)")
    if (
        shutil.which(f"qemu-{qemu}-static") is None
        or not Path(f"/proc/sys/fs/binfmt_misc/qemu-{qemu}").exists()
    ):
        pytest.fail(
            f"qemu-{qemu} is not registered: apt-get install qemu-user-static binfmt-support; "
            "mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; update-binfmts --enable"
        )


BINFMT = Path("/proc/sys/fs/binfmt_misc")


def why_no_emulation(qemu: str, binfmt: Path = BINFMT) -> str | None:
    """Why an ``qemu``-architecture chroot cannot run here, with what to install; None
    when it can: root (debootstrap, chroot, mount), debootstrap, and qemu-user-static's
    binfmt entry, enabled and with the F flag (the kernel keeps the interpreter open, so
    programs inside a chroot find it)."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot, mount)"
    if shutil.which("debootstrap", path=f"{os.environ.get('PATH', '')}:/usr/sbin") is None:
        return "debootstrap is not installed: apt-get install debootstrap"
    entry = binfmt / f"qemu-{qemu}"
    try:
        lines = entry.read_text().splitlines()
    except OSError:
        return (
            f"no binfmt entry for {qemu} ({entry}): apt-get install qemu-user-static "
            "binfmt-support (and mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc)"
        )
    if not lines or lines[0] != "enabled":
        return f"{entry} is disabled: update-binfmts --enable qemu-{qemu}"
    flags = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("flags:")), "")
    if "F" not in flags:
        return (
            f"{entry} was registered without the F flag (flags: {flags or 'none'}), so a "
            "program in a chroot cannot reach the interpreter: register qemu-user-static's "
            "entry (Debian's package does it with F)"
        )
    return None


WITH_MODEL = """\
gateway: {id: gw1, state_dir: /tmp/gw1}
uplink: {host: "::1", port: 1883, topic_prefix: edgegw}
devices:
  - name: plc
    protocol: modbus_tcp
    host: "::1"
    port: 5020
    tags:
      - {name: a, address: 0, type: float32}
      - {name: b, address: 2, type: float32}
      - {name: c, address: 4, type: float32}
      - {name: d, address: 6, type: float32}
      - {name: e, address: 8, type: float32}
      - {name: f, address: 10, type: float32}
inference:
  models:
    - name: demo
      model: default
      sha256: 2298e92f287fbd92f61c5fe037edb568133c2c05ed93566fa4f726421442e971
      inputs: [plc/a, plc/b, plc/c, plc/d, plc/e, plc/f]
      sample_ms: 1000
      window: 16
      threshold: {enter: 0.011, exit: 0.0057}
"""
"""A config that binds the shipped model: the armhf package must refuse it at validate."""

# Debian architecture -> qemu-user's name for the CPU (its binfmt entry is qemu-<name>).
QEMU = {"arm64": "aarch64", "armhf": "arm"}


def arm_gate(arch: str) -> str | None:
    """Why the ``arch`` test does not run (None: it runs): off by EDGEGW_ARM_TEST=0, else
    whatever is missing here."""
    if os.environ.get("EDGEGW_ARM_TEST") == "0":
        return "EDGEGW_ARM_TEST=0 turns it off"
    return why_no_emulation(QEMU[arch])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["arm64", "armhf"])
def test_arm_package_runs_the_demo_under_emulation(tmp_path: Path, arch: str) -> None:
    """Proof by running, not by reading ELF headers: the package of ``arch`` installed with
    apt into a Debian 12 chroot of that architecture runs the demo there, every polled
    point verified. armhf (32-bit Raspberry Pi OS) takes cbor2, PyYAML and cffi's backend
    from Debian and has no inference (onnxruntime has no armhf build): the package says so,
    `edgegw validate` refuses a config with a model (checked in the chroot), and the demo
    runs without its model. Runs where the tools are present (see arm_gate);
    EDGEGW_ARM_TEST=1 insists."""
    why = arm_gate(arch)
    if why is not None:
        if ARM:  # asked for by name: a missing tool is a failure, not a skip
            pytest.fail(f"EDGEGW_ARM_TEST=1, but the {arch} test cannot run: {why}")
        pytest.skip(f"{arch} under qemu-user-static: {why}")
    extra: list[str] = []
    refused = tmp_path / "refused.txt"
    if arch == "armhf":  # validate, in the chroot, a config that binds the shipped model
        cfg = tmp_path / "with-model.yaml"
        cfg.write_text(WITH_MODEL)
        extra = [
            "--exec",
            f'cp {cfg} "$EDGEGW_CHROOT/tmp/" && ! chroot "$EDGEGW_CHROOT" /usr/bin/env -i '
            f"PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 edgegw validate "
            f"/tmp/{cfg.name} >{refused} 2>&1",
        ]
    r = run_test_deb(tmp_path, "--arch", arch, *extra)
    assert r.returncode == 0 and "test-deb: OK" in r.stdout, r.stdout + r.stderr[-8000:]
    assert f"test-deb: footprint {arch}:" in r.stdout and "points verified of" in r.stderr
    if arch == "armhf":
        assert "demo: left out: inference - ONNX inference (onnxruntime) has no build" in r.stderr
        assert "(armhf)" in r.stderr and "(amd64, arm64)" in r.stderr, r.stderr[-4000:]
        why_refused = refused.read_text()
        # inference.model imports numpy first: the first module missing is named
        assert re.search(
            r"1 model\(s\) are bound but the inference engine cannot be loaded: the Python "
            r"module '(numpy|onnxruntime)' is not installed",
            why_refused,
        ), why_refused
        assert "has no build for this architecture (armhf)" in why_refused, why_refused
    else:
        assert "demo: left out:" not in r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the gate asks for root first")
def test_the_arm64_gate_names_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The arm64 test runs where the tools are: the gate says which one is missing (a
    binfmt folder of files shaped like the kernel's), and EDGEGW_ARM_TEST=0 turns it off."""
    if shutil.which("debootstrap", path=f"{os.environ.get('PATH', '')}:/usr/sbin") is None:
        pytest.skip("debootstrap is not installed (make deps installs it)")
    entry = tmp_path / "qemu-aarch64"
    assert "no binfmt entry for aarch64" in (why_no_emulation("aarch64", tmp_path) or "")
    body = "interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: {}\noffset 0\n"
    entry.write_text("disabled\n" + body.format("PF"))
    assert "is disabled: update-binfmts --enable" in (why_no_emulation("aarch64", tmp_path) or "")
    entry.write_text("enabled\n" + body.format("P"))
    assert "without the F flag" in (why_no_emulation("aarch64", tmp_path) or "")
    entry.write_text("enabled\n" + body.format("PF"))
    assert why_no_emulation("aarch64", tmp_path) is None
    monkeypatch.setenv("EDGEGW_ARM_TEST", "0")
    assert arm_gate("arm64") == arm_gate("armhf") == "EDGEGW_ARM_TEST=0 turns it off"
