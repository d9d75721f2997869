"""outbox.min_free_mib against the filesystem that holds the outbox: a reserve as large
as that filesystem would refuse every window, so validate and doctor call it an error
and the daemon keeps a tenth of the filesystem instead (tests/faults/test_disk_full.py
runs it on a real small partition)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from gateway.commands.doctor import FAIL, PASS, check_outbox_room
from gateway.diskroom import MIB, outbox_room

REPO = Path(__file__).resolve().parents[2]


def test_a_reserve_larger_than_the_filesystem_is_named_with_the_fix(tmp_path: Path) -> None:
    total = shutil.disk_usage(tmp_path).total
    huge = 2 * total / MIB
    room = outbox_room(tmp_path / "state" / "outbox.db", huge)
    assert room.where == tmp_path and room.too_large
    problem = room.problem()
    assert problem is not None
    assert problem.startswith(f"outbox.min_free_mib: {huge:g} MiB is more than the whole")
    assert f"at most {int(total * 0.1 / MIB)}" in problem
    half = outbox_room(tmp_path / "o.db", 0.6 * total / MIB)
    assert half.problem() is not None and "at least half of" in (half.problem() or "")
    assert outbox_room(tmp_path / "o.db", 0.4 * total / MIB).problem() is None
    assert check_outbox_room(tmp_path / "o.db", huge).outcome == FAIL
    assert check_outbox_room(tmp_path / "o.db", 0).outcome == PASS


def test_validate_fails_on_it(tmp_path: Path) -> None:
    huge = int(2 * shutil.disk_usage(tmp_path).total / MIB)
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        f"gateway: {{id: gw, state_dir: {tmp_path / 'state'}}}\n"
        "uplink: {host: '::1', port: 1883}\n"
        f"outbox: {{min_free_mib: {huge}}}\n"
        "devices:\n  - {name: a, protocol: modbus_tcp, host: 127.0.0.1, tags: [{name: t, "
        "address: 0}]}\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "validate", str(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # exit 2 like every other error, and no "OK" on stdout before it
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert f"{cfg}:3:24: outbox.min_free_mib: {huge} MiB is more than" in r.stderr
