"""The Debian package's parts agree with each other; the full build-and-install test
(slow: debootstrap, apt, PyPI) runs with EDGEGW_DEB_TEST=1 or EDGEGW_FULL=1."""

from __future__ import annotations

import os
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
    --version, edgegw validate, doctor, remove, purge."""
    if os.geteuid() != 0:
        pytest.fail("the .deb test needs root (debootstrap, chroot, mount)")
    for tool, package in (("debootstrap", "debootstrap"), ("dpkg-deb", "dpkg")):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: apt-get install {package}")
    args = ["bash", str(IMAGES / "test-deb.sh")]
    if os.environ.get("EDGEGW_DEB_CACHE"):
        args += ["--cache", os.environ["EDGEGW_DEB_CACHE"]]
    r = subprocess.run(
        args,
        env={**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert r.returncode == 0 and "test-deb: OK" in r.stdout, r.stdout + r.stderr[-8000:]
