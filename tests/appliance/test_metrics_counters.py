"""The metrics come from real counters: a poll loop reading a real Modbus server (with
unmapped holes, a timeout-free device and one that refuses a tag), the snapshot built as
the daemon builds it (``asdict`` of the poller's state), scraped over HTTP; host facts
from a real filesystem and real certificates; and the README lists every metric."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from drivers.contract import Batch
from drivers.modbus import ModbusTcpDevice, Table, compile_plan
from drivers.modbus.driver import Driver
from drivers.modbus.simulator import ModbusSimulator
from gateway.config import load_config
from gateway.daemon import _cancel_all
from gateway.histogram import Histogram
from gateway.metrics import MetricsServer, host_facts
from gateway.poller import DeviceState, poll_device
from tests.tlscerts import make_pki

from .conftest import make_snapshot
from .test_metrics import get

REPO = Path(__file__).resolve().parents[2]


def samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
    }


def test_device_metrics_are_the_driver_and_poller_counters() -> None:
    async def main() -> tuple[dict[str, Any], int]:
        async with ModbusSimulator(size=100, holes={Table.HOLDING: [(3, 5)]}) as sim:
            dev = ModbusTcpDevice.model_validate(
                {
                    "protocol": "modbus_tcp",
                    "name": "meter",
                    "host": "127.0.0.1",
                    "port": sim.port,
                    "poll_interval_ms": 20,
                    "tags": [
                        {"name": "a", "address": 0, "type": "uint32"},
                        {"name": "b", "address": 6},
                        {"name": "past_end", "address": 99, "type": "uint32"},
                    ],
                }
            )
            state = DeviceState("meter")
            got: list[Batch] = []

            async def sink(b: Batch) -> None:
                got.append(b)

            stop = asyncio.Event()
            plan = compile_plan(dev)
            task = asyncio.create_task(
                poll_device(Driver(dev), plan, list(plan.tag_names), 0.02, sink, state, stop)
            )
            deadline = time.monotonic() + 10  # bound: 5 cycles take ~0.1 s
            while len(got) < 5 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            stop.set()
            await _cancel_all([task])
            return asdict(state), len(got)

    device, cycles = asyncio.run(main())
    assert cycles >= 5
    snap = make_snapshot(devices={"meter": device})
    with MetricsServer(lambda: snap, port=0) as srv:
        m = samples(get(srv.url + "/metrics")[2])

    def v(name: str, **labels: str) -> float:
        return m[(name, tuple(sorted({"device": "meter", **labels}.items())))]

    drv = device["driver"]
    reads = device["reads"]
    assert v("edgegw_device_reads_total") == reads >= 5
    assert v("edgegw_device_requests_total") == drv["requests"] > reads
    # the first cycle split the refused requests; later cycles only re-read past_end alone
    assert v("edgegw_device_exceptions_total", code="2") == drv["exceptions"][2] >= reads
    assert v("edgegw_device_splits_total") == drv["splits"] >= 1
    assert v("edgegw_device_bad_readings_total") == reads  # past_end, once per cycle
    assert v("edgegw_device_timeouts_total") == 0
    assert v("edgegw_device_plan_requests") == 3  # a, b (the hole between), past_end alone
    assert v("edgegw_device_read_duration_seconds_count") == reads
    assert v("edgegw_device_read_duration_seconds_bucket", le="+Inf") == reads
    assert 0 < v("edgegw_device_read_duration_seconds_sum") < reads * 5  # a bound, not a timing
    last_ok = v("edgegw_device_last_success_timestamp_seconds")
    assert abs(last_ok - time.time()) < 60
    # a gauge of the last read without float noise: whole microseconds
    lat = v("edgegw_device_latency_seconds")
    assert lat == round(lat, 6)


def test_histograms_are_cumulative_with_inf() -> None:
    h = Histogram(bounds=(0.01, 0.1))
    for x in (0.005, 0.05, 0.05, 3.0):
        h.observe(x)
    snap = make_snapshot()
    snap["uplink"] = {**snap["uplink"], "bytes_published": 4096, "puback_latency": asdict(h)}  # type: ignore[dict-item]
    with MetricsServer(lambda: snap, port=0) as srv:
        m = samples(get(srv.url + "/metrics")[2])
    b = "edgegw_uplink_puback_latency_seconds_bucket"
    assert [m[(b, (("le", le),))] for le in ("0.01", "0.1", "+Inf")] == [1, 3, 4]
    assert m[("edgegw_uplink_puback_latency_seconds_count", ())] == 4
    assert m[("edgegw_uplink_puback_latency_seconds_sum", ())] == pytest.approx(3.105)
    assert m[("edgegw_uplink_bytes_sent_total", ())] == 4096


def test_host_facts_from_the_filesystem_and_the_certificates(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    cfg_path = tmp_path / "gw.yaml"
    cfg_path.write_text(
        f"gateway: {{id: gw, state_dir: {tmp_path / 'state'}}}\n"
        f"uplink: {{tls: {{ca_file: {pki.ca}, cert_file: {pki.client_cert}, "
        f"key_file: {pki.client_key}}}}}\n"
        "outbox: {max_mib: 16}\n"
        "devices:\n  - {protocol: modbus_tcp, name: d, host: 127.0.0.1,\n"
        "     tags: [{name: t, address: 0}]}\n"
    )
    (tmp_path / "state").mkdir()
    facts = host_facts(load_config(cfg_path))
    assert facts["outbox_limit_bytes"] == 16 * 2**20
    assert list(facts["disk_free_bytes"]) == [str(tmp_path / "state")]
    assert facts["disk_free_bytes"][str(tmp_path / "state")] > 0
    expiry = facts["cert_expiry"]
    assert set(expiry) == {"uplink.tls.cert_file", "uplink.tls.ca_file"}
    days = (expiry["uplink.tls.cert_file"] - time.time()) / 86400
    assert 80 < days < 100  # tests/tlscerts.py issues for 90 days
    snap = make_snapshot(host=facts)
    with MetricsServer(lambda: snap, port=0) as srv:
        m = samples(get(srv.url + "/metrics")[2])
    assert m[("edgegw_outbox_limit_bytes", ())] == 16 * 2**20
    key = (
        "edgegw_certificate_expiry_timestamp_seconds",
        (("certificate", "uplink.tls.cert_file"),),
    )
    assert m[key] == expiry["uplink.tls.cert_file"]
    assert m[("edgegw_disk_free_bytes", (("path", str(tmp_path / "state")),))] > 0


def test_the_opcua_client_certificate_the_gateway_generates_has_its_expiry(
    tmp_path: Path,
) -> None:
    """A real asyncua server with security: the OPC UA client certificate the driver
    generates in the state dir at its first connect (and the pinned server certificate)
    get their expiry in the host facts and the metrics, beside the uplink's."""
    from cryptography import x509

    from gateway.registry import build_device
    from tests.drivers.opcua.conftest import SimThread

    sim = SimThread(security=True)
    try:
        state = tmp_path / "state"
        cfg_path = tmp_path / "gw.yaml"
        cfg_path.write_text(
            f"gateway: {{id: gw, state_dir: {state}}}\n"
            "devices:\n"
            f"  - {{protocol: opcua, name: plc, endpoint: '{sim.endpoint}',\n"
            "     security_policy: Aes128Sha256RsaOaep,\n"
            f"     server_certificate: {sim.sim.certificate_path},\n"
            "     tags: [{name: t, node: 'ns=2;s=Plant.Boiler.Temperature'}]}\n"
        )
        state.mkdir()
        cfg = load_config(cfg_path)
        before = host_facts(cfg, _cache={})["cert_expiry"]
        assert set(before) == {"opcua.plc.server_certificate"}  # none generated yet

        async def first_connect() -> Batch:
            rt = build_device(cfg.devices[0], state)
            await rt.driver.connect()
            try:
                return await rt.driver.read(rt.plan)
            finally:
                await rt.driver.close()

        assert asyncio.run(first_connect()).ok
        expiry = host_facts(cfg, _cache={})["cert_expiry"]
        server = x509.load_der_x509_certificate(Path(sim.sim.certificate_path).read_bytes())
    finally:
        sim.close()
    generated = state / "pki" / "plc" / "own" / "cert.der"
    cert = x509.load_der_x509_certificate(generated.read_bytes())
    assert expiry == {
        "opcua.plc.client_certificate": cert.not_valid_after_utc.timestamp(),
        "opcua.plc.server_certificate": server.not_valid_after_utc.timestamp(),
    }
    assert 3600 < (expiry["opcua.plc.client_certificate"] - time.time()) / 86400 < 3660
    snap = make_snapshot(host={"cert_expiry": expiry})
    with MetricsServer(lambda: snap, port=0) as srv:
        m = samples(get(srv.url + "/metrics")[2])
    key = (
        "edgegw_certificate_expiry_timestamp_seconds",
        (("certificate", "opcua.plc.client_certificate"),),
    )
    assert m[key] == expiry["opcua.plc.client_certificate"]


def full_snapshot() -> dict[str, Any]:
    """A snapshot with every optional section filled, so every metric is produced."""
    h = asdict(Histogram())
    snap = make_snapshot(
        host={
            "outbox_limit_bytes": 1,
            "disk_free_bytes": {"/var/lib/edgegw": 1},
            "cert_expiry": {"uplink.tls.cert_file": 1.0},
        }
    )
    snap["uplink"] = {
        **snap["uplink"],
        "points_acked": 1,
        "bytes_published": 1,
        "puback_latency": h,
        "set_aside": 1,
        "limits": {"inflight_window": 64, "client_id": "edgegw-gw1"},
    }  # type: ignore[dict-item]
    snap["drops"] = {"outbox_full": {"messages": 1, "points": 1, "intentional": True}}
    snap["task_health"] = {
        "pipeline": {"restarts": 1, "failures": 1, "failing": False, "last_error": "E: x"}
    }
    snap["devices"]["boiler"].update(  # type: ignore[index]
        bad_readings=0,
        last_ok_ns=1,
        latency=h,
        driver={
            "requests": 1,
            "notifications": 1,
            "timeouts": 0,
            "link_errors": 0,
            "exceptions": {"2": 1},
            "decode_errors": 0,
            "splits": 0,
            "plan_requests": 1,
        },
    )
    snap["inference"] = {
        "m": {
            "score": 0.1,
            "threshold": 1,
            "anomalous": False,
            "inferences": 1,
            "events": 0,
            "windows_skipped": 0,
            "windows_failed": 0,
        }
    }
    return snap


def test_the_readme_lists_every_metric_and_no_other() -> None:
    """The README's metrics table (between its markers) names exactly the families the
    gateway exports (process_* aside)."""
    snap = full_snapshot()
    with MetricsServer(lambda: snap, port=0, process_metrics=False) as srv:
        body = get(srv.url + "/metrics")[2]
    exported = {
        f.name + ("_total" if f.type == "counter" else "")
        for f in text_string_to_metric_families(body)
    }
    readme = (REPO / "README.md").read_text()
    table = readme.split("<!-- metrics -->", 1)[1].split("<!-- /metrics -->", 1)[0]
    listed = set(re.findall(r"^\| `(edgegw_[a-z_]+)`", table, re.M))
    assert listed == exported, (
        f"in the README only: {sorted(listed - exported)}; "
        f"exported only: {sorted(exported - listed)}"
    )
    assert "edgegw_drops_" not in readme
