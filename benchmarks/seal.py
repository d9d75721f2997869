"""The seal of one telemetry message, in parts: the readings into columns, the payload's
CBOR, the COSE signature; CPU µs per message and per point (best of --repeat rounds).

    python benchmarks/seal.py                       # 20 device reads x 50 float32 tags
    python benchmarks/seal.py --devices 100 --tags 50 --payload-version 1

The shape is e2e.py's at 1,000 points/s: every device polled in one window, so one
message a second holds one block per device. The tag sets are met again from the second
message on, as in a running gateway (a kept set is encoded once).
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
sys.path.insert(0, str(REPO))

from gateway.wire import columns, encode_payload  # noqa: E402
from security import DeviceKey, sign1  # noqa: E402

TS = 1_700_000_000_000_000_000


def batches(devices: int, tags: int) -> list[list[tuple[str, int, float, int]]]:
    rng = random.Random(1)
    f32 = struct.Struct("f")
    return [
        [
            (f"plc{d}/t{i:03d}", TS + d * 1000, f32.unpack(f32.pack(rng.random() * 100))[0], 0)
            for i in range(tags)
        ]
        for d in range(devices)
    ]


def cpu_us(fn: Callable[[], object], rounds: int, repeat: int) -> float:
    """Best per-call CPU time of ``repeat`` rounds of ``rounds`` calls, in µs."""
    fn()
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for _ in range(rounds):
            fn()
        best = min(best, (time.process_time() - t0) / rounds)
    return best * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--tags", type=int, default=50)
    ap.add_argument("--payload-version", type=int, choices=(1, 2), default=2)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    groups = batches(a.devices, a.tags)
    points = a.devices * a.tags
    key, _ = DeviceKey.load_or_create(Path(tempfile.mkdtemp(prefix="edgegw-seal-")))
    aad = b"edgegw/bench/telemetry"

    def encode() -> bytes:
        return encode_payload(
            gw="bench-gw",
            seq=1,
            boot=1,
            kind="telemetry",
            t_ns=TS,
            groups=groups,
            version=a.payload_version,
        )

    payload = encode()
    parts = [("encode (all of it)", lambda: encode()), ("sign", lambda: sign1(payload, key, aad))]
    if a.payload_version == 2:
        parts.insert(0, ("  columns", lambda: columns(groups)))
    print(
        f"one message: {a.devices} device reads x {a.tags} float32 tags = {points} points, "
        f"payload version {a.payload_version}, {len(sign1(payload, key, aad))} bytes sealed"
    )
    total = 0.0
    for name, fn in parts:
        us = cpu_us(fn, a.rounds, a.repeat)
        if not name.startswith("  "):
            total += us
        print(f"{name:20s} {us:8.1f} µs a message  {us / points * 1000:7.1f} ns a point")
    print(f"{'seal':20s} {total:8.1f} µs a message  {total / points * 1000:7.1f} ns a point")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
