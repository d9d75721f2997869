"""Fixed status snapshots whose /metrics text main's prometheus_client-based
gateway/metrics.py wrote (the ``*.prom`` files beside this one, made once by
``make_golden.py`` from commit 84af8aa); tests/gateway/test_metrics_exposition.py checks
that our own writer gives the same families and samples.

Every metric the gateway exports appears, with labels that need escaping (quotes,
backslashes, newlines, non-ASCII), values Go writes with an exponent, huge and tiny,
booleans, NaN and infinities, and a histogram whose first bound is negative (no _count
and _sum then)."""

from __future__ import annotations

from typing import Any

NOW_NS = 1_796_000_000_123_456_789  # the wall clock the tests fix (2026-12-01)
MONO_NS = 5_000_000_000_000  # and the monotonic one

HIST = {
    "bounds": [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
    "counts": [3, 10, 250, 1200, 40, 7, 1, 0, 0, 0, 0, 0, 0, 2],
    "sum": 14.8125,
    "count": 1513,
}

ODD = 'press "A"\\line\n2 – Ü'  # a device name with everything that needs escaping


def full() -> dict[str, Any]:
    return {
        "gateway": 'gw-"7"\\x',
        "version": "0.9.1+dev",
        "pid": 4321,
        "boot": 12,
        "final": False,
        "time_ns": NOW_NS - 1_500_000_000,
        "monotonic_ns": MONO_NS - 1_500_000_000,
        "started_ns": NOW_NS - 86_400 * 10**9,
        "tasks": {"poll:boiler": True, "pipeline": True, "forwarder": True},
        "task_health": {
            "pipeline": {"restarts": 2, "failures": 3, "failing": False, "last_error": "E"},
            "poll:boiler": {"restarts": 0, "failures": 0, "failing": False},
            "broken": "not a mapping",
        },
        "pipeline": {
            "points_polled": 123_456_789_012,
            "points_sealed": 123_456_789_000,
            "messages_sealed": 9_999_999,
            "last_seq": 10_000_000,
            "seal_errors": 0,
        },
        "uplink": {
            "link_up": True,
            "connects": 3,
            "disconnects": 2,
            "published": 10_000_001,
            "acked": 10_000_000,
            "rejected": 1,
            "points_acked": 1.5e12,
            "set_aside": 4,
            "bytes_published": 2**40,
            "puback_latency": HIST,
            "limits": {
                "inflight_window": 64,
                "max_message_bytes": 268_435_455,
                "keepalive_s": 60,
                "max_qos": 1,
                "receive_maximum": 65535,
                "max_packet_size": 1_048_576,
                "topic_alias_maximum": 0,
                "server_keepalive_s": 45,
                "retain_available": True,
                "wildcard_subscription_available": False,
                "shared_subscription_available": True,
                "client_id": 'auto-"x"\\y',
                "assigned_client_id": 'auto-"x"\\y',
            },
        },
        "outbox": {
            "rows": 1234,
            "bytes": 56_789_012,
            "first_seq": 100,
            "last_seq": 1333,
            "oldest_created_ns": NOW_NS - 3_600 * 10**9,
        },
        "host": {
            "outbox_limit_bytes": 256 * 2**20,
            "disk_free_bytes": {"/var/lib/edgegw": 12_345_678_901, "/srv/out\\box": 0},
            "cert_expiry": {"uplink.tls.cert_file": 1_830_000_000.0, "opcua.x.cert": 1.0},
        },
        "drops": {
            "outbox_full": {"messages": 5, "points": 50, "intentional": True},
            "too_big": {"messages": 1, "points": 250, "intentional": False},
            'odd "reason"\n': 3,  # an old shape: a bare number of messages
        },
        "devices": {
            "boiler": {
                "up": True,
                "reads": 86_400,
                "errors": 0,
                "overruns": 1,
                "bad_readings": 0,
                "last_latency_ms": 4.5,
                "last_read_ns": NOW_NS - 10**9,
                "last_ok_ns": NOW_NS - 10**9,
                "latency": HIST,
                "driver": {
                    "requests": 172_800,
                    "timeouts": 3,
                    "link_errors": 1,
                    "exceptions": {"10": 1, "2": 7, "6": 2},
                    "decode_errors": 0,
                    "splits": 1,
                    "plan_requests": 2,
                    "learned": {"refused": [17]},
                },
            },
            ODD: {
                "up": False,
                "reads": 10,
                "errors": 40,
                "overruns": 0,
                "last_latency_ms": 1234.5678,
                "last_read_ns": NOW_NS - 5 * 10**9,
                "latency": {"bounds": [-1.0, 0.5], "counts": [0, 1, 2], "sum": 3.0, "count": 3},
                "last_error": "connect [::1]:1502: connection refused",
                "driver": {
                    "notifications": 99,
                    "exceptions": {"BadNodeIdUnknown": 2, "0x0a": 1, "3": 4},
                    "plan_requests": 0,
                },
            },
            "s7": {"up": True, "reads": 0, "latency": {"bounds": [1.0], "counts": [0]}},
            "not-a-device": 5,
        },
        "inference": {
            "pump-vibration": {
                "score": 0.1 + 0.2,
                "threshold": 0.8,
                "anomalous": True,
                "inferences": 86_400,
                "events": 3,
                "windows_skipped": 0,
                "windows_failed": 1,
            },
            "nan-model": {"score": float("nan"), "threshold": float("inf"), "anomalous": False},
            "neg": {"score": -1e-9, "threshold": -float("inf"), "events": 12_345_678},
        },
    }


def stopping() -> dict[str, Any]:
    """Draining after SIGTERM, the uplink down, a task failing, an empty outbox."""
    snap = full()
    snap.update(stopping=True, final=True)
    snap["tasks"] = {"forwarder": False}
    snap["task_health"] = {"forwarder": {"restarts": 9, "failing": True, "last_error": "x"}}
    snap["uplink"] = {"link_up": False, "last_error": "refused", "connects": 0}
    snap["outbox"] = {"rows": 0, "bytes": 0, "last_seq": 7, "oldest_created_ns": None}
    del snap["host"], snap["drops"], snap["inference"]
    return snap


def bare() -> dict[str, Any]:
    """Only what every snapshot has: a wall time, no monotonic clock, nothing else."""
    return {"time_ns": NOW_NS - 2 * 10**9}


SNAPSHOTS = {"none": lambda: None, "bare": bare, "full": full, "stopping": stopping}
