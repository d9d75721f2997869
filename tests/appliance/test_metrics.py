"""gateway.metrics: the real HTTP endpoint, scraped and parsed with prometheus_client."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import DEFAULT_HOST, MetricsServer, health_problems, status_line

from .conftest import make_snapshot


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, ctype, body = get(url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
    }


def test_default_bind_is_loopback_only() -> None:
    assert DEFAULT_HOST == "127.0.0.1"
    with MetricsServer(lambda: None, port=0) as srv:
        assert srv.host == "127.0.0.1"
        assert srv.url.startswith("http://127.0.0.1:")


def test_metrics_follow_the_snapshot() -> None:
    snap: dict[str, Any] = make_snapshot()
    snap["drops"] = {"outbox_full": {"messages": 5, "points": 50, "intentional": True}}
    snap["inference"] = {
        "pump-vibration": {"score": 0.42, "threshold": 0.8, "anomalous": False, "events": 3}
    }
    with MetricsServer(lambda: snap, port=0) as srv:
        m = scrape(srv.url)
        snap["pipeline"] = {**snap["pipeline"], "points_polled": 6000}  # the next snapshot
        m2 = scrape(srv.url)

    def v(name: str, **labels: str) -> float:
        return m[(name, tuple(sorted(labels.items())))]

    assert v("edgegw_points_polled_total") == 5000
    assert m2[("edgegw_points_polled_total", ())] == 6000
    assert v("edgegw_messages_sealed_total") == 400
    assert v("edgegw_messages_acked_total") == 398
    assert v("edgegw_messages_published_total") == 410
    assert v("edgegw_uplink_up") == 1
    assert v("edgegw_uplink_disconnects_total") == 1
    assert v("edgegw_outbox_messages") == 3
    assert v("edgegw_outbox_bytes") == 12_345
    assert v("edgegw_outbox_oldest_age_seconds") == pytest.approx(2.0)
    assert v("edgegw_device_up", device="boiler") == 1
    assert v("edgegw_device_up", device="press") == 0
    assert v("edgegw_device_latency_seconds", device="boiler") == pytest.approx(0.0045)
    assert v("edgegw_device_errors_total", device="press") == 40
    assert v("edgegw_device_overruns_total", device="boiler") == 1
    assert v("edgegw_dropped_messages_total", reason="outbox_full", intentional="true") == 5
    assert v("edgegw_dropped_points_total", reason="outbox_full", intentional="true") == 50
    assert v("edgegw_model_score", model="pump-vibration") == pytest.approx(0.42)
    assert v("edgegw_anomaly_events_total", model="pump-vibration") == 3
    assert v("edgegw_build_info", version="0.1.0", gateway="gw-test") == 1
    assert v("edgegw_healthy") == 1
    # the process's own metrics come along
    assert ("process_resident_memory_bytes", ()) in m


def test_counters_are_typed_counters_and_named_per_style() -> None:
    """STYLE: edgegw_<subject>_<unit>_total for counters; gauges carry no _total."""
    with MetricsServer(lambda: make_snapshot(), port=0) as srv:
        body = get(srv.url + "/metrics")[2]
    families = {f.name: f for f in text_string_to_metric_families(body)}
    edgegw = {n: f for n, f in families.items() if n.startswith("edgegw_")}
    assert edgegw["edgegw_points_polled"].type == "counter"
    assert edgegw["edgegw_device_reads"].type == "counter"
    assert edgegw["edgegw_outbox_messages"].type == "gauge"
    for fam in edgegw.values():
        for sample in fam.samples:
            assert sample.name.endswith("_total") == (fam.type == "counter"), sample.name


def test_empty_outbox_has_zero_oldest_age() -> None:
    snap = make_snapshot(
        outbox={"rows": 0, "bytes": 0, "first_seq": None, "last_seq": 9, "oldest_created_ns": None}
    )
    with MetricsServer(lambda: snap, port=0) as srv:
        assert scrape(srv.url)[("edgegw_outbox_oldest_age_seconds", ())] == 0


def test_health_is_200_while_fresh_every_task_alive_and_everything_up() -> None:
    snap = make_snapshot(tasks={"poll:boiler": True, "pipeline": True, "forwarder": True})
    snap["devices"] = {"boiler": snap["devices"]["boiler"]}  # type: ignore[index]
    with MetricsServer(lambda: snap, port=0) as srv:
        status, ctype, body = get(srv.url + "/healthz")
    assert status == 200 and ctype == "application/json"
    doc = json.loads(body)
    assert doc["healthy"] is True and doc["problems"] == [] and doc["gateway"] == "gw-test"
    assert doc["status"] == "ok" and doc["live"] and doc["ready"] and doc["degraded"] == []


def test_a_device_or_the_uplink_down_is_degraded_429_but_live_and_ready() -> None:
    snap = make_snapshot()  # device press is down
    with MetricsServer(lambda: snap, port=0) as srv:
        status, _, body = get(srv.url + "/healthz")
        live, ready = get(srv.url + "/livez")[0], get(srv.url + "/readyz")[0]
        snap["uplink"] = {"link_up": False, "last_error": "connection refused"}
        status2, _, body2 = get(srv.url + "/healthz")
        m = scrape(srv.url)
    assert (status, live, ready) == (429, 200, 200)
    doc = json.loads(body)
    assert doc["status"] == "degraded" and doc["healthy"] is True
    assert doc["degraded"] == ["device press down: connect [::1]:1502: connection refused"]
    assert status2 == 429
    assert json.loads(body2)["degraded"][0] == "uplink down: connection refused"
    assert m[("edgegw_degraded", ())] == 1 and m[("edgegw_healthy", ())] == 1


def test_livez_and_readyz_are_503_when_not_live_or_stopping() -> None:
    dead = make_snapshot(tasks={"forwarder": False})
    with MetricsServer(lambda: dead, port=0) as srv:
        assert [get(srv.url + p)[0] for p in ("/healthz", "/livez", "/readyz")] == [503] * 3
    with MetricsServer(lambda: None, port=0) as srv:
        assert get(srv.url + "/readyz")[0] == 503
        assert json.loads(get(srv.url + "/healthz")[2])["status"] == "unhealthy"


def test_a_dead_poll_loop_or_forwarder_makes_health_503() -> None:
    snap = make_snapshot(tasks={"poll:boiler": False, "pipeline": True, "forwarder": False})
    with MetricsServer(lambda: snap, port=0) as srv:
        status, _, body = get(srv.url + "/healthz")
        m = scrape(srv.url)
    assert status == 503
    assert json.loads(body)["problems"] == [
        "task forwarder has ended",
        "task poll:boiler has ended",
    ]
    assert m[("edgegw_healthy", ())] == 0


def test_a_stale_snapshot_makes_health_503() -> None:
    snap = make_snapshot(now_ns=time.time_ns() - 30 * 10**9)
    with MetricsServer(lambda: snap, port=0, max_age_s=5) as srv:
        status, _, body = get(srv.url + "/healthz")
    assert status == 503
    assert "30." in json.loads(body)["problems"][0] and "old" in json.loads(body)["problems"][0]


def test_no_snapshot_yet_is_unhealthy_and_still_serves_metrics() -> None:
    with MetricsServer(lambda: None, port=0) as srv:
        status, _, body = get(srv.url + "/healthz")
        m = scrape(srv.url)
    assert status == 503 and "starting" in body
    assert m[("edgegw_healthy", ())] == 0


def test_unknown_path_is_404() -> None:
    with MetricsServer(lambda: None, port=0) as srv:
        assert get(srv.url + "/nope")[0] == 404


def test_ipv6_loopback_bind() -> None:
    with MetricsServer(lambda: make_snapshot(), host="::1", port=0) as srv:
        assert srv.url.startswith("http://[::1]:")
        assert scrape(srv.url)[("edgegw_healthy", ())] == 1


def test_a_taken_port_raises_oserror() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(OSError):
            MetricsServer(lambda: None, port=s.getsockname()[1])


def test_health_problems_uses_the_monotonic_clock_when_the_snapshot_has_it() -> None:
    # The wall clock stepped forward an hour (NTP at boot on a Pi), the loop did not stall.
    snap = make_snapshot(now_ns=time.time_ns() - 3600 * 10**9, monotonic_ns=time.monotonic_ns())
    assert health_problems(snap) == []
    assert health_problems(make_snapshot(final=True)) == ["the daemon is stopping"]


def test_status_line_for_systemd() -> None:
    assert status_line(None) == "starting"
    assert status_line(make_snapshot()) == "1/2 devices up, uplink up, backlog 3 messages"
    dead = make_snapshot(tasks={"forwarder": False})
    assert status_line(dead) == "unhealthy: task forwarder has ended"


def test_a_failing_snapshot_callable_is_unhealthy_not_a_crash() -> None:
    def broken() -> None:
        raise RuntimeError("outbox thread is gone")

    with MetricsServer(broken, port=0) as srv:
        status, _, body = get(srv.url + "/healthz")
        assert get(srv.url + "/metrics")[0] == 500
        assert get(srv.url + "/healthz")[0] == 503  # and the server keeps answering
    assert status == 503 and "outbox thread is gone" in body


def test_readyz_is_503_while_stopping_though_still_live() -> None:
    """A stop was asked for (SIGTERM) and the outbox drains: live (the watchdog is still
    fed), not ready (a balancer moves away), said in the body and as edgegw_ready."""
    snap = make_snapshot(stopping=True)
    with MetricsServer(lambda: snap, port=0) as srv:
        codes = [get(srv.url + p)[0] for p in ("/livez", "/readyz")]
        doc = json.loads(get(srv.url + "/readyz")[2])
        m = scrape(srv.url)
        snap["stopping"] = False
        assert get(srv.url + "/readyz")[0] == 200
        assert scrape(srv.url)[("edgegw_ready", ())] == 1
    assert codes == [200, 503]
    assert doc["live"] is True and doc["ready"] is False and doc["stopping"] is True
    assert m[("edgegw_ready", ())] == 0 and m[("edgegw_healthy", ())] == 1
