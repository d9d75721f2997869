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
    assert rows == [
        (1, None, "refused", "expired", None, None, None, None, 0),
        (2, "c-1", "done", None, "plc/sp", 21.5, 20.0, 21.5, 0),
    ]
    assert all(o is Outcome.MALFORMED for o in outcomes.values()), outcomes
    assert sum(a["class"] == "signed_malformed" for a in alerts) == len(bad_cases)
    assert forged is Outcome.UNKNOWN_KID
