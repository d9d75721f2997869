"""Strict CBOR decoding: cbor2 6's decoder options against the walk path (cbor2 5, armhf).

    .venv/bin/python benchmarks/strictcbor.py [--budget SECONDS] [--debian-python /usr/bin/python3]

security/strictcbor.py decodes what comes from the network with cbor2 6's strict decoder
options where cbor2 has them, and else (cbor2 5: Debian 12's python3-cbor2, which the
armhf package uses) walks the item's heads in pure Python first and then decodes with
plain cbor2.loads. This measures, per payload, µs for: plain cbor2.loads (no checks), the
options path, the walk alone, and the walk path (walk + loads); then the receiver's whole
handle() of a signed telemetry message (verify, decode, classify, store) on each path.
With --debian-python (default /usr/bin/python3 when it has cbor2 5) the walk path runs
once more on that interpreter's cbor2 5, as on an armhf gateway (but at this CPU's speed).
Payloads: telemetry of 5 device reads x 50 float32 tags (250 points), versions 2 and 1,
as benchmarks/platform.py sends them; a downlink command; a key certificate. Prints a
table and a final JSON line.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# The repo instead of this folder (whose platform.py would shadow the standard library's).
sys.path[0] = str(Path(__file__).resolve().parents[1])

import cbor2  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from gateway.receiver import Receiver, SqliteStore  # noqa: E402
from gateway.wire import encode_payload  # noqa: E402
from security import DeviceKey, sign1, strictcbor  # noqa: E402

T0 = 1_760_000_000_000_000_000


def telemetry(seq: int, version: int, devices: int = 5, tags: int = 50) -> bytes:
    f32 = struct.Struct(f"<{tags}f")
    groups = []
    for d in range(devices):
        ts = T0 + seq * 1_000_000_000 + d * 3_000_000
        raw = [20.0 + 5.0 * math.sin((seq + d) * 0.1 + t * 0.37) for t in range(tags)]
        values = f32.unpack(f32.pack(*raw))
        groups.append([[f"plc{d:02d}/t{t:03d}", ts, v, 0] for t, v in enumerate(values)])
    return encode_payload(
        gw="gw1", seq=seq, boot=1, kind="telemetry", t_ns=T0 + seq * 10**9, groups=groups,
        version=version,
    )  # fmt: skip


def payloads() -> dict[str, tuple[bytes, int]]:
    """name -> (bytes, the max_depth its reader uses)."""
    command = cbor2.dumps(
        {"v": 1, "id": "c-1", "gw": "gw1", "op": "write", "tag": "plc/sp", "value": 21.5,
         "not_after": T0, "seq": 7},
        canonical=True,
    )  # fmt: skip
    cert = cbor2.dumps(
        {"v": 1, "gw": "gw1", "kid": b"k" * 16, "pub": b"p" * 32, "not_before": T0, "n": 2},
        canonical=True,
    )
    return {
        "telemetry v2 (250 pts)": (telemetry(1, 2), 6),
        "telemetry v1 (250 pts)": (telemetry(1, 1), 6),
        "downlink command": (command, 4),
        "key certificate": (cert, 2),
    }


def measure(fn: Callable[[], object], budget: float) -> float:
    """µs per call, running ``fn`` in growing rounds for about ``budget`` seconds."""
    fn()
    n, rounds = 0, 1
    start = time.perf_counter()
    while True:
        for _ in range(rounds):
            fn()
        n += rounds
        now = time.perf_counter()
        if now - start >= budget:
            return round((now - start) / n * 1e6, 2)
        rounds = min(rounds * 2, 4096)


def with_path(options: bool, fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        saved = strictcbor.USE_DECODER_OPTIONS
        strictcbor.USE_DECODER_OPTIONS = options
        try:
            return fn()
        finally:
            strictcbor.USE_DECODER_OPTIONS = saved

    return run


def decode_rows(budget: float) -> list[dict[str, object]]:
    rows = []
    have_options = strictcbor._options_work()
    for name, (data, depth) in payloads().items():
        row: dict[str, object] = {"payload": name, "bytes": len(data)}
        row["loads_us"] = measure(lambda d=data: cbor2.loads(d), budget)
        if have_options:
            row["options_us"] = measure(
                with_path(True, lambda d=data, m=depth: strictcbor.strict_loads(d, max_depth=m)),
                budget,
            )
        row["walk_only_us"] = measure(
            lambda d=data, m=depth: strictcbor.check_item(d, 0, m), budget
        )
        row["walk_path_us"] = measure(
            with_path(False, lambda d=data, m=depth: strictcbor.strict_loads(d, max_depth=m)),
            budget,
        )
        rows.append(row)
    return rows


def receiver_rows(budget: float, n: int = 400) -> dict[str, float]:
    """µs per Receiver.handle of a genuine signed v2 telemetry message (250 points), with
    a fresh SQLite store per path; ``n`` distinct messages, fed until ``budget`` is spent."""
    key = DeviceKey(Ed25519PrivateKey.generate())
    topic = "edgegw/gw1/telemetry"
    msgs = [sign1(telemetry(s, 2), key, topic.encode()) for s in range(1, n + 1)]
    out = {}
    paths = (["options"] if strictcbor._options_work() else []) + ["walk"]
    for path in paths:
        with tempfile.TemporaryDirectory() as tmp:
            rx = Receiver({"gw1": key.public_key}, "edgegw", store=SqliteStore(Path(tmp) / "r.db"))
            saved = strictcbor.USE_DECODER_OPTIONS
            strictcbor.USE_DECODER_OPTIONS = path == "options"
            try:
                t0 = time.perf_counter()
                done = 0
                for m in msgs:
                    rx.handle(topic, m)
                    done += 1
                    if time.perf_counter() - t0 > budget * 4:
                        break
                out[f"{path}_us"] = round((time.perf_counter() - t0) / done * 1e6, 1)
            finally:
                strictcbor.USE_DECODER_OPTIONS = saved
                rx.store.close()
    return out


_ON_DEBIAN = r"""
import importlib.util, json, sys, time
import cbor2
spec = importlib.util.spec_from_file_location("strictcbor", sys.argv[1])
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
budget = float(sys.argv[2])
out = {"options": m.USE_DECODER_OPTIONS}
for name, (hexdata, depth) in json.load(sys.stdin).items():
    data = bytes.fromhex(hexdata)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < budget:
        for _ in range(64):
            m.strict_loads(data, max_depth=depth)
        n += 64
    out[name] = round((time.perf_counter() - t0) / n * 1e6, 2)
print(json.dumps(out))
"""


def debian_rows(python: str, budget: float) -> dict[str, object] | None:
    try:
        version = subprocess.run(
            [python, "-I", "-c", "import importlib.metadata as m; print(m.version('cbor2'))"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    data = {k: (v.hex(), d) for k, (v, d) in payloads().items()}
    r = subprocess.run(
        [python, "-I", "-c", _ON_DEBIAN, str(Path(strictcbor.__file__)), str(budget)],
        input=json.dumps(data), capture_output=True, text=True, check=True,
    )  # fmt: skip
    return {"python": python, "cbor2": version, **json.loads(r.stdout)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=0.5, help="seconds per measurement")
    ap.add_argument("--debian-python", default="/usr/bin/python3")
    args = ap.parse_args()
    print(f"cbor2 {importlib.metadata.version('cbor2')} here; "
          f"decoder options: {strictcbor._options_work()}")  # fmt: skip
    rows = decode_rows(args.budget)
    cols = ["payload", "bytes", "loads_us", "options_us", "walk_only_us", "walk_path_us"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r.get(c, "-")) for c in cols))
    rx = receiver_rows(args.budget)
    print("receiver handle(), v2 telemetry of 250 points, µs per message:", rx)
    deb = debian_rows(args.debian_python, args.budget)
    if deb is not None:
        print(
            "walk path on", deb["python"], "cbor2", deb["cbor2"], "(options:", deb["options"], ")"
        )
        for name in payloads():
            print(f"  {name}: {deb[name]} µs")
    print(json.dumps({"decode": rows, "receiver": rx, "debian": deb}))


if __name__ == "__main__":
    main()
