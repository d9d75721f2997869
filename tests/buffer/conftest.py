"""A filesystem of its own for outbox tests that need a real full, or read-only, disk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tmpfs import tmpfs


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs: a disk that can really fill up (or be remounted read-only)."""
    with tmpfs(tmp_path / "fs", "16m") as fs:
        yield fs
