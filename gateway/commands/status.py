"""`edgegw status`: a live one-screen view of the running daemon, for the console.

It reads ``status.json``, which the daemon rewrites every few seconds in its state
directory (gateway/status.py says when),
so it needs no connection to the daemon and works for any user who may read that file
(root, or members of group ``edgegw`` on the appliance).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ..status import STALE_AFTER_S, STATUS_FILE
from . import EXIT_FAILED, EXIT_OK, Subparsers, add_command, load_or_exit

DEFAULT_CONFIG = Path("/etc/edgegw/config.yaml")
DEFAULT_STATE_DIR = Path("/var/lib/edgegw")
ANOMALIES_SHOWN = 5


def register(sub: Subparsers) -> None:
    s = add_command(
        sub,
        "status",
        "live view of the running gateway: devices, uplink, backlog, rates",
        "edgegw status -c /etc/edgegw/config.yaml",
    )
    where = s.add_mutually_exclusive_group()
    where.add_argument(
        "-c", "--config", help=f"config file, for its state_dir (default {DEFAULT_CONFIG})"
    )
    where.add_argument("--state-dir", help="the daemon's state directory, instead of a config")
    s.add_argument("--once", action="store_true", help="print one frame and exit")
    s.add_argument("--interval", type=float, default=1.0, help="seconds between frames (default 1)")
    s.add_argument(
        "--wide",
        action="store_true",
        help="one line per device with every counter and the whole last error (no wrapping)",
    )
    s.set_defaults(func=main)


# -- formatting -----------------------------------------------------------------------


def human_duration(seconds: float) -> str:
    """0.4 s, 12 s, 3 min 05 s, 2 h 03 min, 4 d 02 h."""
    if seconds < 0:
        seconds = 0.0
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600:02d} h"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _int(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) else "-"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _wrap(text: str, width: int, indent: str = "  ", max_lines: int = 3) -> list[str]:
    """``text`` on lines of at most ``width`` (continuations indented), at most
    ``max_lines``, the last clipped with an ellipsis; a wide console gets it whole."""
    if len(text) <= width:
        return [text]
    lines = textwrap.wrap(
        text, width, subsequent_indent=indent, break_long_words=True, break_on_hyphens=False
    )
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = (
            _clip(lines[-1] + " …", width)
            if len(lines[-1]) < width - 1
            else (lines[-1][: width - 1] + "…")
        )
    return lines


# -- reading --------------------------------------------------------------------------


def state_dir_from(args: argparse.Namespace) -> Path:
    if args.state_dir:
        return Path(args.state_dir)
    if args.config:
        return load_or_exit(args.config).state_dir
    if DEFAULT_CONFIG.exists():
        return load_or_exit(str(DEFAULT_CONFIG)).state_dir
    return DEFAULT_STATE_DIR


def read_snapshot(state_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The snapshot, or None and a message for the technician saying why not and what to do."""
    path = state_dir / STATUS_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        if not state_dir.is_dir():
            return None, (
                f"the state directory {state_dir} does not exist: the daemon has never run "
                "with this config, or this is the wrong config (give it with -c)"
            )
        return None, (
            f"the daemon is not running: {path} does not exist (`edgegw run` writes it every "
            "few seconds). Start it: sudo systemctl start edgegw; why it stopped: "
            "journalctl -u edgegw -n 50"
        )
    except PermissionError:
        return None, (
            f"cannot read {path}: permission denied. Run as root (sudo edgegw status), or join "
            "group edgegw: sudo usermod -aG edgegw $USER, then log in again"
        )
    except (OSError, ValueError) as exc:
        return None, f"cannot read {path}: {exc}"
    if not isinstance(data, dict) or not isinstance(data.get("time_ns"), int):
        return None, f"{path} is not an edgegw status file"
    return data, None


def status_age_s(snap: dict[str, Any], now_ns: int | None = None) -> float:
    now = time.time_ns() if now_ns is None else now_ns
    return max(0.0, (now - int(snap["time_ns"])) / 1e9)


def _pid_state(pid: Any) -> str:
    if not isinstance(pid, int) or pid <= 0:
        return ""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"process {pid} is gone"
    except PermissionError:
        pass
    return f"process {pid} still exists"


# -- one frame ------------------------------------------------------------------------


def render(
    snap: dict[str, Any],
    *,
    prev: dict[str, Any] | None = None,
    now_ns: int | None = None,
    width: int = 100,
    source: str = "",
    wide: bool = False,
) -> tuple[list[str], bool]:
    """The lines of one frame, and whether the daemon looks alive (fresh, not stopped).

    Every line fits ``width`` (a console is often 80 columns): long texts wrap onto
    indented lines, a device's last error goes on its own line under the device. With
    ``wide``, nothing is wrapped or cut and the device table has every counter."""
    fit = (lambda text: [text]) if wide else (lambda text: _wrap(text, width))
    now = time.time_ns() if now_ns is None else now_ns
    age = status_age_s(snap, now)
    started = snap.get("started_ns")
    uptime = (int(snap["time_ns"]) - started) / 1e9 if isinstance(started, int) else None
    alive = age <= STALE_AFTER_S and not snap.get("final")

    if snap.get("final"):
        state = f"STOPPED cleanly {human_duration(age)} ago"
    elif not alive:
        pid = _pid_state(snap.get("pid"))
        state = f"NOT RUNNING? last status {human_duration(age)} old" + (f" ({pid})" if pid else "")
    elif snap.get("stopping"):
        state = f"STOPPING, pid {snap.get('pid')}: draining the outbox"
    else:
        state = f"running, pid {snap.get('pid')}"
    head = f"edgegw {snap.get('version', '?')} · gateway {snap.get('gateway', '?')} · {state}"
    if isinstance(snap.get("boot"), int):
        head += f" · boot {snap['boot']}"
    if uptime is not None and alive:
        head += f" · up {human_duration(uptime)}"
    when = datetime.fromtimestamp(now / 1e9).strftime("%Y-%m-%d %H:%M:%S")
    lines = [*fit(head), *fit(f"{source} · status {human_duration(age)} old · {when}"), ""]

    up = snap.get("uplink") or {}
    link = "up" if up.get("link_up") else "DOWN"
    line = (
        f"uplink   {link} · published {_int(up.get('published'))}, acked {_int(up.get('acked'))}, "
        f"rejected {_int(up.get('rejected'))} · connects {_int(up.get('connects'))}, "
        f"disconnects {_int(up.get('disconnects'))}"
    )
    if not up.get("link_up") and up.get("last_error"):
        line += f" · {up['last_error']}"
    lines += fit(line)
    lim = up.get("limits") or {}
    if lim:  # what is in force: ours, and what the broker announced in CONNACK
        for text in _limits(lim, up.get("set_aside") or 0):
            lines += fit(text)

    ob = snap.get("outbox") or {}
    oldest = ob.get("oldest_created_ns")
    rows = ob.get("rows")
    backlog = f"backlog  {_int(rows)} messages, {human_bytes(ob.get('bytes') or 0)}"
    if rows and isinstance(oldest, int):
        backlog += f", oldest {human_duration((int(snap['time_ns']) - oldest) / 1e9)}"
    backlog += f" · last seq {_int(ob.get('last_seq'))}"
    lines += fit(backlog)

    pipe = snap.get("pipeline") or {}
    rate, basis = _rate(snap, prev, ("pipeline", "points_polled"))
    srate, _ = _rate(snap, prev, ("pipeline", "messages_sealed"))
    pts = f"points   {rate:,.1f}/s polled" if rate is not None else "points   -/s polled"
    if srate is not None:
        pts += f", {srate:,.1f} messages/s sealed"
    pts += f" ({basis}) · {_int(pipe.get('points_polled'))} polled in all"
    if pipe.get("seal_errors"):
        pts += f" · SEAL ERRORS {_int(pipe['seal_errors'])}"
    lines += fit(pts)

    lines += ["", *_device_table(snap, width, wide)]
    lines += _learned(snap, fit)
    lines += _inference(snap, width, wide)
    return lines, alive


def _rate(
    snap: dict[str, Any], prev: dict[str, Any] | None, key: tuple[str, str]
) -> tuple[float | None, str]:
    def get(s: dict[str, Any]) -> Any:
        return (s.get(key[0]) or {}).get(key[1])

    now_v, t = get(snap), snap["time_ns"]
    if prev is not None and isinstance(get(prev), int) and isinstance(now_v, int):
        dt = (t - prev["time_ns"]) / 1e9
        if dt > 0 and now_v >= get(prev):
            return (now_v - get(prev)) / dt, "last second" if dt < 1.5 else f"last {dt:.0f} s"
    started = snap.get("started_ns")
    if isinstance(now_v, int) and isinstance(started, int) and t > started:
        return now_v / ((t - started) / 1e9), "average since start"
    return None, "no data"


def _limits(lim: dict[str, Any], set_aside: int) -> list[str]:
    """The uplink's limits in force: ours, then what the broker said in CONNACK."""
    yes = lambda flag: "yes" if flag else "no"  # noqa: E731
    ours = (
        f"limits   {lim.get('protocol')} · window {lim.get('inflight_window')} · "
        f"message ≤ {human_bytes(lim.get('max_message_bytes') or 0)}"
    )
    if lim.get("keepalive_s") is not None:
        whose = " (the broker's)" if lim.get("server_keepalive_s") is not None else ""
        ours += f" · keep-alive {lim['keepalive_s']} s{whose}"
    if lim.get("assigned_client_id"):
        ours += f" · client id {lim['assigned_client_id']!r} (assigned by the broker)"
    if set_aside:
        ours += f" · {set_aside} set aside"
    if not lim.get("announced"):
        return [ours + " · broker: announces nothing"]
    mps = lim.get("max_packet_size")
    broker = (
        f"broker   max QoS {lim.get('max_qos')} · receive max {lim.get('receive_maximum')} · "
        f"packet ≤ {human_bytes(mps) if mps else 'any'} · "
        f"topic aliases {lim.get('topic_alias_maximum')}, "
        f"retain {yes(lim.get('retain_available'))} (both unused) · "
        f"wildcards {yes(lim.get('wildcard_subscription_available'))} · "
        f"shared subscriptions {yes(lim.get('shared_subscription_available'))}"
    )
    return [ours, broker]


def _device_table(snap: dict[str, Any], width: int, wide: bool) -> list[str]:
    devices = snap.get("devices") or {}
    if not devices:
        return ["no devices"]
    t = int(snap["time_ns"])
    longest = max(6, *(len(n) for n in devices))
    nw = longest if wide else min(longest, 16)
    head = (
        f"{'DEVICE':<{nw}}  STATE  {'LATENCY':>9}  {'READS':>9}  {'ERRORS':>7}  "
        f"{'OVERRUNS':>8}  LAST READ"
    )
    if wide:
        head += f"    {'BAD':>7}  {'REQUESTS':>9}  {'TIMEOUTS':>8}  EXCEPTIONS  LAST ERROR"
    out = [head if wide else _clip(head, width)]
    down = 0
    for name, d in sorted(devices.items()):
        up = bool(d.get("up"))
        down += not up
        lat = d.get("last_latency_ms")
        last = d.get("last_read_ns")
        seen = human_duration((t - last) / 1e9) + " ago" if isinstance(last, int) else "never"
        row = (
            f"{_clip(name, nw):<{nw}}  {'up' if up else 'DOWN':<5}  "
            f"{f'{lat:.1f} ms' if isinstance(lat, int | float) else '-':>9}  "
            f"{_int(d.get('reads')):>9}  {_int(d.get('errors')):>7}  {_int(d.get('overruns')):>8}  "
            f"{seen}"
        )
        error = d.get("last_error") or ""
        if wide:
            drv = d.get("driver") if isinstance(d.get("driver"), dict) else {}
            codes = drv.get("exceptions") or {}
            exc = ", ".join(f"{c}: {n}" for c, n in sorted(codes.items())) or "-"
            row = (
                f"{row:<{nw + 61}}  {_int(d.get('bad_readings')):>7}  "
                f"{_int(drv.get('requests')):>9}  {_int(drv.get('timeouts')):>8}  "
                f"{exc:<10}  {error}"
            )
            out.append(row.rstrip())
            continue
        out.append(_clip(row, width))
        if error:  # the right column wraps under the device: a technician needs all of it
            out += _wrap("  " + error, width, indent="  ")
    out.append(f"{len(devices) - down} of {len(devices)} devices up")
    return out


def _learned(snap: dict[str, Any], fit: Any) -> list[str]:
    """What the drivers learned about the devices' maps, with the plan it gave."""
    out: list[str] = []
    for name, d in sorted((snap.get("devices") or {}).items()):
        drv = d.get("driver") if isinstance(d.get("driver"), dict) else {}
        notes = drv.get("learned") or []
        if not notes:
            continue
        if not out:
            out.append("")
        plan = drv.get("plan_requests")
        out += fit(f"{name}: plan of {plan} request(s) per cycle after what was learned:")
        for note in notes:
            out += fit(f"  {note}")
    return out


def _inference(snap: dict[str, Any], width: int, wide: bool) -> list[str]:
    out: list[str] = []
    models = snap.get("inference") or {}
    if models:
        mw = max(5, *(len(n) for n in models))
        out += ["", f"{'MODEL':<{mw}}  {'SCORE':>6}  {'THRESHOLD':>9}  {'STATE':<9}  {'EVENTS':>6}"]
        for name, m in sorted(models.items()):
            score, thr = m.get("score"), m.get("threshold")
            sc = f"{score:.3f}" if isinstance(score, int | float) else "-"
            th = f"{thr:.3f}" if isinstance(thr, int | float) else "-"
            state = "ANOMALY" if m.get("anomalous") else "normal"
            row = f"{name:<{mw}}  {sc:>6}  {th:>9}  {state:<9}  {_int(m.get('events')):>6}"
            out.append(row if wide else _clip(row, width))
    anomalies = snap.get("anomalies") or []
    if anomalies:
        out += ["", "recent anomalies (time, start/end, model, tags, score)"]
        for a in anomalies[-ANOMALIES_SHOWN:]:
            out.append(_anomaly_line(a) if wide else _clip(_anomaly_line(a), width))
    return out


def _anomaly_line(a: dict[str, Any]) -> str:
    """e.g. ``14:03:07  start  pump-vibration  pump1/flow +2 more  score 0.930``; the
    time is when the anomaly began (start) or cleared (end): the event's ``ts_ns``."""
    when = a.get("ts_ns")
    stamp = (
        datetime.fromtimestamp(when / 1e9).strftime("%H:%M:%S")
        if isinstance(when, int)
        else "--:--:--"
    )
    kind = str(a.get("kind") or "?")
    inputs = [str(t) for t in a.get("inputs") or []]
    tags = inputs[0] + (f" +{len(inputs) - 1} more" if len(inputs) > 1 else "") if inputs else "-"
    text = f"{stamp}  {kind:<5}  {a.get('model', '?')}  {tags}"
    score = a.get("score")
    if isinstance(score, int | float):
        text += f"  score {score:.3f}"
    peak = a.get("peak")
    if kind == "end" and isinstance(peak, int | float):
        text += f" (peak {peak:.3f})"
    return text


# -- the command ----------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    state_dir = state_dir_from(args)
    tty = sys.stdout.isatty()
    # Rates come from two distinct snapshots: the current one and the one before it.
    last: dict[str, Any] | None = None
    before: dict[str, Any] | None = None
    try:
        while True:
            # not a terminal (a pipe, a log): 80 columns, as a serial console has
            width = shutil.get_terminal_size((80, 24)).columns if tty else 80
            snap, problem = read_snapshot(state_dir)
            if snap is None:
                lines, alive = [f"edgegw: {problem}"], False
            else:
                if last is None or last["time_ns"] != snap["time_ns"]:
                    before, last = last, snap
                lines, alive = render(
                    snap,
                    prev=before,
                    width=width,
                    source=str(state_dir / STATUS_FILE),
                    wide=args.wide,
                )
            frame = "\n".join(lines)
            if args.once:
                print(frame, file=sys.stdout if snap is not None else sys.stderr)
                return EXIT_OK if alive else EXIT_FAILED
            if tty:
                sys.stdout.write("\x1b[H\x1b[J" + frame + "\n\n(Ctrl-C to quit)\n")
                sys.stdout.flush()
            else:
                print(frame + "\n", flush=True)
            time.sleep(max(0.1, args.interval))
    except KeyboardInterrupt:
        return EXIT_OK
