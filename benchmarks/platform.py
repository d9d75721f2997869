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
Messages are signed and serialised as MQTT packets before the clock starts, then
published with QoS 1 over one connection (RawPublisher: almost no CPU, so the machine's
cores go to what is measured) as fast as the broker takes them, or at ``--rate`` points
a second; the receivers are `edgegw receive` processes in one shared-subscription
group, storing into a private PostgreSQL (Debian's package, fsync on).

Prints, per K: points/s stored (first publish → last message committed), each receiver's
CPU µs per point, end-to-end latency p50/p99 (publish → the commit of the receiver's
transaction, from PostgreSQL's commit timestamps), what share of a core the receivers,
mosquitto, PostgreSQL, the publisher and the whole machine used (the machine is shared:
what others use shows there), and where a receiver's CPU goes per point (parse, verify,
decode in paho's thread; classify and store, of it the COPY rows, in the store worker),
measured in-process on the same messages. Bounded: every wait has a deadline. The last
line is JSON.
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
import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import psycopg  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

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
    """(topic, gw, seq, body): each gateway's next message, the gateways in a shuffled
    order each round (they publish independently; a fixed order would hand each member of
    a share group its own gateways, sparing the receivers the row locks they contend for
    in a real fleet).

    What a gateway seals from one flush window: one read of each of ``devices`` devices
    with ``tags`` float32 registers each (a batch per device read, sharing its timestamp;
    payload version 2 makes each a block), through the gateway's own encoder."""
    out = []
    names = [[f"plc{d:02d}/t{t:03d}" for t in range(tags)] for d in range(devices)]
    f32 = struct.Struct(f"<{tags}f")
    for s in range(per_gw):
        seq = first_seq + s
        t_seal = T0 + seq * 1_000_000_000
        fleet = list(enumerate(keys.items()))
        random.Random(seq).shuffle(fleet)
        for g, (gw, key) in fleet:
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


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = n >> 7, n & 0x7F
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _mqtt_str(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


class RawPublisher:
    """The simulated fleet's publisher: MQTT 5 over one TCP connection, QoS 1 PUBLISH
    packets serialised before the clock starts, written in large chunks, PUBACKs read by a
    thread. What the platform is measured on costs the publisher almost nothing; the
    broker and the receivers do all their usual work (one connection, though, where a
    real fleet has one per gateway). Respects the broker's Receive Maximum."""

    def __init__(self, host: str, port: int, client_id: str = "fleet") -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # CONNECT: MQTT 5, clean start, no keep-alive, no properties.
        body = _mqtt_str(b"MQTT") + b"\x05\x02\x00\x00\x00" + _mqtt_str(client_id.encode())
        self.sock.sendall(b"\x10" + _varint(len(body)) + body)
        kind, data = self._read_packet()
        if kind != 0x20 or data[1] != 0:
            raise RuntimeError(f"the broker refused the publisher: CONNACK {data.hex()}")
        self.window = self._receive_maximum(data)
        self.acked = 0
        self.errors: list[str] = []
        self.cond = threading.Condition()
        self.sock.settimeout(None)
        self.reader = threading.Thread(target=self._read_acks, name="pubacks", daemon=True)
        self.reader.start()

    def _recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the broker closed the publisher's connection")
            buf += chunk
        return buf

    def _read_packet(self) -> tuple[int, bytes]:
        kind = self._recv(1)[0] & 0xF0
        length, shift = 0, 0
        while True:
            byte = self._recv(1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return kind, self._recv(length)

    @staticmethod
    def _receive_maximum(connack: bytes) -> int:
        """The CONNACK's Receive Maximum (property 0x21); 65,535 when absent."""
        at, length, shift = 2, 0, 0
        while True:
            byte = connack[at]
            at += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        props = connack[at : at + length]
        i = 0
        while i < len(props):
            ident = props[i]
            if ident == 0x21:
                return int(struct.unpack(">H", props[i + 1 : i + 3])[0])
            i += 1 + {0x11: 4, 0x24: 1, 0x25: 1, 0x27: 4, 0x22: 2, 0x13: 2, 0x28: 1, 0x29: 1,
                      0x2A: 1}.get(ident, 0)  # fmt: skip
            if ident in (0x12, 0x1A, 0x1C, 0x1F, 0x15, 0x16):  # strings and binary data
                (n,) = struct.unpack(">H", props[i : i + 2])
                i += 2 + n
            elif ident == 0x26:  # a user property: two strings
                for _ in range(2):
                    (n,) = struct.unpack(">H", props[i : i + 2])
                    i += 2 + n
        return 65535

    def _read_acks(self) -> None:
        try:
            while True:
                kind, data = self._read_packet()
                if kind == 0x40:  # PUBACK; a reason code >= 0x80 is a refusal
                    if len(data) > 2 and data[2] >= 0x80:
                        self.errors.append(f"PUBACK reason {data[2]:#x}")
                    with self.cond:
                        self.acked += 1
                        self.cond.notify_all()
                else:
                    self.errors.append(f"unexpected packet {kind:#x}")
        except (OSError, ConnectionError) as exc:
            with self.cond:
                self.errors.append(str(exc))
                self.cond.notify_all()

    @staticmethod
    def packets(msgs: list[tuple[str, str, int, bytes]], first_mid: int = 1) -> list[bytes]:
        """One QoS 1 PUBLISH per message, packet ids from ``first_mid`` (cycling)."""
        out = []
        for i, (topic, _, _, body) in enumerate(msgs):
            mid = (first_mid - 1 + i) % 65535 + 1
            var = _mqtt_str(topic.encode()) + struct.pack(">H", mid) + b"\x00"
            out.append(b"\x32" + _varint(len(var) + len(body)) + var + body)
        return out

    def send(
        self,
        packets: list[bytes],
        sent_at: Callable[[int, int], None] | None = None,
        per_s: float = 0.0,
        deadline: float = 0.0,
    ) -> None:
        """Write the packets, never more unacknowledged than the broker's window; paced
        to ``per_s`` packets a second when given. ``sent_at(i, ns)``: packets before ``i``
        went out at ``ns``."""  # fmt: skip
        chunk = max(1, min(256, self.window // 2))
        base, t0 = self.acked, time.monotonic()
        for at in range(0, len(packets), chunk):
            part = packets[at : at + chunk]
            if per_s:
                wait = t0 + at / per_s - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            with self.cond:
                while self.acked - base < at + len(part) - self.window and not self.errors:
                    if not self.cond.wait(max(0.0, deadline - time.monotonic())):
                        raise RuntimeError("the broker stopped acknowledging the publisher")
            if self.errors:
                raise RuntimeError(f"publisher: {self.errors[:3]}")
            self.sock.sendall(b"".join(part))
            if sent_at is not None:
                sent_at(at + len(part), time.time_ns())

    def wait_acked(self, n: int, deadline: float) -> None:
        with self.cond:
            while self.acked < n and not self.errors:
                if not self.cond.wait(max(0.0, deadline - time.monotonic())):
                    raise RuntimeError(f"only {self.acked} of {n} publishes acknowledged")
        if self.errors:
            raise RuntimeError(f"publisher: {self.errors[:3]}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.reader.join(5)


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
    rate: float = 0.0,
) -> dict[str, Any]:
    """One run with ``k`` receivers; ``rate``: points a second offered (0: as fast as the
    broker takes them)."""
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
    pub = RawPublisher("::1", broker.port)
    warm_packets = RawPublisher.packets(warmup)
    packets = RawPublisher.packets(msgs, first_mid=len(warmup) + 1)
    sent_ns = [0] * len(msgs)
    done = 0

    def sent_at(end: int, ns: int) -> None:
        nonlocal done
        sent_ns[done:end] = [ns] * (end - done)
        done = end

    try:
        # Warm-up, not timed: every gateway's first message (its row, its series).
        deadline = time.monotonic() + timeout_s
        pub.send(warm_packets, deadline=deadline)
        while count(db) < len(warmup):
            if time.monotonic() > deadline:
                raise RuntimeError(f"K={k}: the warm-up was not stored")
            time.sleep(0.05)
        cpu0 = [proc_cpu_s(p.pid) for p, _ in procs]
        others0 = (proc_cpu_s(broker.proc.pid), pg_cpu_s(pg), time.process_time(), machine_cpu_s())
        t_start = time.time()
        deadline = time.monotonic() + timeout_s
        pub.send(packets, sent_at, per_s=rate / points if rate else 0.0, deadline=deadline)
        pub.wait_acked(len(warmup) + len(msgs), deadline)
        t_published = time.time()
        while (n := count(db) - len(warmup)) < len(msgs):
            if time.monotonic() > deadline:
                raise RuntimeError(f"K={k}: only {n} of {len(msgs)} messages stored")
            time.sleep(0.02)
        t_end = time.time()
        cpu = [proc_cpu_s(p.pid) - c0 for (p, _), c0 in zip(procs, cpu0, strict=True)]
        others1 = (proc_cpu_s(broker.proc.pid), pg_cpu_s(pg), time.process_time(), machine_cpu_s())
    finally:
        pub.close()
        for p, _ in procs:
            p.terminate()
        for p, _ in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    sent = {(gw, seq): sent_ns[i] for i, (_, gw, seq, _) in enumerate(msgs)}
    with psycopg.connect(db, autocommit=True) as c:
        # When each message's transaction committed (track_commit_timestamp is on).
        rows = c.execute(
            "SELECT gw, seq, (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1e9)::bigint"
            " FROM messages"
        ).fetchall()
        stored_points = c.execute("SELECT count(*) FROM readings").fetchone()[0]  # type: ignore[index]
        stored_points -= len(warmup) * points
    lat = [(done - sent[(gw, seq)]) / 1e6 for gw, seq, done in rows if (gw, seq) in sent]
    total_points = len(msgs) * points
    assert stored_points == total_points, (stored_points, total_points)
    elapsed = t_end - t_start
    return {
        "receivers": k,
        "offered_points_per_s": rate or None,
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
    """CPU µs per point of each step of a receiver's hot path, on the same messages, in
    this process (CPU time: what other processes on the machine do does not count). The
    receiver's two threads: paho's checks each message (``prepare``: parse, verify,
    decode), the store worker classifies and stores groups of up to 256 (``store``;
    ``copy_rows`` is its share making the readings' COPY rows)."""
    sample = msgs[: min(len(msgs), 2048)]
    n_points = len(sample) * points
    pub = {gw: k.public_key for gw, k in keys.items()}
    cpu = time.process_time
    t = cpu()
    envs = [parse1(body) for _, _, _, body in sample]
    t_parse = cpu() - t
    t = cpu()
    for (topic, gw, _, _), env in zip(sample, envs, strict=True):
        env.verify_digest(pub[gw], topic.encode())
    t_verify = cpu() - t
    t = cpu()
    payloads = [schema.decode(e.payload) for e in envs]
    t_decode = cpu() - t
    ids = {tag: i for i, tag in enumerate(payloads[0].tags)}
    t = cpu()
    for p in payloads:
        copy_data(ids, p.seq, p.rows, p.blocks)
    t_rows = cpu() - t
    store = PgStore(db)
    rx = Receiver(pub, "edgegw", store=store)
    for at in range(0, len(warmup), 256):
        rx.handle_many([(topic, body, None) for topic, _, _, body in warmup[at : at + 256]])
    rx.stats.messages_verified = 0
    t = cpu()
    prepared = [rx.prepare(topic, body) for topic, _, _, body in sample]
    t_prepare = cpu() - t
    t, w = cpu(), time.perf_counter()
    for at in range(0, len(prepared), 256):
        rx.handle_many(prepared[at : at + 256])
    t_store, w_store = cpu() - t, time.perf_counter() - w
    store.close()
    assert rx.stats.messages_verified == len(sample), rx.stats
    us = 1e6 / n_points
    return {
        "parse_us": round(t_parse * us, 3),
        "verify_us": round(t_verify * us, 3),
        "decode_us": round(t_decode * us, 3),
        "prepare_us": round(t_prepare * us, 3),
        "copy_rows_us": round(t_rows * us, 3),
        "store_us": round(t_store * us, 3),
        "store_wall_us": round(w_store * us, 3),
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
    ap.add_argument(
        "--rate", type=float, default=0.0,
        help="points a second to offer (default: as fast as the broker takes them); "
        "below what the receivers can store, the latency is what a fleet sees",
    )  # fmt: skip
    args = ap.parse_args()
    args.points = args.devices * args.tags
    work = Path(tempfile.mkdtemp(prefix="edgegw-platform-bench-"))
    try:
        return run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # keys, the broker's files, receiver logs


def run(args: argparse.Namespace, work: Path) -> int:
    print(
        f"{args.gateways} gateways, {args.points} points per message ({args.devices} device "
        f"reads of {args.tags} float32 tags), payload version {args.payload_version}",
        file=sys.stderr,
    )
    keys = make_fleet(args.gateways, work / "enrolled")
    results = []
    # A server sized for the load (the defaults suit a laptop): the (series, ts) index and
    # the newest pages stay in memory; fewer checkpoints, so fewer full-page WAL images.
    # track_commit_timestamp: the latency is measured to each message's commit.
    tuned = (
        "shared_buffers = 512MB\nmax_wal_size = 4GB\ncheckpoint_timeout = 15min\n"
        "track_commit_timestamp = on\n"
    )
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
                k,
                pg,
                broker,
                work / "enrolled",
                warmup,
                msgs,
                args.points,
                work,
                args.timeout,
                args.rate,
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
            f"receiver CPU per point, in process: prepare {b['prepare_us']} µs (parse "
            f"{b['parse_us']}, verify {b['verify_us']}, decode {b['decode_us']}), store "
            f"{b['store_us']} µs (COPY rows {b['copy_rows_us']}; {b['store_wall_us']} µs wall: "
            "the rest is waiting for PostgreSQL)"
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
