"""A filesystem of its own, for tests that need a disk that really fills up."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(at: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (mount's notation, e.g. "16m") mounted at ``at``, unmounted
    on the way out. Skips where it cannot mount (not root), except in CI."""
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("mounting a tmpfs needs root (CI runs as root and always runs this)")
    at.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(at)], check=True)
    try:
        yield at
    finally:
        subprocess.run(["umount", "-l", str(at)], check=False)
