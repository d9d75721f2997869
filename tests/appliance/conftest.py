"""Fixtures for the appliance tests: TLS material for a real mosquitto TLS listener, and
a way to call one command module the way the CLI would."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.tlscerts import Pki, make_pki


def run_command(module: ModuleType, *argv: str) -> int:
    """Parse ``argv`` with only ``module``'s sub-command registered, and run it."""
    parser = argparse.ArgumentParser(prog="edgegw")
    sub = parser.add_subparsers(dest="command", required=True)
    module.register(sub)
    args = parser.parse_args(list(argv))
    return int(args.func(args))


@pytest.fixture(scope="session")
def pki() -> Iterator[Pki]:
    """The shared test PKI (tests/tlscerts.py): a CA, a broker certificate for ``::1``,
    ``127.0.0.1`` and ``localhost``, and an unrelated (rogue) CA."""
    d = Path(tempfile.mkdtemp(prefix="edgegw-test-pki-"))
    try:
        yield make_pki(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def make_snapshot(now_ns: int | None = None, **overrides: object) -> dict[str, object]:
    """A status snapshot shaped like ``Daemon.snapshot()`` (the integration test checks
    the real one has the same keys)."""
    import os
    import time

    now = time.time_ns() if now_ns is None else now_ns
    snap: dict[str, object] = {
        "gateway": "gw-test",
        "version": "0.1.0",
        "pid": os.getpid(),
        "boot": 7,
        "final": False,
        "time_ns": now,
        "started_ns": now - 100 * 10**9,
        "pipeline": {
            "points_polled": 5000,
            "points_sealed": 4990,
            "messages_sealed": 400,
            "last_seq": 1234,
            "seal_errors": 0,
        },
        "uplink": {
            "link_up": True,
            "connects": 2,
            "disconnects": 1,
            "published": 410,
            "acked": 398,
            "rejected": 0,
            "last_error": None,
        },
        "outbox": {
            "rows": 3,
            "bytes": 12_345,
            "first_seq": 1232,
            "last_seq": 1234,
            "oldest_created_ns": now - 2 * 10**9,
        },
        "devices": {
            "boiler": {
                "name": "boiler",
                "up": True,
                "reads": 1000,
                "errors": 2,
                "overruns": 1,
                "last_error": None,
                "last_latency_ms": 4.5,
                "last_read_ns": now - 300_000_000,
            },
            "press": {
                "name": "press",
                "up": False,
                "reads": 10,
                "errors": 40,
                "overruns": 0,
                "last_error": "connect [::1]:1502: connection refused",
                "last_latency_ms": None,
                "last_read_ns": None,
            },
        },
    }
    snap.update(overrides)
    return snap
