"""What the gateway costs a small machine: RSS and start-up time, by config and tag count.

    python benchmarks/footprint.py               # Modbus only and every driver, 1k and 10k tags
    python benchmarks/footprint.py --tags 10000 --configs modbus --duration 3600
    python benchmarks/footprint.py --imports     # RSS each runtime dependency adds
    python benchmarks/footprint.py --tags 10000 --configs modbus --reloads 5   # SIGHUPs

For each config the simulators (each protocol library's own server), mosquitto and the
gateway (``edgegw run``, its own process) start; start-up time is from the gateway's
exec to its ``/readyz`` answering 200 (config loaded, key, outbox, every device task
running). Then RSS is sampled every second for ``--duration`` seconds while it polls
every tag once a second: ``rss_ready`` at ready, ``rss_max`` the largest sample,
``rss_growth`` the last minus the first third's median (for the hour-long check:
``--duration 3600``), ``rss_anon_end`` the anonymous part at the end. Configs:

- ``modbus``: Modbus TCP devices of 100 float32 tags each;
- ``all``: the same with one OPC UA server (5% of the tags, subscription), one S7 PLC
  (5%, DB reads) and the shipped default model watching six Modbus tags.

The last line per config is JSON. Bounded: each run stops after ``--duration`` seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# benchmarks/platform.py would shadow the stdlib's `platform`: keep this folder off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402

from gateway.mosquitto import Mosquitto, free_port, wait_listening  # noqa: E402

TAGS_PER_DEVICE = 100
RELOAD_GAP_S = 12  # seconds sampled after each SIGHUP of --reloads
DEFAULT_MODEL_SHA256 = "2298e92f287fbd92f61c5fe037edb568133c2c05ed93566fa4f726421442e971"

# What ``--imports`` measures, in the order the daemon meets them; the last step is what
# only the config check's child process imports (gateway/configload.py), never the daemon.
IMPORTS = [
    ("python + stdlib the daemon needs", "asyncio, sqlite3, ssl, json, logging"),
    ("cbor2 + cryptography (signing)", "cbor2, cryptography.hazmat.primitives.asymmetric.ed25519"),
    ("paho-mqtt (uplink)", "paho.mqtt.client"),
    ("uvloop", "uvloop"),
    ("edgegw's daemon (plain config, no pydantic)", "gateway.daemon, gateway.commands.run"),
    ("Modbus TCP driver", "drivers.modbus.driver"),
    ("pymodbus (Modbus RTU links only)", "drivers.modbus.rtu"),
    ("asyncua (OPC UA driver)", "drivers.opcua.driver"),
    ("snap7 (S7 driver)", "drivers.s7.driver"),
    ("onnxruntime + numpy (inference)", "inference.engine"),
    ("pydantic, PyYAML, config models (check's child)", "gateway.config"),
]


def modbus_device(name: str, port: int, unit: int, tags: int) -> list[str]:
    lines = [
        f"  - name: {name}",
        "    protocol: modbus_tcp",
        "    host: 127.0.0.1",
        f"    port: {port}",
        f"    unit_id: {unit}",
        "    poll_interval_ms: 1000",
        "    tags:",
    ]
    return lines + [
        f"      - {{name: t{t:03d}, address: {2 * t}, type: float32}}" for t in range(tags)
    ]


def write_config(path: Path, state: Path, kind: str, tags: int, ports: dict[str, int]) -> None:
    lines = [
        "gateway:",
        "  id: footprint-gw",
        f"  state_dir: {state}",
        "uplink:",
        "  host: '::1'",
        f"  port: {ports['broker']}",
        f"metrics: {{enabled: true, host: 127.0.0.1, port: {ports['metrics']}}}",
        "devices:",
    ]
    other = tags // 20 if kind == "all" else 0  # 5% OPC UA, 5% S7
    modbus = tags - 2 * other
    d = 0
    while modbus > 0:
        n = min(TAGS_PER_DEVICE, modbus)
        lines += modbus_device(f"plc{d:03d}", ports["modbus"], d % 247 + 1, n)
        modbus -= n
        d += 1
    if kind == "all":
        lines += [
            "  - name: ua",
            "    protocol: opcua",
            f"    endpoint: opc.tcp://127.0.0.1:{ports['opcua']}/edgegw/sim",
            "    publishing_interval_ms: 1000",
            "    sampling_interval_ms: 1000",
            "    tags:",
        ]
        lines += [
            f'      - {{name: n{i:04d}, node: "ns=2;s=Sim.N{i:04d}", type: Double}}'
            for i in range(other)
        ]
        lines += [
            "  - name: s7",
            "    protocol: s7",
            "    host: 127.0.0.1",
            f"    port: {ports['s7']}",
            "    rack: 0",
            "    slot: 1",
            "    poll_interval_ms: 1000",
            "    tags:",
        ]
        lines += [  # 2,000 REALs a data block
            f"      - {{name: r{i:04d}, address: DB{1 + i // 2000}.DBD{4 * (i % 2000)}, "
            "type: REAL}"
            for i in range(other)
        ]
    if kind == "all" and has_inference():  # not in the armhf package (no onnxruntime)
        lines += [
            "inference:",
            "  models:",
            "    - name: default",
            "      model: default",
            f"      sha256: {DEFAULT_MODEL_SHA256}",
            "      inputs: [" + ", ".join(f"plc000/t{t:03d}" for t in range(6)) + "]",
            "      sample_ms: 1000",
            "      window: 16",
            "      threshold: {enter: 0.011, exit: 0.0057}",
        ]
    path.write_text("\n".join(lines) + "\n")


def has_inference() -> bool:
    """Whether this python can run the model (the armhf package has no onnxruntime: there
    ``all`` is every driver without the model)."""
    return importlib.util.find_spec("onnxruntime") is not None


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """VmRSS, or RssAnon (heap and stacks: what is not file-backed library code)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def smaps(pid: int, top: int = 12) -> list[tuple[str, float, float, float]]:
    """RSS by mapping (library file, or [heap]/[anon]), largest first: (name, rss,
    private, shared) in MiB. Shared pages are library code other processes may map too;
    the kernel can drop file-backed ones under pressure and read them again."""
    by: dict[str, list[int]] = {}
    name = "?"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if not head:
            continue
        if not head[0].endswith(":") or "-" in head[0]:  # a mapping's first line
            name = Path(head[5]).name if len(head) > 5 else "[anon]"
            continue
        field = head[0][:-1]
        kb = int(head[1]) if len(head) > 1 and head[1].isdigit() else 0
        acc = by.setdefault(name, [0, 0, 0])
        if field == "Rss":
            acc[0] += kb
        elif field in ("Private_Clean", "Private_Dirty"):
            acc[1] += kb
        elif field in ("Shared_Clean", "Shared_Dirty"):
            acc[2] += kb
    rows = sorted(by.items(), key=lambda kv: -kv[1][0])[:top]
    return [(n, r / 1024, p / 1024, s / 1024) for n, (r, p, s) in rows]


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def measure(
    kind: str,
    tags: int,
    duration: float,
    python: str,
    show_smaps: bool = False,
    reloads: int = 0,
) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix=f"edgegw-footprint-{kind}-{tags}-"))
    done = False
    procs: list[subprocess.Popen[bytes]] = []
    broker = Mosquitto(host="::1", workdir=work / "broker").start()
    try:
        ports = {
            "broker": broker.port,
            "metrics": free_port("127.0.0.1"),
            "modbus": free_port("127.0.0.1"),
            "opcua": free_port("127.0.0.1"),
            "s7": free_port("127.0.0.1"),
        }
        cfg = work / "footprint.yaml"
        write_config(cfg, work / "state", kind, tags, ports)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        exe = [python, "-m", "gateway.cli"]
        sim = subprocess.Popen(
            [*exe, "simulate", "-c", str(cfg), "--update-interval", "1.0"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(work / "sim.log", "wb"),  # noqa: SIM115
        )
        procs.append(sim)
        wait_listening("127.0.0.1", ports["modbus"], 60)
        if kind == "all":
            wait_listening("127.0.0.1", ports["opcua"], 60)
            wait_listening("127.0.0.1", ports["s7"], 60)
        t0 = time.monotonic()
        gw = subprocess.Popen(
            [*exe, "run", "-c", str(cfg), "--log-level", "WARNING"],
            env=env,
            stdout=open(work / "gateway.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        procs.append(gw)
        while not ready(ports["metrics"]):
            if gw.poll() is not None or time.monotonic() - t0 > 120:
                raise SystemExit(f"gateway did not become ready: see {work}/gateway.log")
            time.sleep(0.05)
        startup = time.monotonic() - t0
        rss_ready = rss_mib(gw.pid)
        samples: list[float] = []
        t1 = time.monotonic()
        while time.monotonic() - t1 < duration:
            time.sleep(1.0)
            if gw.poll() is not None:
                raise SystemExit(f"gateway exited: see {work}/gateway.log")
            samples.append(rss_mib(gw.pid))
            if len(samples) % 300 == 0:  # the shape of a long run: a line every 5 minutes
                print(
                    f"  {time.monotonic() - t1:6.0f} s: RSS {samples[-1]:6.1f} MiB, anonymous "
                    f"{rss_mib(gw.pid, 'RssAnon'):6.1f}",
                    flush=True,
                )
        third = samples[: max(1, len(samples) // 3)]
        after_reloads: list[float] = []
        for i in range(reloads):  # the unchanged config, read again (SIGHUP)
            gw.send_signal(signal.SIGHUP)
            top = 0.0
            for _ in range(RELOAD_GAP_S):
                time.sleep(1.0)
                top = max(top, rss_mib(gw.pid))
            after_reloads.append(round(top, 1))
            print(f"  reload {i + 1}: RSS {top:6.1f} MiB", flush=True)
        res: dict[str, object] = {
            "config": kind,
            "model": kind == "all" and has_inference(),
            "tags": tags,
            "startup_s": round(startup, 2),
            "rss_ready_mib": round(rss_ready, 1),
            "rss_max_mib": round(max(samples), 1),
            "rss_end_mib": round(samples[-1], 1),
            "rss_growth_mib": round(samples[-1] - statistics.median(third), 1),
            "rss_anon_end_mib": round(rss_mib(gw.pid, "RssAnon"), 1),
            "rss_file_end_mib": round(rss_mib(gw.pid, "RssFile"), 1),
            "duration_s": duration,
            **({"rss_after_reloads_mib": after_reloads} if reloads else {}),
        }
        print(
            f"{kind:6} {tags:6} tags: ready in {startup:5.2f} s, RSS {rss_ready:6.1f} MiB at "
            f"ready, max {max(samples):6.1f}, end {samples[-1]:6.1f} MiB",
            flush=True,
        )
        if show_smaps:
            print(f"{'mapping':40} {'RSS':>7} {'private':>8} {'shared':>7} MiB")
            for name, rss, priv, shared in smaps(gw.pid):
                print(f"{name[:40]:40} {rss:7.1f} {priv:8.1f} {shared:7.1f}")
        print(json.dumps(res), flush=True)
        done = True
        return res
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        broker.stop()
        # a failed run keeps its folder: the message points at its logs (and
        # footprint_chroot.py reads the status of each run from it)
        if done and not os.environ.get("EDGEGW_FOOTPRINT_KEEP"):
            shutil.rmtree(work, ignore_errors=True)


def imports(python: str) -> None:
    """RSS after each import step, each step in the same fresh interpreter."""
    code = (
        "import importlib, sys, json\n"
        "def rss():\n"
        "    for l in open('/proc/self/status'):\n"
        "        if l.startswith('VmRSS:'): return int(l.split()[1]) / 1024\n"
        "out = [('python', rss())]\n"
        "for label, mods in json.loads(sys.argv[1]):\n"
        "    for m in mods.split(', '): importlib.import_module(m)\n"
        "    out.append((label, rss()))\n"
        "print(json.dumps(out))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    raw = subprocess.run(
        [python, "-c", code, json.dumps(IMPORTS)],
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    steps = json.loads(raw)
    prev = steps[0][1]
    print(f"{'interpreter':48} {prev:6.1f} MiB")
    for label, rss in steps[1:]:
        print(f"{label:48} {rss - prev:+6.1f} MiB  (total {rss:6.1f})")
        prev = rss
    print(json.dumps({"imports": steps}))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tags", default="1000,10000", help="comma-separated tag counts")
    ap.add_argument("--configs", default="modbus,all", help="modbus, all, or both")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds sampled after ready")
    ap.add_argument("--imports", action="store_true", help="RSS per runtime dependency")
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs the gateway")
    ap.add_argument("--smaps", action="store_true", help="RSS by mapping at the end")
    ap.add_argument(
        "--reloads", type=int, default=0, help=f"then N SIGHUPs, {RELOAD_GAP_S} s apart"
    )
    a = ap.parse_args()
    if a.imports:
        imports(a.python)
        return 0
    for kind in a.configs.split(","):
        for tags in (int(t) for t in a.tags.split(",")):
            measure(kind, tags, a.duration, a.python, a.smaps, a.reloads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
