"""Outbox throughput: append (one message per transaction, as the gateway does) and drain.

    .venv/bin/python benchmarks/outbox.py [--messages N] [--budget SECONDS] [--dir DIR]

For each body size (1 KiB, 16 KiB) and synchronous mode (NORMAL, FULL):
  append   N messages, one transaction each (the gateway commits one row per batch);
  drain    pending(limit=256) + ack of those seqs until empty;
then, with NORMAL, write-while-draining: one thread appends N messages while another
drains, both through the same Outbox (as if the forwarder and the pipeline shared it);
then the live cycle: the outbox's CPU per message as the gateway spends it when it keeps
up (the pipeline's append under the byte cap and its drop check, the forwarder's delete
of the previous message and its fetch of urgent and live rows), a 2.3 KB body;
Finally the time to reopen (quick_check) a file of the size reached.

seal() returns prebuilt bytes, so the figures are the outbox's own cost (no signing).
Each phase stops early when its time budget is spent, so the run stays bounded on slow
flash. Prints a table and a final JSON line. Uses a temporary directory, removed at exit.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# benchmarks/platform.py would shadow the stdlib's `platform` (imported below, and by
# uuid): keep this folder off the path before anything imports it, as e2e.py does.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sqlite3  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from typing import Any, Literal  # noqa: E402

from buffer import Outbox  # noqa: E402  (after the sys.path lines: runs standalone)

Sync = Literal["NORMAL", "FULL"]
SIZES = {"1KiB": 1024, "16KiB": 16 * 1024}
DRAIN_CHUNK = 256


def rate(n: int, nbytes: int, seconds: float) -> dict[str, float]:
    seconds = max(seconds, 1e-9)
    return {
        "messages": n,
        "seconds": round(seconds, 4),
        "msg_per_s": round(n / seconds, 1),
        "mb_per_s": round(nbytes / seconds / 1e6, 2),
    }


def append_n(ob: Outbox, body: bytes, n: int, budget: float) -> dict[str, float]:
    def seal(seq: int) -> bytes:
        return body

    start = time.perf_counter()
    deadline = start + budget
    done = 0
    while done < n:
        ob.append("bench/telemetry", seal)
        done += 1
        if done % 64 == 0 and time.perf_counter() > deadline:
            break
    return rate(done, done * len(body), time.perf_counter() - start)


def drain(ob: Outbox, budget: float) -> dict[str, float]:
    start = time.perf_counter()
    deadline = start + budget
    n = nbytes = 0
    while time.perf_counter() < deadline:
        rows = ob.pending(limit=DRAIN_CHUNK)
        if not rows:
            break
        ob.ack(r.seq for r in rows)
        n += len(rows)
        nbytes += sum(len(r.body) for r in rows)
    return rate(n, nbytes, time.perf_counter() - start)


def write_while_draining(path: Path, body: bytes, n: int, budget: float) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with Outbox(path) as ob:
        writing = threading.Event()
        writing.set()

        def writer() -> None:
            result["append"] = append_n(ob, body, n, budget)
            writing.clear()

        def drainer() -> None:
            start = time.perf_counter()
            cursor = got = nbytes = 0
            max_backlog = 0
            # Like the forwarder: page with after_seq, ack what was "sent".
            while True:
                rows = ob.pending(after_seq=cursor, limit=DRAIN_CHUNK)
                if rows:
                    ob.ack(r.seq for r in rows)
                    cursor = rows[-1].seq
                    got += len(rows)
                    nbytes += sum(len(r.body) for r in rows)
                    max_backlog = max(max_backlog, len(rows))
                elif not writing.is_set():
                    if not ob.pending(after_seq=cursor, limit=1):
                        break
                else:
                    time.sleep(0.0005)  # caught up: let the writer run
            result["drain"] = rate(got, nbytes, time.perf_counter() - start)
            result["drain"]["largest_batch"] = max_backlog

        threads = [threading.Thread(target=writer), threading.Thread(target=drainer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        result["left"] = ob.stats().rows
    return result


def live_cycle(path: Path, n: int, budget: float) -> dict[str, float]:
    """CPU (this thread's) per message of the gateway's outbox calls when it keeps up."""
    body = os.urandom(2300)  # about what 250 float32 points seal to (payload version 2)

    def seal(seq: int) -> bytes:
        return body

    # as the daemon opens it: the default cap and free-disk reserve
    with Outbox(path, max_bytes=1024 * 2**20, min_free_bytes=64 * 2**20) as ob:
        live = last = 0

        def one() -> None:
            nonlocal live, last
            seq = ob.append("bench/telemetry", seal, points=250)
            ob.pending_drops()
            if last:
                ob.ack([last])
            ob.pending(0, 128, urgent=True)
            rows = ob.pending(live, 128, urgent=False)
            live, last = (rows[-1].seq if rows else live), seq

        for _ in range(min(200, n)):  # warm up: the file, the caches
            one()
        start, cpu0 = time.perf_counter(), time.thread_time_ns()
        done = 0
        while done < n and time.perf_counter() - start < budget:
            one()
            done += 1
        cpu = time.thread_time_ns() - cpu0
    return {"messages": done, "cpu_us_per_message": round(cpu / max(done, 1) / 1000, 1)}


def reopen_cost(path: Path, rows: int, body: bytes, budget: float) -> dict[str, float]:
    """Time Outbox() on a file of `rows` rows: dominated by PRAGMA quick_check."""
    with Outbox(path) as ob:
        # One big transaction to build the file fast; this is setup, not measured.
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN")
        crc = zlib.crc32(body)
        start = time.perf_counter()
        base = ob.stats().last_seq
        for i in range(rows):
            conn.execute(
                "INSERT INTO outbox (seq, topic, body, priority, created_ns, crc)"
                " VALUES (?,?,?,?,?,?)",
                (base + i + 1, "bench/telemetry", body, 1, time.time_ns(), crc),
            )
            if i % 256 == 0 and time.perf_counter() - start > budget:
                break
        conn.execute("COMMIT")
        conn.close()
    size = path.stat().st_size
    # Warm page cache (dropping it needs root). Cold, quick_check reads the whole file at
    # the storage's speed: budget that for a large backlog on an SD card.
    start = time.perf_counter()
    with Outbox(path):
        pass
    seconds = time.perf_counter() - start
    return {
        "file_mb": round(size / 1e6, 1),
        "open_seconds": round(seconds, 4),
        "open_mb_per_s": round(size / 1e6 / max(seconds, 1e-9), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=5000, help="messages per phase (5000)")
    ap.add_argument("--budget", type=float, default=4.0, help="seconds per phase at most (4)")
    ap.add_argument("--dir", type=Path, default=None, help="where to put the files (a temp dir)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="edgegw-outbox-bench-", dir=args.dir))
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "messages": args.messages,
    }
    print(f"outbox benchmark in {tmp} (SQLite {sqlite3.sqlite_version}, N={args.messages})")
    print(f"{'phase':<34} {'msgs':>7} {'msg/s':>10} {'MB/s':>8}")

    def show(name: str, r: dict[str, Any]) -> None:
        print(f"{name:<34} {r['messages']:>7} {r['msg_per_s']:>10.0f} {r['mb_per_s']:>8.2f}")

    try:
        for label, size in SIZES.items():
            body = os.urandom(size)
            mode: Sync
            for mode in ("NORMAL", "FULL"):
                path = tmp / f"{label}-{mode}.db"
                with Outbox(path, synchronous=mode) as ob:
                    a = append_n(ob, body, args.messages, args.budget)
                    d = drain(ob, args.budget)
                results[f"{label}/{mode}/append"] = a
                results[f"{label}/{mode}/drain"] = d
                show(f"{label} {mode} append (1 row/txn)", a)
                show(f"{label} {mode} drain ({DRAIN_CHUNK}/txn)", d)
                path.unlink()

            ww = write_while_draining(tmp / f"{label}-ww.db", body, args.messages, args.budget)
            results[f"{label}/NORMAL/write_while_draining"] = ww
            show(f"{label} NORMAL concurrent: append", ww["append"])
            show(f"{label} NORMAL concurrent: drain", ww["drain"])

        cycle = live_cycle(tmp / "cycle.db", args.messages, args.budget)
        results["live_cycle"] = cycle
        print(
            f"live cycle (append, drop check, ack, fetch): {cycle['cpu_us_per_message']} µs "
            f"of CPU per message ({cycle['messages']} messages)"
        )

        reopen = reopen_cost(tmp / "reopen.db", 6_000, os.urandom(16 * 1024), args.budget)
        results["reopen_quick_check"] = reopen
        print(
            f"reopen (quick_check) of a {reopen['file_mb']} MB outbox: "
            f"{reopen['open_seconds']:.3f} s ({reopen['open_mb_per_s']} MB/s, warm cache)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(results, separators=(",", ":")))


if __name__ == "__main__":
    main()
