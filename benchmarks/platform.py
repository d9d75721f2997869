"""The platform at fleet scale: many simulated gateways → mosquitto → K receivers →
PostgreSQL.

    python benchmarks/platform.py                         # 1,000 gateways, K = 1 and 2
    python benchmarks/platform.py --gateways 2000 --points 500 --receivers 1 2 3

Each gateway has its own Ed25519 key (all enrolled); its messages are real signed
COSE_Sign1 telemetry with ``--points`` readings each (default 250: a gateway polling 250
tags once a second seals about one message per poll cycle). Messages are signed before
the clock starts, then published with QoS 1 as fast as the broker takes them; the
receivers are `edgegw receive` processes in one shared-subscription group, storing into a
private PostgreSQL (Debian's package, fsync on).

Prints, per K: points/s stored (first publish → last message committed), each receiver's
CPU µs per point, end-to-end latency p50/p99 (publish → the receiver's transaction for
it), and where a receiver's time goes per point (verify, decode, build the COPY rows,
the rest of the transaction), measured in-process on the same messages. Bounded: every
wait has a deadline. The last line is JSON.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file's name is the stdlib's `platform`: keep its folder off the import path.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
REPO = HERE.parent
sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import paho.mqtt.client as mqtt  # noqa: E402
import psycopg  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from gateway.mosquitto import Mosquitto  # noqa: E402
from gateway.pgserver import PgServer  # noqa: E402
from gateway.receiver import Receiver, schema  # noqa: E402
from gateway.receiver.pg_store import PgStore, copy_data  # noqa: E402
from gateway.wire import encode_payload  # noqa: E402
from security import DeviceKey, sign1  # noqa: E402
from security.cose import parse1  # noqa: E402

T0 = 1_700_000_000_000_000_000


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def make_fleet(n: int, enrol: Path) -> dict[str, DeviceKey]:
    enrol.mkdir(parents=True, exist_ok=True)
    keys = {}
    for i in range(n):
        gw = f"gw{i:05d}"
        k = DeviceKey(Ed25519PrivateKey.generate())
        keys[gw] = k
        (enrol / f"{gw}.pub.pem").write_bytes(k.public_pem())
    return keys


def make_messages(
    keys: dict[str, DeviceKey], per_gw: int, points: int, first_seq: int
) -> list[tuple[str, str, int, bytes]]:
    """(topic, gw, seq, body), round-robin over the gateways: a fleet's interleaving."""
    out = []
    tags = [f"dev{j // 50}/tag{j}" for j in range(points)]
    for s in range(per_gw):
        seq = first_seq + s
        ts = T0 + seq * 1_000_000_000
        for gw, key in keys.items():
            r = [[tags[j], ts + j * 1000, float(seq * 0.5 + j), 0] for j in range(points)]
            p = encode_payload(gw=gw, seq=seq, boot=1, kind="telemetry", t_ns=ts, readings=r)
            topic = f"edgegw/{gw}/telemetry"
            out.append((topic, gw, seq, sign1(p, key, topic.encode())))
    return out


def start_receivers(k: int, port: int, db: str, enrol: Path, logdir: Path) -> list[Any]:
    procs = []
    for i in range(k):
        log = logdir / f"rx{i}.log"
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "receive",
                "--host",
                "::1",
                "--port",
                str(port),
                "--enrol",
                str(enrol),
                "--db",
                db,
                "--share",
                "bench",
                "--client-id",
                f"rx{i}",
                "--stats-interval",
                "3600",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(log, "wb"),  # noqa: SIM115
            cwd=REPO,
        )
        procs.append((p, log))
    deadline = time.monotonic() + 120
    for p, log in procs:
        while "receiving $share" not in log.read_text():
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"a receiver did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
    return procs


def count(db: str) -> int:
    with psycopg.connect(db, autocommit=True) as c:
        return int(c.execute("SELECT count(*) FROM messages").fetchone()[0])  # type: ignore[index]


def run_k(
    k: int,
    pg: PgServer,
    broker: Mosquitto,
    enrol: Path,
    warmup: list[tuple[str, str, int, bytes]],
    msgs: list[tuple[str, str, int, bytes]],
    points: int,
    work: Path,
    timeout_s: float,
) -> dict[str, Any]:
    name = f"bench_k{k}"
    admin = pg.url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    db = pg.url.rsplit("/", 1)[0] + "/" + name
    logdir = work / f"k{k}"
    logdir.mkdir()
    procs = start_receivers(k, broker.port, db, enrol, logdir)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.max_inflight_messages_set(1000)
    pub.connect("::1", broker.port)
    pub.loop_start()
    sent: dict[tuple[str, int], int] = {}
    try:
        # Warm-up, not timed: every gateway's first message (its row, its series).
        for topic, _, _, body in warmup:
            pub.publish(topic, body, qos=1)
        deadline = time.monotonic() + timeout_s
        while count(db) < len(warmup):
            if time.monotonic() > deadline:
                raise RuntimeError(f"K={k}: the warm-up was not stored")
            time.sleep(0.05)
        cpu0 = [proc_cpu_s(p.pid) for p, _ in procs]
        t_start = time.time()
        infos = []
        for topic, gw, seq, body in msgs:
            infos.append(pub.publish(topic, body, qos=1))
            sent[(gw, seq)] = time.time_ns()
        for i in infos:
            i.wait_for_publish(timeout_s)
        t_published = time.time()
        deadline = time.monotonic() + timeout_s
        while (n := count(db) - len(warmup)) < len(msgs):
            if time.monotonic() > deadline:
                raise RuntimeError(f"K={k}: only {n} of {len(msgs)} messages stored")
            time.sleep(0.05)
        t_end = time.time()
        cpu = [proc_cpu_s(p.pid) - c0 for (p, _), c0 in zip(procs, cpu0, strict=True)]
    finally:
        pub.disconnect()
        pub.loop_stop()
        for p, _ in procs:
            p.terminate()
        for p, _ in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    with psycopg.connect(db, autocommit=True) as c:
        rows = c.execute(
            "SELECT gw, seq, (extract(epoch FROM received) * 1e9)::bigint FROM messages"
        ).fetchall()
        stored_points = c.execute("SELECT count(*) FROM readings").fetchone()[0]  # type: ignore[index]
        stored_points -= len(warmup) * points
    lat = [(rcv - sent[(gw, seq)]) / 1e6 for gw, seq, rcv in rows if (gw, seq) in sent]
    total_points = len(msgs) * points
    assert stored_points == total_points, (stored_points, total_points)
    elapsed = t_end - t_start
    return {
        "receivers": k,
        "messages": len(msgs),
        "points": total_points,
        "seconds": round(elapsed, 2),
        "publish_seconds": round(t_published - t_start, 2),
        "points_per_s": round(total_points / elapsed),
        "receiver_cpu_us_per_point": [round(c * 1e6 / total_points * k, 2) for c in cpu],
        "receiver_cpu_us_per_point_total": round(sum(cpu) * 1e6 / total_points, 2),
        "latency_ms_p50": round(pct(lat, 0.5), 1),
        "latency_ms_p99": round(pct(lat, 0.99), 1),
    }


def breakdown(
    keys: dict[str, DeviceKey],
    warmup: list[tuple[str, str, int, bytes]],
    msgs: list[tuple[str, str, int, bytes]],
    points: int,
    db: str,
) -> dict[str, float]:
    """µs per point for each step of a receiver's hot path, on the same messages."""
    sample = msgs[: min(len(msgs), 2000)]
    n_points = len(sample) * points
    pub = {gw: k.public_key for gw, k in keys.items()}
    t = time.perf_counter()
    envs = []
    for topic, gw, _, body in sample:
        env = parse1(body)
        env.verify(pub[gw], topic.encode())
        envs.append(env)
    t_verify = time.perf_counter() - t
    t = time.perf_counter()
    payloads = [schema.decode(e.payload) for e in envs]
    t_decode = time.perf_counter() - t
    ids = {r[0]: i for i, r in enumerate(payloads[0].readings)}
    t = time.perf_counter()
    for p in payloads:
        copy_data(ids, p.seq, p.readings)
    t_rows = time.perf_counter() - t
    store = PgStore(db)
    rx = Receiver(pub, "edgegw", store=store)
    for topic, _, _, body in warmup:
        rx.handle(topic, body)
    rx.stats.messages_verified = 0
    t = time.perf_counter()
    c = time.process_time()
    for topic, _, _, body in sample:
        rx.handle(topic, body)
    t_all, c_all = time.perf_counter() - t, time.process_time() - c
    store.close()
    assert rx.stats.messages_verified == len(sample), rx.stats
    us = 1e6 / n_points
    return {
        "verify_us": round(t_verify * us, 3),
        "decode_us": round(t_decode * us, 3),
        "copy_rows_us": round(t_rows * us, 3),
        "handle_wall_us": round(t_all * us, 3),
        "handle_cpu_us": round(c_all * us, 3),
        "rest_of_transaction_cpu_us": round((c_all - t_verify - t_decode - t_rows) * us, 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--gateways", type=int, default=1000)
    ap.add_argument("--points", type=int, default=250, help="readings per message")
    ap.add_argument("--per-gateway", type=int, default=12, help="messages per gateway per run")
    ap.add_argument("--receivers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--timeout", type=float, default=300, help="deadline of each run, s")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edgegw-platform-bench-"))
    print(f"{args.gateways} gateways, {args.points} points per message", file=sys.stderr)
    keys = make_fleet(args.gateways, work / "enrolled")
    results = []
    # A server sized for the load (the defaults suit a laptop): the (series, ts) index and
    # the newest pages stay in memory; fewer checkpoints, so fewer full-page WAL images.
    tuned = "shared_buffers = 512MB\nmax_wal_size = 4GB\ncheckpoint_timeout = 15min\n"
    with PgServer(extra_conf=tuned) as pg, Mosquitto(host="::1", workdir=work / "broker") as broker:
        t = time.monotonic()
        warmup = make_messages(keys, 1, args.points, 1)
        msgs = make_messages(keys, args.per_gateway, args.points, 2)
        print(f"signed {len(msgs)} messages in {time.monotonic() - t:.1f} s", file=sys.stderr)
        for k in args.receivers:
            r = run_k(
                k, pg, broker, work / "enrolled", warmup, msgs, args.points, work, args.timeout
            )
            results.append(r)
            print(
                f"K={k}: {r['points_per_s']:,} points/s stored ({r['messages']} messages, "
                f"{r['seconds']} s); receiver CPU {r['receiver_cpu_us_per_point']} µs/point "
                f"(each, per point it handled); latency p50 {r['latency_ms_p50']} ms, "
                f"p99 {r['latency_ms_p99']} ms"
            )
        with psycopg.connect(pg.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as c:
            c.execute('CREATE DATABASE "bench_breakdown"')
        b = breakdown(
            keys, warmup, msgs, args.points, pg.url.rsplit("/", 1)[0] + "/bench_breakdown"
        )
        print(
            f"per point, in process: verify {b['verify_us']} µs, decode {b['decode_us']} µs, "
            f"COPY rows {b['copy_rows_us']} µs, whole handle {b['handle_cpu_us']} µs CPU "
            f"({b['handle_wall_us']} µs wall: the rest is waiting for PostgreSQL)"
        )
    print(
        json.dumps(
            {
                "gateways": args.gateways,
                "points_per_message": args.points,
                "runs": results,
                "breakdown": b,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
