"""`edgegw status --once`: one frame from status.json, and clear words when the daemon
is not running."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pytest

from gateway.commands import status
from gateway.status import write_status
from inference.hysteresis import AnomalyEvent

from .conftest import make_snapshot, run_command


def once(capsys: pytest.CaptureFixture[str], state: Path) -> tuple[int, str, str]:
    rc = run_command(status, "status", "--state-dir", str(state), "--once")
    out = capsys.readouterr()
    return rc, out.out, out.err


def anomaly(kind: Literal["start", "end"], ts_ns: int, score: float, peak: float) -> dict[str, Any]:
    """An event as the daemon keeps it: the inference package's own ``AnomalyEvent``
    through ``as_dict()`` (gateway/daemon.py), so a renamed field breaks this test."""
    event = AnomalyEvent(
        model="pump-vibration",
        kind=kind,
        ts_ns=ts_ns,
        score=score,
        peak=peak,
        window_end_ns=ts_ns + 10**9,
        inputs=("pump1/flow", "pump1/pressure", "pump1/vibration"),
    )
    return event.as_dict()


def test_one_frame_of_a_running_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = datetime(2025, 3, 1, 14, 3, 7).timestamp()
    snap = make_snapshot(
        anomalies=[
            anomaly("start", int(start * 1e9), 0.93, 0.93),
            anomaly("end", int((start + 62) * 1e9), 0.12, 1.4),
        ]
    )
    write_status(tmp_path, snap)
    rc, out, _ = once(capsys, tmp_path)
    assert rc == 0
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80  # not a terminal: 80 columns
    head = " ".join(lines[:2])
    assert "gateway gw-test" in head and f"running, pid {os.getpid()}" in head
    assert "boot 7" in head and "up 1 min 40 s" in head
    assert "uplink   up" in out and "acked 398" in out
    assert "backlog  3 messages, 12.1 KiB, oldest 2.0 s" in out
    assert "50.0/s polled" in out and "average since start" in out
    boiler = next(line for line in lines if line.startswith("boiler"))
    assert "up" in boiler and "4.5 ms" in boiler and "1,000" in boiler
    i = next(i for i, line in enumerate(lines) if line.startswith("press"))
    assert "DOWN" in lines[i] and "never" in lines[i]
    assert lines[i + 1] == "  connect [::1]:1502: connection refused"  # its own line, whole
    assert "1 of 2 devices up" in out
    assert "recent anomalies" in out
    assert "14:03:07  start  pump-vibration  pump1/flow +2 more  score 0.930" in out
    assert "14:04:09  end    pump-vibration  pump1/flow +2 more  score 0.120 (peak 1.400)" in out


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
    head = " ".join(out.splitlines()[:2])
    assert "NOT RUNNING? last status 2 min 05 s old" in head
    assert "gone" in head  # and the process it names no longer exists


def test_a_clean_stop_is_shown_as_such(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_status(tmp_path, make_snapshot(now_ns=time.time_ns() - 30 * 10**9, final=True))
    rc, out, _ = once(capsys, tmp_path)
    assert rc == 1 and "STOPPED cleanly 30 s ago" in out


def test_a_daemon_draining_after_sigterm_is_shown_stopping(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_status(tmp_path, make_snapshot(stopping=True))
    rc, out, _ = once(capsys, tmp_path)
    assert rc == 0 and f"STOPPING, pid {os.getpid()}: draining the outbox" in out


def test_rate_between_two_snapshots() -> None:
    t = time.time_ns()
    prev = make_snapshot(now_ns=t - 10**9)
    cur = make_snapshot(now_ns=t, pipeline={**prev["pipeline"], "points_polled": 5250})  # type: ignore[dict-item]
    lines, alive = status.render(cur, prev=prev, now_ns=t)
    assert alive
    assert any("250.0/s polled" in line and "last second" in line for line in lines)


def test_long_errors_wrap_under_the_device_within_80_columns() -> None:
    snap = make_snapshot()
    why = (
        "cannot connect to [fd00:10:20:30::15]:502 (device 'press'): no answer within 1000 ms; "
        "the device may be off, or a firewall drops the packets"
    )
    snap["devices"]["press"]["last_error"] = why  # type: ignore[index]
    snap["uplink"]["last_error"] = "broker refused: Not authorized " * 3  # type: ignore[index]
    snap["uplink"]["link_up"] = False  # type: ignore[index]
    lines, _ = status.render(snap, width=80)
    assert max(len(line) for line in lines) <= 80
    i = next(i for i, line in enumerate(lines) if line.startswith("press"))
    wrapped = " ".join(line.strip() for line in lines[i + 1 : i + 3])
    assert wrapped == why  # all of it, on two indented lines
    snap["devices"]["press"]["last_error"] = "x" * 500  # type: ignore[index]
    lines, _ = status.render(snap, width=80)
    assert max(len(line) for line in lines) <= 80
    assert sum(1 for line in lines if "xxxx" in line) == 3 and "…" in "".join(lines)


def test_wide_shows_every_counter_on_one_line_per_device() -> None:
    snap = make_snapshot()
    snap["devices"]["boiler"].update(  # type: ignore[index]
        bad_readings=3,
        driver={"requests": 5000, "timeouts": 2, "exceptions": {"2": 7, "6": 1}},
    )
    lines, _ = status.render(snap, width=80, wide=True)
    head = next(line for line in lines if line.startswith("DEVICE"))
    assert head.split()[-6:] == ["BAD", "REQUESTS", "TIMEOUTS", "EXCEPTIONS", "LAST", "ERROR"]
    boiler = next(line for line in lines if line.startswith("boiler")).split()
    assert boiler[-7:] == ["3", "5,000", "2", "2:", "7,", "6:", "1"]
    press = next(line for line in lines if line.startswith("press"))
    assert press.endswith("connect [::1]:1502: connection refused")


def test_what_was_learned_is_shown_with_the_plan() -> None:
    snap = make_snapshot()
    snap["devices"]["boiler"]["driver"] = {  # type: ignore[index]
        "plan_requests": 3,
        "learned": [
            "holding 3..4: refused by the device, not bridged",
            "tag past_end (holding 99..100): refused by the device even alone (exception 2)",
        ],
    }
    lines, _ = status.render(snap, width=80)
    i = lines.index("boiler: plan of 3 request(s) per cycle after what was learned:")
    assert lines[i + 1] == "  holding 3..4: refused by the device, not bridged"
    assert lines[i + 2].startswith("  tag past_end (holding 99..100): refused")
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


@pytest.mark.usefixtures("reachable_by_others")
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
