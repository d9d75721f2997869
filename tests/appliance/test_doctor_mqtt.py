"""`edgegw doctor` speaks MQTT as the gateway will: the CONNACK result and the broker's
limits, each classic mistake a precise FAIL with the fix. Real brokers: mosquitto with
a password file, an ACL, max_qos 0, max_packet_size and a TLS listener; amqtt for a
broker that speaks only MQTT 3.1.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.commands import doctor
from gateway.mosquitto import Mosquitto, free_port
from tests.brokers import Amqtt

from . import test_doctor as td
from .conftest import Pki
from .test_doctor import by_name, write_config

# the doctor tests' fixtures: files owned by the tester, a state dir, a TLS listener
_owner_is_whoever_runs_the_test = td._owner_is_whoever_runs_the_test
state = td.state
tls_broker = td.tls_broker


def mqtt_check(tmp_path: Path, state: Path, uplink: dict[str, Any]) -> doctor.Check:
    cfg = write_config(tmp_path / "gw.yaml", state, uplink, [("127.0.0.1", free_port("127.0.0.1"))])
    return by_name(doctor.run_checks(cfg, timeout=3))["broker MQTT"]


def password(tmp_path: Path, text: str) -> str:
    p = tmp_path / "mqtt-password"
    p.write_text(text + "\n")
    p.chmod(0o600)
    return str(p)


@pytest.fixture
def login_broker(tmp_path: Path) -> Any:
    with Mosquitto(
        host="::1",
        workdir=tmp_path / "broker",
        users={"gw": "right", "nobody": "x"},
        acl="user gw\ntopic write edgegw/gw-test/#\nuser nobody\ntopic write other/#\n",
    ) as b:
        yield b


def test_right_login_passes_with_the_limits(
    tmp_path: Path, state: Path, login_broker: Mosquitto
) -> None:
    c = mqtt_check(
        tmp_path,
        state,
        {
            "host": "::1",
            "port": login_broker.port,
            "username": "gw",
            "password_file": password(tmp_path, "right"),
        },
    )
    assert c.outcome == "pass", c
    assert "user 'gw'" in c.detail and "max QoS 2" in c.detail and "receive maximum" in c.detail
    assert "QoS 1 publish acknowledged" in c.detail


def test_wrong_password_fails_with_the_fix(
    tmp_path: Path, state: Path, login_broker: Mosquitto
) -> None:
    pw = password(tmp_path, "wrong")
    c = mqtt_check(
        tmp_path,
        state,
        {"host": "::1", "port": login_broker.port, "username": "gw", "password_file": pw},
    )
    assert c.outcome == "fail" and "refused the connection" in c.detail, c
    assert "uplink.username ('gw')" in c.fix and pw in c.fix


def test_no_login_against_a_broker_that_wants_one(
    tmp_path: Path, state: Path, login_broker: Mosquitto
) -> None:
    c = mqtt_check(tmp_path, state, {"host": "::1", "port": login_broker.port})
    assert c.outcome == "fail" and "set uplink.username" in c.fix, c


def test_an_acl_that_forbids_the_topic_fails(
    tmp_path: Path, state: Path, login_broker: Mosquitto
) -> None:
    c = mqtt_check(
        tmp_path,
        state,
        {
            "host": "::1",
            "port": login_broker.port,
            "username": "nobody",
            "password_file": password(tmp_path, "x"),
        },
    )
    assert c.outcome == "fail" and "was refused: Not authorized" in c.detail, c
    assert "edgegw/gw-test/#" in c.fix and "ACL" in c.fix


def test_a_qos0_only_broker_fails(tmp_path: Path, state: Path) -> None:
    with Mosquitto(host="::1", workdir=tmp_path / "broker", max_qos=0) as b:
        c = mqtt_check(tmp_path, state, {"host": "::1", "port": b.port})
    assert c.outcome == "fail" and "max QoS 0" in c.detail, c
    assert "allows only QoS 0" in c.fix and "max_qos 1" in c.fix


def test_a_message_limit_above_the_brokers_fails(tmp_path: Path, state: Path) -> None:
    with Mosquitto(host="::1", workdir=tmp_path / "broker", max_packet_size=65536) as b:
        c = mqtt_check(tmp_path, state, {"host": "::1", "port": b.port})
        ok = mqtt_check(
            tmp_path, state, {"host": "::1", "port": b.port, "max_message_bytes": 60000}
        )
    assert c.outcome == "fail" and "max packet 65536 bytes" in c.detail, c
    assert "set uplink.max_message_bytes:" in c.fix
    assert ok.outcome == "pass", ok


def test_plaintext_against_a_tls_port_fails(
    tmp_path: Path, state: Path, pki: Pki, tls_broker: tuple[Mosquitto, int]
) -> None:
    _, tls_port = tls_broker
    c = mqtt_check(tmp_path, state, {"host": "::1", "port": tls_port})
    assert c.outcome == "fail" and "no CONNACK" in c.detail, c
    assert "set uplink.tls" in c.fix


def test_a_311_only_broker(tmp_path: Path, state: Path) -> None:
    with Amqtt(tmp_path) as b:
        five = mqtt_check(tmp_path, state, {"host": "::1", "port": b.port})
        eleven = mqtt_check(tmp_path, state, {"host": "::1", "port": b.port, "protocol": "mqtt311"})
    assert five.outcome == "fail" and "Unsupported protocol version" in five.detail, five
    assert five.fix == "the broker does not speak MQTT 5: set uplink.protocol: mqtt311"
    assert eleven.outcome == "warn" and "MQTT 3.1.1" in eleven.detail, eleven
    assert "QoS 1 publish" in eleven.detail and "announce no limits" in eleven.fix
