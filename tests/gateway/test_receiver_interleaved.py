"""The receiver with several gateways at once, their messages interleaved (as a shared
broker delivers them): each gateway's seqs, duplicates, gaps and drop notices are its
own; the same seq from two gateways is two messages; one gateway's notice explains
nothing of another's."""

from __future__ import annotations

import random

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.receiver import Outcome, Receiver
from gateway.wire import encode_payload
from security import DeviceKey, sign1

GWS = ("gw-a", "gw-b", "gw-c")


def message(key: DeviceKey, gw: str, seq: int, kind: str = "telemetry", **f: object) -> tuple:
    topic = f"edgegw/{gw}/{kind}"
    fields = f or {"readings": [(f"d/{gw}", 10**18 + seq, float(seq), 0)]}
    payload = encode_payload(gw=gw, seq=seq, boot=1, kind=kind, t_ns=seq, **fields)
    return topic, sign1(payload, key, topic.encode())


def test_interleaved_gateways_are_tracked_apart() -> None:
    keys = {gw: DeviceKey(Ed25519PrivateKey.generate()) for gw in GWS}
    rx = Receiver({gw: k.public_key for gw, k in keys.items()}, "edgegw")
    rng = random.Random(7)
    # gw-a: 1..50 complete; gw-b: 1..50 without 20..24 (a gap); gw-c: 1..40 and a notice
    # (seq 41) that explains 10..12, which it never sends
    plan = [(g, s) for g in ("gw-a", "gw-b") for s in range(1, 51)]
    plan = [(g, s) for g, s in plan if not (g == "gw-b" and 20 <= s <= 24)]
    plan += [("gw-c", s) for s in range(1, 41) if not 10 <= s <= 12]
    rng.shuffle(plan)
    msgs = [message(keys[g], g, s) for g, s in plan]
    drop = {
        "first_seq": 10,
        "last_seq": 12,
        "messages": 3,
        "points": 3,
        "bytes": 0,
        "reason": "outbox_full",
        "at": 1,
    }
    notice = message(keys["gw-c"], "gw-c", 41, "notice", notice="data_dropped", drops=[drop])
    msgs.insert(len(msgs) // 2, notice)
    dup = msgs[5]
    outcomes = [rx.handle(t, b) for t, b in [*msgs, dup]]
    assert outcomes[:-1] == [Outcome.VALID] * len(msgs)
    assert outcomes[-1] == Outcome.DUPLICATE
    assert rx.received("gw-a") == [(1, 50)]
    assert rx.received("gw-b") == [(1, 19), (25, 50)]
    assert rx.received("gw-c") == [(1, 41)]  # 10..12 explained by its own notice
    assert rx.missing().get("gw-b") == [(20, 24)] and not rx.missing().get("gw-a")
    assert rx.stats.gaps == 5 and rx.stats.duplicates == 1 and rx.stats.dropped_seqs == 3
    # another gateway's notice explains nothing here: gw-a cannot fill gw-b's gap
    forged = message(
        keys["gw-a"],
        "gw-a",
        51,
        "notice",
        notice="data_dropped",
        drops=[{**drop, "first_seq": 20, "last_seq": 24}],
    )
    assert rx.handle(*forged) == Outcome.VALID
    assert rx.received("gw-b") == [(1, 19), (25, 50)]
    assert rx.received("gw-a") == [(1, 51)]  # 20..24 were already seen for gw-a
