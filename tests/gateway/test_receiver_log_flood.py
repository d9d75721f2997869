"""Rejections anyone can cause are logged at most once per class and gateway every
LOG_EVERY_S; a flood of junk under ever new gateway ids (anyone who may publish under the
prefix can send one) must not grow the receiver's memory or its log without bound."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.receiver import Outcome, Receiver
from gateway.receiver import core as receiver_core
from security import DeviceKey
from tests.gateway.test_receiver import TOPIC, msg


def test_junk_under_ever_new_gateway_ids_is_bounded_in_memory_and_log_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = DeviceKey.load_or_create(tmp_path / "gw")[0]
    rx = Receiver({"gw1": key.public_key}, "edgegw")
    cap = receiver_core.LOG_BUCKETS_MAX
    caplog.set_level(logging.WARNING, logger=receiver_core.log.name)
    n = 3 * cap
    for i in range(n):
        assert rx.handle(f"edgegw/x{i}/telemetry", b"junk") is not Outcome.VALID
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    # one bucket (and line) per gateway up to the cap, then one shared bucket: one line
    assert len(rx._logged) == cap + 1
    assert len(warnings) == cap + 1
    # the enrolled gateway is still served, and logged about, as before
    assert rx.handle(TOPIC, msg(key, 1)) is Outcome.VALID
    shared = next(k for k in rx._logged if k[1] == "*")
    assert rx._logged[shared][1] == n - cap - 1  # suppressed: counted, said with the next line
    caplog.clear()
    assert rx.handle(f"edgegw/x{n}/telemetry", b"junk") is not Outcome.VALID
    assert caplog.records == []  # the shared bucket logged less than LOG_EVERY_S ago
    assert rx._logged[shared][1] == n - cap and len(rx._logged) == cap + 1
