"""`edgegw status --once`: one frame from status.json, and clear words when the daemon
is not running."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from gateway.commands import status
from gateway.status import write_status

from .conftest import make_snapshot, run_command


def once(capsys: pytest.CaptureFixture[str], state: Path) -> tuple[int, str, str]:
    rc = run_command(status, "status", "--state-dir", str(state), "--once")
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_one_frame_of_a_running_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snap = make_snapshot(
        anomalies=[{"time_ns": time.time_ns(), "model": "pump-vibration", "score": 0.93}]
    )
    write_status(tmp_path, snap)
    rc, out, _ = once(capsys, tmp_path)
    assert rc == 0
    lines = out.splitlines()
    assert "gateway gw-test" in lines[0] and f"running, pid {os.getpid()}" in lines[0]
    assert "boot 7" in lines[0] and "up 1 min 40 s" in lines[0]
    assert "uplink   up" in out and "acked 398" in out
    assert "backlog  3 messages, 12.1 KiB, oldest 2.0 s" in out
    assert "50.0/s polled" in out and "average since start" in out
    boiler = next(line for line in lines if line.startswith("boiler"))
    assert "up" in boiler and "4.5 ms" in boiler and "1,000" in boiler
    press = next(line for line in lines if line.startswith("press"))
    assert "DOWN" in press and "never" in press and "connection refused" in press
    assert "1 of 2 devices up" in out
    assert "recent anomalies" in out and "pump-vibration  score 0.930" in out


def test_missing_status_says_the_daemon_is_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = once(capsys, tmp_path)
    assert rc == 1 and out == ""
    assert "the daemon is not running" in err and "systemctl start edgegw" in err


def test_missing_state_dir_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = once(capsys, tmp_path / "nope")
    assert rc == 1 and "does not exist" in err and str(tmp_path / "nope") in err


def test_stale_status_says_how_old(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_status(tmp_path, make_snapshot(now_ns=time.time_ns() - 125 * 10**9, pid=2**22 + 1))
    rc, out, _ = once(capsys, tmp_path)
    assert rc == 1
    assert "NOT RUNNING? last status 2 min 05 s old" in out.splitlines()[0]
    assert "gone" in out.splitlines()[0]  # and the process it names no longer exists


def test_a_clean_stop_is_shown_as_such(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_status(tmp_path, make_snapshot(now_ns=time.time_ns() - 30 * 10**9, final=True))
    rc, out, _ = once(capsys, tmp_path)
    assert rc == 1 and "STOPPED cleanly 30 s ago" in out


def test_rate_between_two_snapshots() -> None:
    t = time.time_ns()
    prev = make_snapshot(now_ns=t - 10**9)
    cur = make_snapshot(now_ns=t, pipeline={**prev["pipeline"], "points_polled": 5250})  # type: ignore[dict-item]
    lines, alive = status.render(cur, prev=prev, now_ns=t)
    assert alive
    assert any("250.0/s polled" in line and "last second" in line for line in lines)


def test_long_errors_are_clipped_to_the_width() -> None:
    snap = make_snapshot()
    snap["devices"]["press"]["last_error"] = "x" * 500  # type: ignore[index]
    lines, _ = status.render(snap, width=80)
    assert max(len(line) for line in lines) <= 80


def test_config_gives_the_state_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    state.mkdir()
    write_status(state, make_snapshot())
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        "gateway: {id: gw-test, state_dir: state}\n"
        "devices:\n"
        "  - {name: plc1, protocol: modbus_tcp, host: '::1',\n"
        "     tags: [{name: t, address: 0, type: int16}]}\n"
    )
    assert run_command(status, "status", "-c", str(cfg), "--once") == 0
    assert "gateway gw-test" in capsys.readouterr().out


def test_unreadable_status_says_how_to_get_access(tmp_path: Path) -> None:
    """Run as an unprivileged user (root reads any file): drop to nobody when root."""
    import subprocess
    import sys
    import tempfile

    state = Path(tempfile.mkdtemp(prefix="edgegw-status-"))
    try:
        state.chmod(0o755)
        write_status(state, make_snapshot())
        (state / "status.json").chmod(0)
        cmd = [sys.executable, "-m", "gateway.cli", "status", "--state-dir", str(state), "--once"]
        if os.geteuid() == 0:
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        r = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=str(Path(__file__).resolve().parents[2]),
        )
        assert r.returncode == 1, r.stderr
        assert "permission denied" in r.stderr and "usermod -aG edgegw" in r.stderr, r.stderr
    finally:
        (state / "status.json").chmod(0o600)
        import shutil

        shutil.rmtree(state)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.42, "0.4 s"),
        (12, "12 s"),
        (185, "3 min 05 s"),
        (7380, "2 h 03 min"),
        (352800, "4 d 02 h"),
    ],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert status.human_duration(seconds) == text
