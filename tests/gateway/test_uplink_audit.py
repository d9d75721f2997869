"""What the broker refuses is audited, and bounded: `edgegw run` as a process against a
real mosquitto whose ACL forbids the gateway's topic (every publish refused, PUBACK
0x87: a refusal an operator must fix, retried slowly) and whose Maximum Packet Size
(8192) is below a message the gateway sealed before it knew the limit (set aside with
a signed notice). Both end in the gateway's signed audit log: the first occurrence at
once, the repeats as one summary, the last one written at the clean stop."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

from gateway.mosquitto import Mosquitto, free_port
from gateway.outbox_thread import OutboxThread
from gateway.pipeline import Pipeline
from security import AUDIT_FILE, DeviceKey
from security.checkpoint import Record, parse_entries

from .upstream import Gateway, wait_for

GW = "gw-refused"


def _seed(state: Path, key: DeviceKey, sizes: list[int]) -> None:
    """Messages committed before the gateway ever connected (no size limit known then),
    one per size: a single reading whose string value has that many bytes."""

    async def main() -> None:
        ot = OutboxThread(state / "outbox.db")
        await ot.open()
        pipe = Pipeline(
            gw_id=GW,
            boot=1,
            topic=f"edgegw/{GW}/telemetry",
            notice_topic=f"edgegw/{GW}/notice",
            key=key,
            outbox=ot,
            flush_window_s=0.01,
            max_points=1,
        )
        for i, n in enumerate(sizes):
            await pipe._seal([(f"plc/s{i}", time.time_ns(), "v" * n, 0)])
        await ot.close()

    asyncio.run(main())


def _records(state: Path, event: str) -> list[Record]:
    entries = parse_entries((state / AUDIT_FILE).read_bytes()).entries
    return [e.record for e in entries if e.record is not None and e.record.event == event]


def test_refusals_and_set_aside_messages_are_audited_and_bounded(tmp_path: Path) -> None:
    state = tmp_path / "state"
    key, _ = DeviceKey.load_or_create(state)
    _seed(state, key, [100, 20_000, 100])  # seq 2 is larger than the broker takes
    pw = tmp_path / "mqtt-password"
    pw.write_text("x\n")
    pw.chmod(0o600)
    with Mosquitto(
        host="::1",
        workdir=tmp_path / "broker",
        users={"other": "x"},
        acl="user other\ntopic write elsewhere/#\n",  # not edgegw/...: every publish refused
        max_packet_size=8192,
        extra_conf="log_type notice\n",  # "New client connected ..." per connection
    ) as b:
        dead = free_port("127.0.0.1")  # no device answers: the test is about the uplink
        cfg = tmp_path / "gw.yaml"
        cfg.write_text(
            f"gateway: {{id: {GW}, state_dir: state, flush_window_ms: 100}}\n"
            f"uplink: {{host: '::1', port: {b.port}, username: other, "
            f"password_file: {pw}, reconnect_max_s: 1}}\n"
            "metrics: {enabled: false}\n"
            "devices:\n"
            f"  - {{name: plc, protocol: modbus_tcp, host: 127.0.0.1, port: {dead},\n"
            "      poll_interval_ms: 500, tags: [{name: t, address: 0, type: uint16}]}\n"
        )
        broker_log = tmp_path / "broker" / "mosquitto.log"

        def connections() -> int:
            text = broker_log.read_text(errors="replace") if broker_log.exists() else ""
            return len(re.findall(r"New client connected .* as edgegw-" + GW, text))

        gw = Gateway(cfg, state, tmp_path / "gw.log")
        try:
            gw.start()
            # three refused sessions: the refusal pace is 5 s, then 10 s (jittered);
            # the deadline only catches a hang
            wait_for(lambda: connections() >= 3, "three refused connections", 60)
            before_stop = connections()
            gw.stop()
        finally:
            gw.cleanup()
        sessions = connections()  # the stop drains: it may try again, unaudited

    log = gw.text()
    assert "cannot write audit record" not in log, log
    # the set-aside message: audited once, naming its seq
    (aside,) = _records(state, "message_set_aside")
    assert aside.detail["reason"] == "seq 2: refused_by_broker"
    # the refusals: the first at once with the fix, the repeats as one summary at the stop
    refusals = _records(state, "broker_refusal")
    assert len(refusals) == 2, [r.detail for r in refusals]
    first, summary = refusals
    assert "Not authorized (0x87)" in first.detail["reason"]
    assert "(the broker's ACL)" in first.detail["reason"]
    repeated = summary.detail["repeated"]
    # every refused session before the stop is counted
    assert before_stop <= 1 + repeated <= sessions, (before_stop, sessions, summary.detail)
    assert summary.detail["reasons"] == {first.detail["reason"]: repeated}
    # ... written before the stop record, while the log was open
    stop = _records(state, "stop")[-1]
    assert summary.seq < stop.seq
    # the journal too: the refusal said once with the fix, the link's ups and downs once
    lines = log.splitlines()
    said = [x for x in lines if "Not authorized (0x87)" in x and "more failed attempts" not in x]
    assert len([x for x in said if " WARNING " in x]) == 1, said
    assert len([x for x in lines if "uplink up" in x]) == 1, log
    (counted,) = [x for x in lines if "more failed attempts" in x]  # at the stop
    found = re.search(r"uplink: (\d+) more failed attempts", counted)
    assert found and int(found[1]) >= repeated, counted  # the drain may have tried again
