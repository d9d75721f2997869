"""The platform at fleet scale: many simulated gateways → mosquitto → K receivers →
PostgreSQL.

    python benchmarks/platform.py                         # 1,000 gateways, K = 1 and 2
    python benchmarks/platform.py --gateways 2000 --devices 10 --receivers 1 2 3
    python benchmarks/platform.py --payload-version 1     # what gateways sent before

Each gateway has its own Ed25519 key (all enrolled); its messages are real signed
COSE_Sign1 telemetry, encoded by the gateway's own encoder (payload version 2 unless
``--payload-version``), each what one flush window holds: one read of each of
``--devices`` devices (5) with ``--tags`` float32 registers (50), a batch per device
read sharing its timestamp: 250 points, a gateway polling 250 tags once a second.
Messages are signed before
the clock starts, then published with QoS 1 as fast as the broker takes them; the
receivers are `edgegw receive` processes in one shared-subscription group, storing into a
private PostgreSQL (Debian's package, fsync on).

Prints, per K: points/s stored (first publish → last message committed), each receiver's
CPU µs per point, end-to-end latency p50/p99 (publish → the receiver's transaction for
it), and where a receiver's time goes per point (verify, decode, build the COPY rows,
the rest of the transaction), measured in-process on the same messages, and what share
of a core the receivers, mosquitto, PostgreSQL and the publisher each used (the machine
has only so many). Bounded: every wait has a deadline. The last line is JSON.
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
import math  # noqa: E402
import os  # noqa: E402
import struct  # noqa: E402
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
from gateway.wire import PAYLOAD_VERSION, encode_payload  # noqa: E402
from security import DeviceKey, sign1  # noqa: E402
from security.cose import parse1  # noqa: E402

T0 = 1_700_000_000_000_000_000


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pg_cpu_s(pg: PgServer) -> float:
    """CPU of the PostgreSQL server: the postmaster and every process it runs now (the
    receivers' backends live through a run; so do the WAL writer and the checkpointer)."""
    assert pg.datadir is not None
    master = int((pg.datadir / "postmaster.pid").read_text().split()[0])
    total = proc_cpu_s(master)
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(stat[1]) == master:
                total += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return total


def machine_cpu_s() -> float:
    """CPU time all processes of the machine used (user + nice + system + irq), s."""
    f = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return sum(int(x) for x in f[:3] + f[5:8]) / os.sysconf("SC_CLK_TCK")


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
    keys: dict[str, DeviceKey],
    per_gw: int,
    devices: int,
    tags: int,
    first_seq: int,
    version: int = PAYLOAD_VERSION,
) -> list[tuple[str, str, int, bytes]]:
    """(topic, gw, seq, body), round-robin over the gateways: a fleet's interleaving.

    What a gateway seals from one flush window: one read of each of ``devices`` devices
    with ``tags`` float32 registers each (a batch per device read, sharing its timestamp;
    payload version 2 makes each a block), through the gateway's own encoder."""
    out = []
    names = [[f"plc{d:02d}/t{t:03d}" for t in range(tags)] for d in range(devices)]
    f32 = struct.Struct(f"<{tags}f")
    for s in range(per_gw):
        seq = first_seq + s
        t_seal = T0 + seq * 1_000_000_000
        for g, (gw, key) in enumerate(keys.items()):
            groups = []
            for d in range(devices):
                ts = t_seal - 200_000_000 + d * 3_000_000 + g  # reads spread over the window
                raw = [20.0 + 5.0 * math.sin((seq + g + d) * 0.1 + t * 0.37) for t in range(tags)]
                values = f32.unpack(f32.pack(*raw))  # float32 registers, as a driver gives them
                groups.append([[n, ts, v, 0] for n, v in zip(names[d], values, strict=True)])
            p = encode_payload(
                gw=gw, seq=seq, boot=1, kind="telemetry", t_ns=t_seal, groups=groups,
                version=version,
            )  # fmt: skip
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
    assert broker.proc is not None
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
        others0 = (proc_cpu_s(broker.proc.pid), pg_cpu_s(pg), time.process_time(), machine_cpu_s())
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
        others1 = (proc_cpu_s(broker.proc.pid), pg_cpu_s(pg), time.process_time(), machine_cpu_s())
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
        # Each process's share of one core over the run: what else the 2 cores were doing.
        "cores_used": {
            **{f"receiver{i}": round(c / elapsed, 2) for i, c in enumerate(cpu)},
            **{
                what: round((b - a) / elapsed, 2)
                for what, a, b in zip(
                    ("mosquitto", "postgresql", "publisher", "machine"),
                    others0,
                    others1,
                    strict=True,
                )
            },
        },
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
    ids = {t: i for i, t in enumerate(payloads[0].tags)}
    t = time.perf_counter()
    for p in payloads:
        copy_data(ids, p.seq, p.rows, p.blocks)
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
    ap.add_argument("--devices", type=int, default=5, help="device reads per message")
    ap.add_argument("--tags", type=int, default=50, help="float32 tags per device read")
    ap.add_argument(
        "--payload-version", type=int, default=PAYLOAD_VERSION, choices=(1, 2),
        help="what the simulated gateways send (default: what a gateway sends)",
    )  # fmt: skip
    ap.add_argument("--per-gateway", type=int, default=12, help="messages per gateway per run")
    ap.add_argument("--receivers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--timeout", type=float, default=300, help="deadline of each run, s")
    args = ap.parse_args()
    args.points = args.devices * args.tags

    work = Path(tempfile.mkdtemp(prefix="edgegw-platform-bench-"))
    print(
        f"{args.gateways} gateways, {args.points} points per message ({args.devices} device "
        f"reads of {args.tags} float32 tags), payload version {args.payload_version}",
        file=sys.stderr,
    )
    keys = make_fleet(args.gateways, work / "enrolled")
    results = []
    # A server sized for the load (the defaults suit a laptop): the (series, ts) index and
    # the newest pages stay in memory; fewer checkpoints, so fewer full-page WAL images.
    tuned = "shared_buffers = 512MB\nmax_wal_size = 4GB\ncheckpoint_timeout = 15min\n"
    with PgServer(extra_conf=tuned) as pg, Mosquitto(host="::1", workdir=work / "broker") as broker:
        t = time.monotonic()
        shape = (args.devices, args.tags)
        warmup = make_messages(keys, 1, *shape, 1, args.payload_version)
        msgs = make_messages(keys, args.per_gateway, *shape, 2, args.payload_version)
        size = sum(len(m[3]) for m in msgs) / len(msgs)
        print(f"{size:,.0f} bytes a message, {size / args.points:.1f} a point", file=sys.stderr)
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
                f"p99 {r['latency_ms_p99']} ms; cores used {r['cores_used']}"
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
                "payload_version": args.payload_version,
                "bytes_per_message": round(size),
                "runs": results,
                "breakdown": b,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
