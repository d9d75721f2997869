"""Messages an attacker who can publish to the broker could send, each with the outcome the
receiver must give it, interleaved with a genuine gateway's traffic.

The attacker holds: any key of their own, a stolen key of another enrolled gateway
(``gw2``), and copies of every genuine message ever published. Some entries model a
genuine key signing garbage (a compromised or broken gateway): those must be refused and
alerted, never stored. Used by the in-process test and by the test with real processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2

from gateway.receiver import Outcome
from gateway.wire import encode_payload
from security import DeviceKey, sign1
from security.cose import KEYCHAIN, encode_unprotected, parse1

PREFIX = "edgegw"
GW, GW2 = "gw1", "gw2"


def topic(kind: str, gw: str = GW) -> str:
    return f"{PREFIX}/{gw}/{kind}"


@dataclass(frozen=True)
class Case:
    name: str
    topic: str
    body: bytes
    expect: Outcome
    genuine: bool = False  # part of the gateway's real traffic (must be stored)
    points: int = 0


@dataclass
class Keys:
    gw: DeviceKey  # the genuine gateway
    gw2: DeviceKey  # another enrolled gateway; its key is stolen
    stranger: DeviceKey  # enrolled nowhere

    @classmethod
    def make(cls, base: Path) -> Keys:
        return cls(*(DeviceKey.load_or_create(base / n)[0] for n in ("gw", "gw2", "stranger")))


def telemetry(
    key: DeviceKey,
    seq: int,
    *,
    gw: str = GW,
    boot: int = 1,
    n: int = 3,
    on: str | None = None,
    version: int = 2,
) -> bytes:
    readings = [
        [f"plc/t{i}", 1_700_000_000_000_000_000 + seq, float(seq * 10 + i), 0] for i in range(n)
    ]
    p = encode_payload(
        gw=gw, seq=seq, boot=boot, kind="telemetry", t_ns=1, readings=readings, version=version
    )
    return sign1(p, key, (on or topic("telemetry", gw)).encode())


def telemetry_v2(key: DeviceKey, seq: int, tags: Any, blocks: Any) -> bytes:
    """A version-2 telemetry payload with these tag sets and blocks, as signed by ``key``."""
    body = {"v": 2, "gw": GW, "seq": seq, "boot": 2, "kind": "telemetry", "t": 1}
    return signed_raw(key, {**body, "tags": tags, "b": blocks}, topic("telemetry"))


def v2_attacks(k: DeviceKey) -> list[Case]:
    """Version-2 payloads a genuine key could sign that no gateway would: columns that do
    not line up, indexes out of range, counts that claim more than the message holds."""
    t_tel = topic("telemetry")
    ok_set = [["plc/", ["a", "b"]]]
    ts = 1_700_000_000_000_000_000
    bad = {
        "set index out of range": (ok_set, [[1, ts, [1.0, 2.0], 0]]),
        "negative set index": (ok_set, [[-1, ts, [1.0, 2.0], 0]]),
        "fewer values than tags": (ok_set, [[0, ts, [1.0], 0]]),
        "more values than tags": (ok_set, [[0, ts, [1.0, 2.0, 3.0], 0]]),
        "ts column too short": (ok_set, [[0, [ts], [1.0, 2.0], 0]]),
        "quality column too long": (ok_set, [[0, ts, [1.0, 2.0], [0, 0, 0]]]),
        "quality 5": (ok_set, [[0, ts, [1.0, 2.0], [0, 5]]]),
        "reason column too short": (ok_set, [[0, ts, [None, None], 1, ["x"]]]),
        "server_ts negative": (ok_set, [[0, ts, [1.0, 2.0], 0, None, [1, -1]]]),
        "a value that is an array": (ok_set, [[0, ts, [1.0, [2.0]], 0]]),
        "tag set never read": ([*ok_set, ["x/", ["y"]]], [[0, ts, [1.0, 2.0], 0]]),
        "empty tag set": ([["plc/", []]], []),
        "prefix of 65 characters": ([["p" * 65, ["a"]]], [[0, ts, [1.0], 0]]),
        "empty tag name": ([["", ["a", ""]]], [[0, ts, [1.0, 2.0], 0]]),
        "a block of 7 elements": (ok_set, [[0, ts, [1.0, 2.0], 0, None, None, 1]]),
        "blocks not an array": (ok_set, {"0": 1}),
    }
    cases = [
        Case(f"v2: {name}", t_tel, telemetry_v2(k, 910 + i, tags, blocks), Outcome.MALFORMED)
        for i, (name, (tags, blocks)) in enumerate(bad.items())
    ]
    # Counts that claim far more than the message holds: refused without allocating them.
    body = cbor2.dumps({"v": 2, "gw": GW, "seq": 950, "boot": 2, "kind": "telemetry", "t": 1})
    tags = b"\x64tags" + cbor2.dumps([["plc/", ["a"]]])
    for name, tail in (
        ("v2: 2**32 tag sets claimed", b"\x64tags\x9a\xff\xff\xff\xff"),
        ("v2: 2**64-1 values claimed", tags + b"\x61b\x81\x84\x00\x01\x9b" + b"\xff" * 8),
    ):
        huge = b"\xa8" + body[1:] + tail
        cases.append(Case(name, t_tel, sign1(huge, k, t_tel.encode()), Outcome.MALFORMED))
    return cases


def signed_raw(key: DeviceKey, body: dict[str, Any], t: str) -> bytes:
    return sign1(cbor2.dumps(body), key, t.encode())


def _envelope(protected: bytes, unprotected: bytes, payload: bytes, sig: bytes) -> bytes:
    return (
        b"\xd2\x84" + cbor2.dumps(protected) + unprotected + cbor2.dumps(payload) + cbor2.dumps(sig)
    )


def quadratic_audit_blob(size: int) -> bytes:
    """What froze the first receiver: an audit message with an unknown kid whose entries
    the old parser re-tried at every offset."""
    junk = (b"\xa1\x63seq" + b"\x9b" + b"\xff" * 8) * (size // 13)
    payload = cbor2.dumps(
        {"v": 1, "gw": GW, "seq": 1, "boot": 1, "kind": "audit", "t": 1, "entries": [junk]}
    )
    return _envelope(
        bytes.fromhex("a2012704") + b"\x50" + os.urandom(16), b"\xa0", payload, bytes(64)
    )


def corpus(keys: Keys, genuine_count: int = 40) -> list[Case]:
    """Genuine messages 1..genuine_count (boot 2 from seq 21) with attacks between them."""
    k, t_tel = keys.gw, topic("telemetry")
    cases: list[Case] = []
    genuine: dict[int, bytes] = {}
    for seq in range(1, genuine_count + 1):
        boot = 1 if seq <= 20 else 2
        # A gateway not yet upgraded sends payload version 1: both are accepted.
        genuine[seq] = telemetry(k, seq, boot=boot, version=1 if seq % 7 == 0 else 2)
    g5 = parse1(genuine[5])
    attacks = [
        # -- unauthenticated: anyone on the broker ------------------------------------
        Case("garbage", t_tel, os.urandom(300), Outcome.MALFORMED),
        Case("truncated", t_tel, genuine[5][:-7], Outcome.MALFORMED),
        Case("not a gateway topic", f"{PREFIX}/gw1", genuine[5], Outcome.MALFORMED),
        Case("unknown kind", topic("firmware"), genuine[5], Outcome.MALFORMED),
        Case("downlink topic", topic("command"), b"\x00", Outcome.IGNORED),
        Case("oversize", t_tel, b"\x00" * (3 * 2**20), Outcome.OVERSIZE),
        Case(
            "unknown gateway",
            topic("telemetry", "gw9"),
            telemetry(keys.stranger, 1, gw="gw9"),
            Outcome.UNKNOWN_GATEWAY,
        ),
        Case("stranger's key", t_tel, telemetry(keys.stranger, 1000), Outcome.UNKNOWN_KID),
        Case(
            "bit flip", t_tel, genuine[5][:-1] + bytes([genuine[5][-1] ^ 1]), Outcome.BAD_SIGNATURE
        ),
        Case(
            "payload swapped",
            t_tel,
            _envelope(g5.protected, b"\xa0", parse1(genuine[6]).payload, g5.signature),
            Outcome.BAD_SIGNATURE,
        ),
        Case("cross-kind topic", topic("event"), genuine[5], Outcome.BAD_SIGNATURE),
        Case("cross-gateway topic", topic("telemetry", GW2), genuine[5], Outcome.BAD_SIGNATURE),
        Case(
            "alg ES256",
            t_tel,
            _envelope(cbor2.dumps({1: -7, 4: k.kid}), b"\xa0", g5.payload, g5.signature),
            Outcome.MALFORMED,
        ),
        Case(
            "alg in unprotected",
            t_tel,
            _envelope(g5.protected, cbor2.dumps({1: -7}), g5.payload, g5.signature),
            Outcome.MALFORMED,
        ),
        Case(
            "nesting bomb in header",
            t_tel,
            _envelope(
                g5.protected, b"\xa1\x61x" + b"\x81" * 200_000 + b"\x00", g5.payload, g5.signature
            ),
            Outcome.MALFORMED,
        ),
        Case(
            "tag bomb in header",
            t_tel,
            _envelope(
                g5.protected,
                cbor2.dumps({"x": cbor2.CBORTag(30, [3**20000, 2**30000])}),
                g5.payload,
                g5.signature,
            ),
            Outcome.MALFORMED,
        ),
        Case(
            "junk keychain",
            t_tel,
            sign1(
                cbor2.dumps({"v": 1}),
                keys.stranger,
                t_tel.encode(),
                encode_unprotected({KEYCHAIN: [os.urandom(300) for _ in range(16)]}),
            ),
            Outcome.UNKNOWN_KID,
        ),
        Case(
            "quadratic audit blob",
            topic("audit"),
            quadratic_audit_blob(1_500_000),
            Outcome.UNKNOWN_KID,
        ),
        # -- a stolen key of another gateway ------------------------------------------
        Case("gw2's key speaks for gw1", t_tel, telemetry(keys.gw2, 1001), Outcome.WRONG_GATEWAY),
        # -- copies of genuine traffic --------------------------------------------------
        Case("re-sent", t_tel, genuine[5], Outcome.DUPLICATE),
        Case("re-sent untagged", t_tel, genuine[5][1:], Outcome.DUPLICATE),
        Case(
            "re-sent with a label",
            t_tel,
            _envelope(
                g5.protected, cbor2.dumps({"note": "hi", 33: [b"x"]}), g5.payload, g5.signature
            ),
            Outcome.DUPLICATE,
        ),
        # -- a genuine key signing what the gateway never would --------------------------
        Case("conflict", t_tel, telemetry(k, 6, n=1), Outcome.CONFLICT),
        Case("old boot after a new one", t_tel, telemetry(k, 50, boot=1), Outcome.REPLAY),
        Case("topic mismatch", t_tel, telemetry(k, 7, gw="gw7", on=t_tel), Outcome.TOPIC_MISMATCH),
        Case(
            "seq true",
            t_tel,
            signed_raw(
                k,
                {"v": 1, "gw": GW, "seq": True, "boot": 1, "kind": "telemetry", "t": 1, "r": []},
                t_tel,
            ),
            Outcome.MALFORMED,
        ),
        Case(
            "seq -5",
            t_tel,
            signed_raw(
                k,
                {"v": 1, "gw": GW, "seq": -5, "boot": 1, "kind": "telemetry", "t": 1, "r": []},
                t_tel,
            ),
            Outcome.MALFORMED,
        ),
        Case(
            "seq 2**200",
            t_tel,
            signed_raw(
                k,
                {"v": 1, "gw": GW, "seq": 2**200, "boot": 1, "kind": "telemetry", "t": 1, "r": []},
                t_tel,
            ),
            Outcome.MALFORMED,
        ),
        Case(
            "reading not an array",
            t_tel,
            signed_raw(
                k,
                {"v": 1, "gw": GW, "seq": 900, "boot": 2, "kind": "telemetry", "t": 1, "r": [5]},
                t_tel,
            ),
            Outcome.MALFORMED,
        ),
        Case(
            "unknown field",
            t_tel,
            signed_raw(
                k,
                {
                    "v": 1,
                    "gw": GW,
                    "seq": 901,
                    "boot": 2,
                    "kind": "telemetry",
                    "t": 1,
                    "r": [],
                    "admin": True,
                },
                t_tel,
            ),
            Outcome.MALFORMED,
        ),
        Case(
            "malformed drops",
            topic("notice"),
            signed_raw(
                k,
                {
                    "v": 1,
                    "gw": GW,
                    "seq": 902,
                    "boot": 2,
                    "kind": "notice",
                    "t": 1,
                    "notice": "data_dropped",
                    "drops": [{"first_seq": "a"}],
                },
                topic("notice"),
            ),
            Outcome.MALFORMED,
        ),
        Case(
            "drops beyond the notice",
            topic("notice"),
            signed_raw(
                k,
                {
                    "v": 1,
                    "gw": GW,
                    "seq": 903,
                    "boot": 2,
                    "kind": "notice",
                    "t": 1,
                    "notice": "data_dropped",
                    "drops": [
                        {
                            "first_seq": 904,
                            "last_seq": 10**12,
                            "messages": 1,
                            "points": 1,
                            "bytes": 1,
                            "reason": "outbox_full",
                            "at": 1,
                        }
                    ],
                },
                topic("notice"),
            ),
            Outcome.MALFORMED,
        ),
        Case(
            "nesting bomb in payload",
            t_tel,
            sign1(b"\xa1\x61r" + b"\x81" * 100_000 + b"\x00", k, t_tel.encode()),
            Outcome.MALFORMED,
        ),
        *v2_attacks(k),
        Case(
            "payload version 3",
            t_tel,
            signed_raw(
                k,
                {"v": 3, "gw": GW, "seq": 960, "boot": 2, "kind": "telemetry", "t": 1, "r": []},
                t_tel,
            ),
            Outcome.MALFORMED,
        ),
    ]
    # Genuine traffic with the attacks spread through it (each attack needs the genuine
    # messages it copies or contradicts to have arrived: put them all after seq 25).
    for seq in range(1, genuine_count + 1):
        cases.append(Case(f"genuine {seq}", t_tel, genuine[seq], Outcome.VALID, True, 3))
        if seq == 25:
            cases += attacks
    return cases
