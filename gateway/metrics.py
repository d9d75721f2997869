"""Prometheus metrics and a health endpoint, computed from the daemon's status snapshot.

One small HTTP server (gateway.httpserve: a plain socket, own thread, bound to
127.0.0.1 by default: expose it further only on purpose) serves, to GET and HEAD:

``GET /metrics``  Prometheus text format 0.0.4 (gateway.exposition), computed at scrape
                  time from ``snapshot()``, then the standard ``process_*`` metrics
``GET /livez``    200 while our own loops run (what systemd's watchdog is fed on), else 503
``GET /readyz``   200 once started, live and acquiring; 503 while starting (the server
                  opens first in start-up) and from SIGTERM on, while the outbox drains
                  (the server closes only after the final snapshot)
``GET /healthz``  for monitoring: 200 ``ok``; 429 ``degraded`` (live, but the uplink or a
                  device is down: Consul's "warning" code); 503 ``unhealthy`` (not live)

The snapshot (``gateway.snapshot.Snapshot``, the one typed model) is what
``Daemon.snapshot()`` builds (also written to status.json: every few seconds while
something changes, every ``STATUS_HEARTBEAT_S`` otherwise, see gateway/status.py). The
daemon keeps its latest one and passes ``lambda: daemon.last_snapshot``; the HTTP thread
only reads it.

The server's thread sleeps in ``select`` with no timeout until a client connects or
``stop()`` writes to its wake-up pipe: it does not wake while nobody asks (the stdlib's
``serve_forever`` polls twice a second to notice a shutdown). Neither prometheus_client
nor ``http.server`` is imported: with what they pull in (``http.client``, ``email``,
``urllib``, ...) they cost the daemon about 4.5 MiB of RSS (issue 18).

Keys read here (all optional except ``time_ns``)::

    gateway, version, pid, boot, final, time_ns, started_ns
    stopping                          a stop was asked for: polling ended, the outbox drains
    monotonic_ns                      time.monotonic_ns() when the snapshot was taken
    tasks:    {task name: bool}       is each poll loop / pipeline / forwarder task alive
    task_health: {task name: {restarts, failures, failing, last_error}}  (gateway.supervisor)
    pipeline: {points_polled, points_sealed, messages_sealed, last_seq, seal_errors}
    uplink:   {link_up, connects, disconnects, published, acked, rejected,
               points_acked (optional), set_aside, limits: {name: value}}
    outbox:   {rows, bytes, first_seq, last_seq, oldest_created_ns}
               bytes_published, puback_latency (a histogram, optional)}
    outbox:   {rows, bytes, first_seq, last_seq, oldest_created_ns}
    devices:  {name: {up, reads, errors, overruns, last_latency_ms, last_read_ns,
                      bad_readings, last_ok_ns, latency (histogram),
                      driver: {requests, notifications, timeouts, link_errors,
                               exceptions: {code: n}, decode_errors, splits,
                               plan_requests, learned} (optional: what the driver keeps;
                               Modbus codes are numbers, OPC UA's and S7's names)}}
    drops:    {reason: {"messages": n, "points": n, "intentional": bool}}  (durable totals)
    inference: {model: {"score": x, "threshold": x, "anomalous": bool, "inferences": n,
                        "events": n, "windows_skipped": n, "windows_failed": n}}
    host:     {outbox_limit_bytes, disk_free_bytes: {path: n},
               cert_expiry: {name: unix seconds}}   (optional: :func:`host_facts`)

A histogram is ``{"bounds": [s, ...], "counts": [n, ..., n_above], "sum": s, "count": n}``
(``gateway.histogram.Histogram``).

Live means "our own loops are running", not "the PLCs and the broker answer": a dead
PLC or a broker outage is normal operation for a store-and-forward gateway, and
restarting would not fix it. The same :func:`health_problems` decides whether the
daemon pings systemd's watchdog. Degraded (:func:`degraded_reasons`) is what monitoring
wants to hear about: the uplink or a device is down.

Names follow ``edgegw_<subject>_<unit>_total`` for counters; gauges drop ``_total``.
Units are base units: seconds and bytes. The README's metrics table lists every name
(a test fails when they drift apart).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .exposition import (
    CONTENT_TYPE,
    CounterFamily,
    Family,
    GaugeFamily,
    HistogramFamily,
    ProcessMetrics,
    render,
)
from .httpserve import HttpServer
from .registry import certificate_files
from .snapshot import Snapshot
from .status import STALE_AFTER_S

log = logging.getLogger("edgegw.metrics")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9810

SnapshotFn = Callable[[], Snapshot | None]


def snapshot_age_s(snap: Snapshot, now_ns: int | None = None) -> float:
    """Seconds since the snapshot was taken: by the monotonic clock when the snapshot has
    one from this boot (immune to NTP steps, e.g. a Pi without RTC syncing at boot), else
    by the wall clock."""
    mono = snap.get("monotonic_ns")
    if isinstance(mono, int) and now_ns is None:
        age = (time.monotonic_ns() - mono) / 1e9
        if age >= 0:
            return age
    wall = snap.get("time_ns")
    if not isinstance(wall, int):
        return float("inf")
    return ((time.time_ns() if now_ns is None else now_ns) - wall) / 1e9


def health_problems(
    snap: Snapshot | None, *, max_age_s: float = STALE_AFTER_S, now_ns: int | None = None
) -> list[str]:
    """Why the daemon is not healthy; an empty list means healthy.

    Healthy: a snapshot exists, it is at most ``max_age_s`` old (the event loop runs and
    the status task with it), it is not the final one, and every task listed under
    ``tasks`` (one per device poll loop, the pipeline, the forwarder) is alive, unless a
    stop was asked for (``stopping``: the shutdown ends them while the outbox drains).
    """
    if snap is None:
        return ["no status yet: the daemon is starting"]
    problems = []
    if snap.get("final"):
        problems.append("the daemon is stopping")
    age = snapshot_age_s(snap, now_ns)
    if age > max_age_s:
        problems.append(
            f"the status is {age:.1f} s old (limit {max_age_s:g} s): the event loop is "
            "blocked or the status task has died"
        )
    # A stop ends the tasks on purpose, one after the other, while the outbox drains:
    # then live means the loop runs (the status is fresh), not that every task does.
    tasks = {} if snap.get("stopping") else snap.get("tasks") or {}
    for name in sorted(t for t, alive in tasks.items() if not alive):
        problems.append(f"task {name} has ended")
    # A task of the daemon's own that keeps failing is a reason to stop feeding the
    # watchdog (a restart may clear what it trips on); a device's poll task is not: a
    # restart of the whole gateway would not fix one device, so that one is "degraded".
    for name, h in _failing_tasks(snap):
        if not name.startswith("poll:"):
            problems.append(
                f"task {name} keeps failing ({h.get('restarts')} restarts; last: "
                f"{h.get('last_error')})"
            )
    return problems


def _failing_tasks(snap: Snapshot) -> list[tuple[str, Mapping[str, Any]]]:
    health = snap.get("task_health") or {}
    return [
        (name, h)
        for name, h in sorted(health.items())
        if isinstance(h, Mapping) and h.get("failing")
    ]


def degraded_reasons(snap: Snapshot | None) -> list[str]:
    """What is down while the daemon itself is fine: the uplink, devices. Empty: all up."""
    if snap is None:
        return []
    reasons = []
    up = snap.get("uplink") or {}
    if up.get("link_up") is False:
        why = up.get("last_error")
        reasons.append("uplink down" + (f": {why}" if why else ""))
    for name, d in sorted((snap.get("devices") or {}).items()):
        if isinstance(d, Mapping) and d.get("up") is False:
            why = d.get("last_error")
            reasons.append(f"device {name} down" + (f": {why}" if why else ""))
    for name, h in _failing_tasks(snap):
        if name.startswith("poll:"):
            reasons.append(f"task {name} keeps failing: {h.get('last_error')}")
    return reasons


def is_ready(snap: Snapshot | None, problems: list[str]) -> bool:
    """Ready for traffic (``/readyz``): started (a snapshot exists), live (no
    ``problems``: every poll loop runs) and not stopping. A device or the uplink being
    down is "degraded", not unready: the gateway keeps acquiring and storing."""
    return snap is not None and not problems and not snap.get("stopping")


def health_doc(
    snap: Snapshot | None, *, max_age_s: float = STALE_AFTER_S
) -> tuple[int, dict[str, Any]]:
    """``/healthz``: (HTTP status, body). 200 ok, 429 degraded, 503 unhealthy."""
    problems = health_problems(snap, max_age_s=max_age_s)
    degraded = degraded_reasons(snap) if not problems else []
    status = "unhealthy" if problems else "degraded" if degraded else "ok"
    doc: dict[str, Any] = {
        "status": status,
        "live": not problems,
        "ready": is_ready(snap, problems),
        "stopping": bool(snap and snap.get("stopping")),
        "healthy": not problems,  # kept for tools written before live/ready/degraded
        "problems": problems,
        "degraded": degraded,
    }
    if snap is not None:
        doc.update(
            gateway=snap.get("gateway"),
            pid=snap.get("pid"),
            status_age_s=round(snapshot_age_s(snap), 3),
        )
    return {"ok": 200, "degraded": 429, "unhealthy": 503}[status], doc


def status_line(snap: Snapshot | None) -> str:
    """One line for systemd's STATUS= (shown by `systemctl status edgegw`)."""
    if snap is None:
        return "starting"
    problems = health_problems(snap)
    if problems:
        return "unhealthy: " + "; ".join(problems)
    devices = snap.get("devices") or {}
    up = sum(1 for d in devices.values() if d.get("up"))
    link = "up" if (snap.get("uplink") or {}).get("link_up") else "DOWN"
    rows = (snap.get("outbox") or {}).get("rows", "?")
    return f"{up}/{len(devices)} devices up, uplink {link}, backlog {rows} messages"


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class SnapshotCollector:
    """Builds every edgegw metric family from one snapshot, at scrape time."""

    def __init__(self, snapshot: SnapshotFn, max_age_s: float = STALE_AFTER_S) -> None:
        self.snapshot = snapshot
        self.max_age_s = max_age_s

    def collect(self) -> Iterable[Family]:
        snap = self.snapshot()
        problems = health_problems(snap, max_age_s=self.max_age_s)
        yield GaugeFamily(
            "edgegw_healthy",
            "1 when every poll loop and the forwarder run and the status is fresh (/livez)",
            value=0.0 if problems else 1.0,
        )
        if snap is None:
            return
        yield GaugeFamily(
            "edgegw_ready",
            "1 when started, live and not stopping (/readyz answers 200)",
            value=1.0 if is_ready(snap, problems) else 0.0,
        )
        yield GaugeFamily(
            "edgegw_degraded",
            "1 while the uplink or a device is down (/healthz answers 429)",
            value=1.0 if degraded_reasons(snap) else 0.0,
        )
        yield from _metrics(snap)


def _counter(name: str, doc: str, value: Any) -> Iterable[Family]:
    v = _num(value)
    if v is not None:
        yield CounterFamily(name, doc, value=v)


def _gauge(name: str, doc: str, value: Any) -> Iterable[Family]:
    v = _num(value)
    if v is not None:
        yield GaugeFamily(name, doc, value=v)


def _histogram_sample(h: Any) -> tuple[list[tuple[str, float]], float] | None:
    """Cumulative Prometheus buckets and the sum from a snapshot histogram, or None."""
    if not isinstance(h, Mapping):
        return None
    bounds, counts, total = h.get("bounds"), h.get("counts"), _num(h.get("sum"))
    if not isinstance(bounds, list | tuple) or not isinstance(counts, list | tuple):
        return None
    if len(counts) != len(bounds) + 1 or total is None:
        return None
    buckets, running = [], 0.0
    for bound, n in zip([*bounds, float("inf")], counts, strict=True):
        running += float(n)
        buckets.append(("+Inf" if bound == float("inf") else f"{float(bound):g}", running))
    return buckets, total


def _metrics(snap: Snapshot) -> Iterable[Family]:
    info = GaugeFamily(
        "edgegw_build_info",
        "edgegw version and gateway id (always 1)",
        labels=["version", "gateway"],
    )
    info.add_metric([str(snap.get("version", "")), str(snap.get("gateway", ""))], 1.0)
    yield info
    yield from _gauge(
        "edgegw_boot", "boot counter of this gateway (increments each start)", snap.get("boot")
    )
    started = _num(snap.get("started_ns"))
    if started is not None:
        yield GaugeFamily(
            "edgegw_start_time_seconds", "when the daemon started (unix time)", value=started / 1e9
        )
    yield GaugeFamily(
        "edgegw_status_age_seconds",
        "age of the status snapshot these metrics come from",
        value=min(snapshot_age_s(snap), 1e9),
    )

    pipe = snap.get("pipeline") or {}
    yield from _counter(
        "edgegw_points_polled", "readings taken from devices", pipe.get("points_polled")
    )
    yield from _counter(
        "edgegw_points_sealed", "readings sealed into signed messages", pipe.get("points_sealed")
    )
    yield from _counter(
        "edgegw_messages_sealed",
        "signed messages committed to the outbox",
        pipe.get("messages_sealed"),
    )
    yield from _counter(
        "edgegw_seal_errors",
        "windows that could not be sealed or committed",
        pipe.get("seal_errors"),
    )

    health = snap.get("task_health") or {}
    if health:
        restarts = CounterFamily(
            "edgegw_task_restarts",
            "times a task of the daemon failed and was started again",
            labels=["task"],
        )
        for name, h in sorted(health.items()):
            if isinstance(h, Mapping) and (n := _num(h.get("restarts"))) is not None:
                restarts.add_metric([str(name)], n)
        yield restarts

    up = snap.get("uplink") or {}
    link = up.get("link_up")
    if isinstance(link, bool):
        yield GaugeFamily(
            "edgegw_uplink_up", "1 while connected to the MQTT broker", value=float(link)
        )
    yield from _counter(
        "edgegw_uplink_connects", "successful broker connections", up.get("connects")
    )
    yield from _counter(
        "edgegw_uplink_disconnects", "lost broker connections", up.get("disconnects")
    )
    yield from _counter(
        "edgegw_messages_published",
        "MQTT publishes (re-sends after a reconnect included)",
        up.get("published"),
    )
    yield from _counter(
        "edgegw_messages_acked",
        "messages acknowledged by the broker (PUBACK) and removed from the outbox",
        up.get("acked"),
    )
    yield from _counter(
        "edgegw_messages_rejected", "publishes the broker refused", up.get("rejected")
    )
    yield from _counter(
        "edgegw_messages_set_aside",
        "stored messages the broker refused for good, set aside and reported in a notice",
        up.get("set_aside"),
    )
    limits = up.get("limits") or {}
    if limits:
        lim = GaugeFamily(
            "edgegw_uplink_limit",
            "uplink limits in force (the broker's CONNACK and ours), by name",
            labels=["limit"],
        )
        for name in (
            "inflight_window",
            "max_message_bytes",
            "keepalive_s",
            "max_qos",
            "receive_maximum",
            "max_packet_size",
            "topic_alias_maximum",
            "server_keepalive_s",
            "retain_available",  # 1 yes, 0 no
            "wildcard_subscription_available",
            "shared_subscription_available",
        ):
            value = limits.get(name)
            if (v := float(value) if isinstance(value, bool) else _num(value)) is not None:
                lim.add_metric([name], v)
        yield lim
        if limits.get("client_id") is not None:
            info = GaugeFamily(
                "edgegw_uplink_client_info",
                "the MQTT client id in use, and whether the broker assigned it (always 1)",
                labels=["client_id", "assigned"],
            )
            assigned = limits.get("assigned_client_id") == limits["client_id"]
            info.add_metric([str(limits["client_id"]), "true" if assigned else "false"], 1.0)
            yield info
    yield from _counter(
        "edgegw_points_acked",
        "readings in messages the broker acknowledged",
        up.get("points_acked"),
    )
    yield from _counter(
        "edgegw_uplink_bytes_sent",
        "bytes of message bodies published (re-sends included)",
        up.get("bytes_published"),
    )
    if (hist := _histogram_sample(up.get("puback_latency"))) is not None:
        fam = HistogramFamily(
            "edgegw_uplink_puback_latency_seconds", "time from publish to the broker's PUBACK"
        )
        fam.add_metric([], hist[0], hist[1])
        yield fam

    ob = snap.get("outbox") or {}
    yield from _gauge(
        "edgegw_outbox_messages", "unsent messages in the outbox (backlog)", ob.get("rows")
    )
    yield from _gauge(
        "edgegw_outbox_bytes", "bytes of unsent messages in the outbox", ob.get("bytes")
    )
    yield from _gauge(
        "edgegw_outbox_last_seq", "highest sequence number assigned", ob.get("last_seq")
    )
    if "rows" in ob:
        oldest = _num(ob.get("oldest_created_ns"))
        now = _num(snap.get("time_ns")) or float(time.time_ns())
        age = max(0.0, (now - oldest) / 1e9) if oldest is not None else 0.0
        yield GaugeFamily(
            "edgegw_outbox_oldest_age_seconds",
            "age of the oldest unsent message (0 when empty)",
            value=age,
        )

    host = snap.get("host") or {}
    yield from _gauge(
        "edgegw_outbox_limit_bytes",
        "the outbox's byte cap (outbox.max_mib); at it, outbox.when_full applies",
        host.get("outbox_limit_bytes"),
    )
    disks = host.get("disk_free_bytes") or {}
    if disks:
        fam = GaugeFamily(
            "edgegw_disk_free_bytes",
            "free bytes on the filesystem of the state dir and of the outbox",
            labels=["path"],
        )
        for path, free in sorted(disks.items()):
            if (v := _num(free)) is not None:
                fam.add_metric([str(path)], v)
        yield fam
    certs = host.get("cert_expiry") or {}
    if certs:
        fam = GaugeFamily(
            "edgegw_certificate_expiry_timestamp_seconds",
            "when each certificate the gateway uses expires (unix time)",
            labels=["certificate"],
        )
        for name, when in sorted(certs.items()):
            if (v := _num(when)) is not None:
                fam.add_metric([str(name)], v)
        yield fam

    drops = snap.get("drops") or {}
    if drops:
        dm = CounterFamily(
            "edgegw_dropped_messages",
            "messages dropped, by reason",
            labels=["reason", "intentional"],
        )
        dp = CounterFamily(
            "edgegw_dropped_points", "readings dropped, by reason", labels=["reason", "intentional"]
        )
        for reason, d in sorted(drops.items()):
            d = d if isinstance(d, Mapping) else {"messages": d}
            labels = [str(reason), "true" if d.get("intentional") else "false"]
            if (m := _num(d.get("messages"))) is not None:
                dm.add_metric(labels, m)
            if (p := _num(d.get("points"))) is not None:
                dp.add_metric(labels, p)
        yield dm
        yield dp

    devices = snap.get("devices") or {}
    if devices:
        yield from _device_metrics(devices)

    models = snap.get("inference") or {}
    if models:
        fams = {
            "score": GaugeFamily("edgegw_model_score", "latest anomaly score", labels=["model"]),
            "threshold": GaugeFamily(
                "edgegw_model_threshold",
                "score above which a window is anomalous",
                labels=["model"],
            ),
            "anomalous": GaugeFamily(
                "edgegw_model_anomalous", "1 while the model reports an anomaly", labels=["model"]
            ),
            "inferences": CounterFamily(
                "edgegw_model_inferences", "windows scored", labels=["model"]
            ),
            "events": CounterFamily(
                "edgegw_anomaly_events", "anomaly events raised", labels=["model"]
            ),
            "windows_skipped": CounterFamily(
                "edgegw_model_windows_skipped",
                "windows not scored (incomplete data, dropped under load)",
                labels=["model"],
            ),
            "windows_failed": CounterFamily(
                "edgegw_model_windows_failed", "windows whose scoring failed", labels=["model"]
            ),
        }
        for name, m in sorted(models.items()):
            for key, fam in fams.items():
                value = m.get(key)
                v = float(value) if isinstance(value, bool) else _num(value)
                if v is not None:
                    fam.add_metric([name], v)
        yield from fams.values()


# Device counters: snapshot key -> (metric name, help). From the poller's DeviceState...
_DEVICE_COUNTERS = {
    "reads": ("edgegw_device_reads", "poll cycles that read the device"),
    "errors": ("edgegw_device_errors", "failed connects and reads"),
    "overruns": ("edgegw_device_overruns", "poll periods skipped because a read took too long"),
    "bad_readings": ("edgegw_device_bad_readings", "readings with a bad quality"),
}
# ... and from the driver's own counters (``driver``): Modbus ``LinkStats``, OPC UA
# ``OpcuaStats``, S7 ``S7Stats`` (each only the keys that apply to it).
_DRIVER_COUNTERS = {
    "requests": ("edgegw_device_requests", "requests sent to the device"),
    "notifications": (
        "edgegw_device_notifications",
        "values the device pushed (OPC UA data-change notifications)",
    ),
    "timeouts": ("edgegw_device_timeouts", "requests without an answer in time (after retries)"),
    "link_errors": (
        "edgegw_device_link_errors",
        "requests that lost the link or got a mismatched answer",
    ),
    "decode_errors": ("edgegw_device_decode_errors", "answers that did not fit the request"),
    "splits": (
        "edgegw_device_splits",
        "refused requests split to isolate addresses the device refuses",
    ),
}


def _code_order(item: tuple[Any, Any]) -> tuple[int, str]:
    """Modbus codes by number (2 before 10), named ones (OPC UA, S7) by name."""
    code = str(item[0])
    return (int(code), "") if code.isdigit() else (1 << 16, code)


def _device_metrics(devices: Mapping[str, Any]) -> Iterable[Family]:
    up = GaugeFamily("edgegw_device_up", "1 while the device answers", labels=["device"])
    counters = {
        key: CounterFamily(name, doc, labels=["device"])
        for key, (name, doc) in (_DEVICE_COUNTERS | _DRIVER_COUNTERS).items()
    }
    exceptions = CounterFamily(
        "edgegw_device_exceptions",
        "errors the device answered, by code: Modbus exception (2 illegal address, 6 "
        "busy, ...), OPC UA bad status (BadNodeIdUnknown, ...), S7 return code (0x05 "
        "address out of range, 0x0a object does not exist, ...)",
        labels=["device", "code"],
    )
    plan = GaugeFamily(
        "edgegw_device_plan_requests",
        "requests per cycle of the plan in use (after what was learned about the device)",
        labels=["device"],
    )
    latency = GaugeFamily(
        "edgegw_device_latency_seconds", "duration of the last read", labels=["device"]
    )
    durations = HistogramFamily(
        "edgegw_device_read_duration_seconds", "duration of each read", labels=["device"]
    )
    last = GaugeFamily(
        "edgegw_device_last_read_timestamp_seconds",
        "when the device was last read (unix time)",
        labels=["device"],
    )
    last_ok = GaugeFamily(
        "edgegw_device_last_success_timestamp_seconds",
        "when a read last brought a good reading (unix time)",
        labels=["device"],
    )
    for name, d in sorted(devices.items()):
        if not isinstance(d, Mapping):
            continue
        if isinstance(d.get("up"), bool):
            up.add_metric([name], float(d["up"]))
        drv = d.get("driver") if isinstance(d.get("driver"), Mapping) else {}
        for key, fam in counters.items():
            if (v := _num((drv if key in _DRIVER_COUNTERS else d).get(key))) is not None:
                fam.add_metric([name], v)
        codes = drv.get("exceptions")
        if isinstance(codes, Mapping):
            for code, n in sorted(codes.items(), key=_code_order):
                if (v := _num(n)) is not None:
                    exceptions.add_metric([name, str(code)], v)
        if (v := _num(drv.get("plan_requests"))) is not None and v > 0:
            plan.add_metric([name], v)
        if (v := _num(d.get("last_latency_ms"))) is not None:
            latency.add_metric([name], round(v / 1e3, 6))
        if (hist := _histogram_sample(d.get("latency"))) is not None:
            durations.add_metric([name], hist[0], hist[1])
        if (v := _num(d.get("last_read_ns"))) is not None:
            last.add_metric([name], v / 1e9)
        if (v := _num(d.get("last_ok_ns"))) is not None:
            last_ok.add_metric([name], v / 1e9)
    yield up
    yield from counters.values()
    yield from (exceptions, plan, latency, durations, last, last_ok)


def host_facts(
    cfg: Any, _cache: dict[tuple[str, int], float | None] | None = None
) -> dict[str, Any]:
    """What the snapshot's ``host`` section holds, from the config and the system: the
    outbox limit, free disk under the state dir and the outbox, and when each certificate
    the gateway uses expires: the uplink's TLS files and each OPC UA device's client
    certificate (and pinned server certificate); read again only when a file changes."""
    cache = _CERT_CACHE if _cache is None else _cache
    free: dict[str, int] = {}
    for path in dict.fromkeys([cfg.state_dir, Path(cfg.outbox_path).parent]):
        try:
            st = os.statvfs(path)
        except OSError:
            continue
        free[str(path)] = st.f_bavail * st.f_frsize
    files: dict[str, Path] = {}
    tls = getattr(cfg.uplink, "tls", None)
    for name in ("cert_file", "ca_file"):
        path = getattr(tls, name, None) if tls is not None else None
        if path is not None:
            files[f"uplink.tls.{name}"] = Path(path)
    for dev in cfg.devices:  # OPC UA: the client certificate the gateway generated/uses
        for name, path in certificate_files(dev, cfg.state_dir).items():
            files[f"{dev.protocol}.{dev.name}.{name}"] = path
    certs: dict[str, float] = {}
    for name, path in files.items():
        if (when := _cert_expiry(path, cache)) is not None:
            certs[name] = when
    return {
        "outbox_limit_bytes": int(cfg.outbox.max_mib * 2**20),
        "disk_free_bytes": free,
        "cert_expiry": certs,
    }


_CERT_CACHE: dict[tuple[str, int], float | None] = {}


def _cert_expiry(path: Path, cache: dict[tuple[str, int], float | None]) -> float | None:
    """notAfter of the first certificate in a PEM or DER file, as unix time; None if the
    file does not exist (yet) or cannot be read (logged once per version of the file)."""
    try:
        key = (str(path), path.stat().st_mtime_ns)
    except OSError:
        return None
    if key not in cache:
        from cryptography import x509

        try:
            data = path.read_bytes()
            if b"-----BEGIN" in data:
                cert = x509.load_pem_x509_certificate(data)
            else:
                cert = x509.load_der_x509_certificate(data)
            cache[key] = cert.not_valid_after_utc.timestamp()
        except (OSError, ValueError) as exc:
            log.warning("metrics: cannot read certificate %s: %s", path, exc)
            cache[key] = None
    return cache[key]


def render_metrics(
    snapshot: SnapshotFn,
    *,
    max_age_s: float = STALE_AFTER_S,
    process: ProcessMetrics | None = None,
) -> bytes:
    """The ``/metrics`` body: the edgegw families from the snapshot, then (when given)
    the standard process_* ones (CPU, memory, fds)."""
    families: list[Family] = list(SnapshotCollector(snapshot, max_age_s).collect())
    if process is not None:
        families += process.families()
    return render(families)


_TEXT = "text/plain; charset=utf-8"


class MetricsServer:
    """The metrics/health HTTP server on its own thread. ``port=0`` picks a free port."""

    def __init__(
        self,
        snapshot: SnapshotFn,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        max_age_s: float = STALE_AFTER_S,
        process_metrics: bool = True,
    ) -> None:
        self._snapshot = snapshot
        self._max_age_s = max_age_s
        self._process = ProcessMetrics() if process_metrics else None
        self._http = HttpServer(host, port, self._answer, name="metrics")
        self.host = self._http.host
        self.port = self._http.port

    @property
    def url(self) -> str:
        return self._http.url

    @property
    def wakeups(self) -> int:
        """Times the server's thread woke (a client, or stop): a test counts them."""
        return self._http.wakeups

    @property
    def _thread(self) -> threading.Thread:
        return self._http._thread

    def start(self) -> MetricsServer:
        self._http.start()
        log.info("metrics on %s/metrics, health on %s/healthz", self.url, self.url)
        return self

    def stop(self) -> None:
        self._http.stop()

    def _answer(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            try:
                body = render_metrics(
                    self._snapshot, max_age_s=self._max_age_s, process=self._process
                )
            except Exception as exc:  # a bug here must not kill the thread silently
                log.exception("metrics: cannot render")
                return 500, _TEXT, f"error: {exc}\n".encode()
            return 200, CONTENT_TYPE, body
        if path in ("/healthz", "/health", "/livez", "/readyz"):
            try:
                code, doc = health_doc(self._snapshot(), max_age_s=self._max_age_s)
            except Exception as exc:  # the daemon's callable failed: that is unhealthy
                log.exception("health: cannot read the snapshot")
                code, doc = (
                    503,
                    {
                        "status": "unhealthy",
                        "live": False,
                        "ready": False,
                        "stopping": False,
                        "healthy": False,
                        "problems": [f"cannot read the status: {exc}"],
                        "degraded": [],
                    },
                )
            if path == "/livez":
                code = 200 if doc["live"] else 503
            elif path == "/readyz":
                code = 200 if doc["ready"] else 503
            return code, "application/json", json.dumps(doc).encode() + b"\n"
        if path == "/":
            return 200, _TEXT, b"edgegw: /metrics /healthz /livez /readyz\n"
        return 404, _TEXT, b"not found: try /metrics, /healthz, /livez or /readyz\n"

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_metrics(
    snapshot: SnapshotFn,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    max_age_s: float = STALE_AFTER_S,
) -> MetricsServer:
    """Start serving ``/metrics`` and ``/healthz`` on ``host:port``; call ``.stop()`` at exit.

    Raises OSError when the address cannot be bound (port taken, no such address).
    """
    return MetricsServer(snapshot, host, port, max_age_s=max_age_s).start()
