"""COSE_Sign1 speed: sign1 and verify1 messages/s for 100 B, 4 KiB and 64 KiB payloads.

    .venv/bin/python benchmarks/cose.py [--budget SECONDS]

For each payload size, measures sign1 (one signature per message, as the gateway seals one
message per batch) and verify1 (as the platform's receiver does), and next to each the bare
Ed25519 sign/verify of the same Sig_structure, so the COSE framing cost is visible. Each
measurement runs for about --budget seconds (default 0.5), so the run stays bounded on a
slow CPU. Prints a table and a final JSON line.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from security import DeviceKey, sign1, verify1  # (after the sys.path line: runs standalone)

SIZES = {"100B": 100, "4KiB": 4 * 1024, "64KiB": 64 * 1024}
TOPIC = b"edgegw/bench-gw/telemetry"


def measure(fn: Callable[[], object], budget: float) -> dict[str, float]:
    """Run ``fn`` in growing rounds until ``budget`` seconds are spent; calls per second."""
    fn()  # warm caches (protected header per kid, imports)
    n, rounds = 0, 1
    start = time.perf_counter()
    deadline = start + budget
    while True:
        for _ in range(rounds):
            fn()
        n += rounds
        now = time.perf_counter()
        if now >= deadline:
            break
        rounds = min(rounds * 2, 1024)
    seconds = now - start
    return {"n": n, "us_per_op": round(seconds / n * 1e6, 1), "per_s": round(n / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.5, help="seconds per measurement")
    args = parser.parse_args()

    private = Ed25519PrivateKey.generate()
    key = DeviceKey(private)
    keys = {key.kid: key.public_key}
    results: dict[str, object] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "cryptography": importlib.metadata.version("cryptography"),
        "cbor2": importlib.metadata.version("cbor2"),
        "budget_s": args.budget,
    }
    print(
        f"COSE_Sign1 EdDSA, Python {results['python']}, cryptography {results['cryptography']},"
        f" cbor2 {results['cbor2']}, budget {args.budget} s per line (MB/s of payload)"
    )
    print(f"{'payload':<8} {'operation':<22} {'µs/msg':>9} {'msg/s':>10} {'MB/s':>8}")
    for name, size in SIZES.items():
        payload = os.urandom(size)
        message = sign1(payload, key, TOPIC)
        # The same bytes sign1 signs, for the bare-Ed25519 baseline.
        tbs = cbor2.dumps(["Signature1", cbor2.loads(message).value[0], TOPIC, payload])
        signature = private.sign(tbs)
        ops: dict[str, Callable[[], object]] = {
            "sign1": partial(sign1, payload, key, TOPIC),
            "ed25519 sign (bare)": partial(private.sign, tbs),
            "verify1": partial(verify1, message, keys, TOPIC),
            "ed25519 verify (bare)": partial(key.public_key.verify, signature, tbs),
        }
        per_size: dict[str, object] = {"message_bytes": len(message)}
        for op, fn in ops.items():
            r = measure(fn, args.budget)
            per_size[op] = r
            mb_s = r["per_s"] * size / 1e6
            print(f"{name:<8} {op:<22} {r['us_per_op']:>9.1f} {r['per_s']:>10.0f} {mb_s:>8.1f}")
        results[name] = per_size
    print(json.dumps(results, separators=(",", ":"), ensure_ascii=False))


if __name__ == "__main__":
    main()
