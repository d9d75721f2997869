"""Shared fixtures: a real mosquitto on a free [::1] port, and the repo root."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.mosquitto import Mosquitto

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private mosquitto listening on [::1] only; stopped after the test."""
    with Mosquitto(host="::1", workdir=tmp_path / "broker") as b:
        yield b
