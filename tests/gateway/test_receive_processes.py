"""Platform trust with real processes: a gateway (`edgegw run`) publishing through a real
mosquitto to `edgegw receive` (its own process and SQLite store) while an attacker on the
broker sends the attack corpus; key rotation end to end; the audit witness seeing a reset
and a rollback. Every message lands in its class, nothing bad is stored, genuine data
arrives complete, and a receiver restart changes nothing."""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest

from gateway.mosquitto import Mosquitto
from gateway.receiver import Outcome
from gateway.wire import encode_payload
from security import DeviceKey, sign1
from security.cose import parse1
from tests.gateway.attack_corpus import quadratic_audit_blob
from tests.gateway.platform_rig import GW, PlatformRig, Publisher, cli

TEL = f"edgegw/{GW}/telemetry"
COUNTER = {  # the receiver's summary field for each class
    Outcome.MALFORMED: "malformed",
    Outcome.BAD_SIGNATURE: "signature_failures",
    Outcome.DUPLICATE: "duplicates",
    Outcome.UNKNOWN_KID: "unknown_kid",
    Outcome.UNKNOWN_GATEWAY: "unknown_gateway",
    Outcome.WRONG_GATEWAY: "wrong_gateway",
    Outcome.OVERSIZE: "oversize",
    Outcome.CONFLICT: "conflicts",
    Outcome.REPLAY: "replays",
    Outcome.TOPIC_MISMATCH: "topic_mismatch",
    Outcome.IGNORED: "ignored",
}


@pytest.fixture
def rig(tmp_path: Path, broker: Mosquitto) -> Iterator[PlatformRig]:
    r = PlatformRig(tmp_path, broker)
    try:
        yield r
    finally:
        r.stop()


def envelope(protected: bytes, unprotected: bytes, payload: bytes, sig: bytes) -> bytes:
    return (
        b"\xd2\x84" + cbor2.dumps(protected) + unprotected + cbor2.dumps(payload) + cbor2.dumps(sig)
    )


def attacks(
    real: bytes, stolen: DeviceKey, gw2: DeviceKey, stranger: DeviceKey
) -> list[tuple[str, bytes, Outcome]]:
    """Built from one genuine message the attacker captured, keys they made, the key of
    another gateway, and (for the last ones) this gateway's own stolen key."""
    env = parse1(real)
    p = cbor2.loads(env.payload)

    def tel(key: DeviceKey, on: str = TEL, **fields: object) -> bytes:
        body = {
            "gw": GW,
            "seq": p["seq"],
            "boot": p["boot"],
            "kind": "telemetry",
            "t_ns": 1,
            "readings": [["plc/x", 1, 1.0, 0]],
        }
        body.update(fields)  # type: ignore[arg-type]
        return sign1(encode_payload(**body), key, on.encode())  # type: ignore[arg-type]

    seq_true = sign1(cbor2.dumps({**p, "seq": True}), stolen, TEL.encode())
    relabelled = envelope(env.protected, cbor2.dumps({"x": 1}), env.payload, env.signature)
    bomb = b"\xa1\x61x" + b"\x81" * 100_000 + b"\x00"
    nested = envelope(env.protected, bomb, env.payload, env.signature)
    es256 = envelope(cbor2.dumps({1: -7, 4: stolen.kid}), b"\xa0", env.payload, env.signature)
    gw9 = "edgegw/gw9/telemetry"
    return [
        (TEL, os.urandom(200), Outcome.MALFORMED),
        (TEL, real[:-9], Outcome.MALFORMED),
        (TEL, real[:-1] + bytes([real[-1] ^ 0x40]), Outcome.BAD_SIGNATURE),
        (f"edgegw/{GW}/event", real, Outcome.BAD_SIGNATURE),
        (TEL, real, Outcome.DUPLICATE),
        (TEL, real[1:], Outcome.DUPLICATE),
        (TEL, relabelled, Outcome.DUPLICATE),
        (TEL, tel(stranger, seq=10**6), Outcome.UNKNOWN_KID),
        (TEL, tel(gw2, seq=10**6), Outcome.WRONG_GATEWAY),
        (gw9, tel(stranger, on=gw9, gw="gw9"), Outcome.UNKNOWN_GATEWAY),
        (TEL, os.urandom(3 * 2**20), Outcome.OVERSIZE),
        (f"edgegw/{GW}/audit", quadratic_audit_blob(1_500_000), Outcome.UNKNOWN_KID),
        (TEL, nested, Outcome.MALFORMED),
        (TEL, es256, Outcome.MALFORMED),
        (f"edgegw/{GW}/command", b"\x00", Outcome.IGNORED),
        # the gateway's own key in the attacker's hands
        (TEL, tel(stolen), Outcome.CONFLICT),
        (TEL, tel(stolen, seq=10**6, boot=0), Outcome.REPLAY),
        (TEL, tel(stolen, seq=10**6 + 1, gw="gw7"), Outcome.TOPIC_MISMATCH),
        (TEL, seq_true, Outcome.MALFORMED),
    ]


def captured(pub: Publisher, timeout: float = 20) -> bytes:
    deadline = time.monotonic() + timeout
    while not pub.seen.get(TEL):
        assert time.monotonic() < deadline, "the gateway published nothing"
        time.sleep(0.1)
    return pub.seen[TEL][0]


def test_attacks_beside_a_real_gateway_across_a_receiver_restart(rig: PlatformRig) -> None:
    keys = rig.tmp / "keys"
    gw2 = DeviceKey.load_or_create(keys / "gw2")[0]
    stranger = DeviceKey.load_or_create(keys / "stranger")[0]
    (keys / "gw2.pem").write_bytes(gw2.public_pem())
    rig.enrol_extra = [f"gw2={keys / 'gw2.pem'}"]
    rig.start_receiver()
    rig.start_gateway()
    pub = Publisher(rig.broker.port)
    try:
        real = captured(pub)
        stolen = DeviceKey.load(rig.state / DeviceKey.PRIVATE_KEY_FILE)
        corpus = attacks(real, stolen, gw2, stranger)
        expected = Counter(COUNTER[o] for _, _, o in corpus)
        for topic, body, _ in corpus:
            pub.send(topic, body)
        time.sleep(1.5)
        first = rig.stop_receiver()
        time.sleep(1.0)  # the gateway goes on; the broker keeps the session's messages
        rig.start_receiver()
        for topic, body, _ in corpus:
            pub.send(topic, body)
        time.sleep(1.5)
        rig.stop_gateway()
        assert rig.wait_stored(), rig.rx_log(2)[-2000:]
    finally:
        pub.close()
    second = rig.stop_receiver()
    for name, n in expected.items():
        if name == "duplicates":  # the gateway's own re-sends add to these
            assert first[name] >= n and second[name] >= n, (name, first, second)
        else:
            assert (first[name], second[name]) == (n, n), (name, first, second)
    # genuine data: complete, stored once, no gap; nothing of the attacker's stored
    last = rig.last_seq()
    assert rig.stored_seqs() == last
    assert rig.query("SELECT min(seq), max(seq) FROM messages") == [(1, last)]
    assert second["gaps"] == 0 and second["missing"] == {}
    assert rig.query("SELECT count(*) FROM readings")[0][0] == rig.polled
    assert rig.query("SELECT count(*) FROM readings_view WHERE tag = 'plc/x'")[0][0] == 0
    assert rig.query("SELECT DISTINCT gw FROM messages") == [(GW,)]
    alerts = Counter(rig.alerts())
    assert alerts == {
        (c, 1): 2
        for c in ("conflict", "replay", "wrong_gateway", "topic_mismatch", "signed_malformed")
    }
    # the audit log as the platform received it verifies as the gateway's own file does
    copy = rig.tmp / "upstream.cborseq"
    r = cli("audit", "export", "--db", str(rig.db), "--gateway", GW, "-o", str(copy))
    assert r.returncode == 0, r.stderr
    assert copy.read_bytes() == (rig.state / "audit.cborseq").read_bytes()
    r = cli("audit", "verify", str(copy), "--pubkey", str(rig.root_pem))
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("receiver_restarted", [False, True], ids=["running", "restarted"])
def test_key_rotation_end_to_end(rig: PlatformRig, receiver_restarted: bool) -> None:
    """After `edgegw keys rotate` delivery goes on with no unknown_kid, whether the
    receiver ran through the rotation or started after it."""
    rig.start_receiver()
    rig.run_gateway(2.5)
    if receiver_restarted:
        rig.stop_receiver()
    r = cli("keys", "rotate", "-c", str(rig.cfg))
    assert r.returncode == 0, r.stderr
    rig.start_gateway()
    time.sleep(1.5)
    if receiver_restarted:
        rig.start_receiver()
    time.sleep(1.5)
    rig.stop_gateway()
    assert rig.wait_stored(), rig.rx_log(rig.rx_runs)[-2000:]
    final = rig.stop_receiver()
    assert final["unknown_kid"] == 0 and final["signature_failures"] == 0, final
    assert final["keys_learned"] >= 1, final
    assert final["gaps"] == 0 and rig.stored_seqs() == rig.last_seq()
    assert rig.query("SELECT count(*) FROM readings")[0][0] == rig.polled
    assert rig.alerts() == []
    kids = rig.query("SELECT n FROM gateway_keys WHERE gw = ? ORDER BY n", GW)
    assert kids == [(0,), (1,)]
    copy = rig.tmp / "upstream.cborseq"
    assert (
        cli("audit", "export", "--db", str(rig.db), "--gateway", GW, "-o", str(copy)).returncode
        == 0
    )
    r = cli("audit", "verify", str(copy), "--pubkey", str(rig.root_pem))
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_replaced_audit_log_is_announced_and_witnessed(rig: PlatformRig) -> None:
    """A damaged log is set aside by the gateway and a new one starts: the first message
    of the new log carries the reset notice; the witness records it (not a security alert)
    and follows the new log, which verifies upstream."""
    rig.start_receiver()
    rig.run_gateway(2.0)
    log = rig.state / "audit.cborseq"
    data = bytearray(log.read_bytes())
    data[len(data) // 2] ^= 0xFF  # damage in the middle: the gateway must set it aside
    log.write_bytes(bytes(data))
    rig.run_gateway(2.0)
    assert rig.wait_stored()
    final = rig.stop_receiver()
    assert rig.alerts() == [("audit_reset", 0)], rig.alerts()
    assert final["gaps"] == 0
    copy = rig.tmp / "upstream.cborseq"
    assert (
        cli("audit", "export", "--db", str(rig.db), "--gateway", GW, "-o", str(copy)).returncode
        == 0
    )
    assert copy.read_bytes() == log.read_bytes()
    r = cli("audit", "verify", str(copy), "--pubkey", str(rig.root_pem))
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_rolled_back_gateway_is_seen(rig: PlatformRig) -> None:
    """The state directory restored from an older copy: the gateway reuses seqs and
    rewrites its audit log; the receiver raises both, and stores nothing over what it had."""
    rig.start_receiver()
    rig.run_gateway(2.0)
    backup = rig.tmp / "backup"
    shutil.copytree(rig.state, backup)
    rig.run_gateway(2.0)
    stored_before = rig.stored_seqs()
    shutil.rmtree(rig.state)
    shutil.copytree(backup, rig.state)
    rig.run_gateway(2.0)
    time.sleep(2.0)
    final = rig.stop_receiver()
    classes = {c for c, security in rig.alerts() if security}
    assert classes & {"audit_rewritten", "audit_shrank"}, rig.alerts()
    assert classes & {"conflict", "replay"}, rig.alerts()
    assert final["conflicts"] + final["replays"] > 0
    assert rig.stored_seqs() >= stored_before  # nothing overwritten
