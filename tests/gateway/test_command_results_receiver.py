"""The receiver takes command_result as a kind of its own: verified like the others,
checked strictly against its fields, stored in ``command_results``; a validly signed
result off the schema is malformed and a security alert, never stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.downlink.wire import result
from gateway.receiver import Outcome, Receiver, SqliteStore
from gateway.wire import encode_payload
from security import DeviceKey, sign1

GW = "gw-r"
TOPIC = f"edgegw/{GW}/command_result"


def sealed(key: DeviceKey, seq: int, res: dict[str, Any]) -> bytes:
    payload = encode_payload(
        gw=GW, seq=seq, boot=1, kind="command_result", t_ns=1_700_000_000_000_000_000,
        result=res,
    )  # fmt: skip
    return sign1(payload, key, TOPIC.encode())


def test_results_are_verified_checked_and_stored(tmp_path: Path) -> None:
    key = DeviceKey(Ed25519PrivateKey.generate())
    store = SqliteStore(tmp_path / "rx.db")
    rx = Receiver({GW: key.public_key}, "edgegw", store=store)
    good = result(digest=b"\x01" * 32, outcome="refused", reason="expired", received_ns=5)
    done = dict(good, id="c-1", kid=b"\x02" * 16, op="write", outcome="done", reason=None,
                tag="plc/sp", value=21.5, before=20.0, after=21.5)  # fmt: skip
    assert rx.handle(TOPIC, sealed(key, 1, good)) is Outcome.VALID
    assert rx.handle(TOPIC, sealed(key, 2, done)) is Outcome.VALID
    bad_cases = {
        "missing field": {k: v for k, v in done.items() if k != "again"},
        "unknown outcome": dict(done, outcome="maybe"),
        "short digest": dict(done, digest=b"\x01"),
        "value not a value": dict(done, after=[1, 2]),
        "huge int": dict(done, value=2**64),
    }
    outcomes = {}
    for seq, (name, res) in enumerate(bad_cases.items(), start=3):
        outcomes[name] = rx.handle(TOPIC, sealed(key, seq, res))
    # signed by someone else: not verified, not stored
    other = DeviceKey(Ed25519PrivateKey.generate())
    forged = rx.handle(TOPIC, sealed(other, 99, done))
    rows = store.db.execute(
        "SELECT seq, id, outcome, reason, tag, value, before, after, again FROM command_results "
        "ORDER BY seq"
    ).fetchall()
    alerts = store.alerts(GW)
    store.close()
    assert rows == [  # values as exact JSON text: any type a reading can have
        (1, None, "refused", "expired", None, None, None, None, 0),
        (2, "c-1", "done", None, "plc/sp", "21.5", "20.0", "21.5", 0),
    ]
    assert all(o is Outcome.MALFORMED for o in outcomes.values()), outcomes
    assert sum(a["class"] == "signed_malformed" for a in alerts) == len(bad_cases)
    assert forged is Outcome.UNKNOWN_KID


def test_results_in_postgresql_keep_every_value_exactly(pg_url: str) -> None:
    from gateway.receiver.pg_store import PgStore

    key = DeviceKey(Ed25519PrivateKey.generate())
    store = PgStore(pg_url)
    rx = Receiver({"gw-pg-cr": key.public_key}, "edgegw", store=store)
    topic = "edgegw/gw-pg-cr/command_result"
    base = result(digest=b"\x01" * 32, outcome="done", reason=None, received_ns=5)
    values = [2**64 - 1, -(2**63), float("nan"), True, "text", b"\x00\xff", None, -0.0]
    for seq, v in enumerate(values, start=1):
        res = dict(base, id=f"c-{seq}", op="write", tag="plc/sp", value=v, after=v)
        p = encode_payload(gw="gw-pg-cr", seq=seq, boot=1, kind="command_result", t_ns=1,
                           result=res)  # fmt: skip
        assert rx.handle(topic, sign1(p, key, topic.encode())) is Outcome.VALID
    rows = store._query(
        "SELECT value::text, received, received_nanos FROM command_results "
        "WHERE gw = 'gw-pg-cr' ORDER BY seq"
    )
    store.close()
    import json

    got = [None if v is None else json.loads(v) for v, _, _ in rows]
    assert got == [2**64 - 1, -(2**63), "nan", True, "text", {"hex": "00ff"}, None, -0.0]
    assert all(nanos == 5 for _, _, nanos in rows)
