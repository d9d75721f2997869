"""benchmarks/footprint.py run inside a chroot of another architecture (arm64 under
qemu-user), with the figures emulation does not inflate.

    sudo images/test-deb.sh --arch arm64 --cache /var/cache/edgegw-test \\
        --exec '.venv/bin/python benchmarks/footprint_chroot.py --out build/footprint-arm64.json'

Run on the host, as root, against a chroot where the edgegw package is installed
(``--chroot``, default ``$EDGEGW_CHROOT``, which ``test-deb.sh --exec`` sets). It copies
``footprint.py`` into the chroot and runs it there with the package's own interpreter
(``/opt/edgegw/bin/python``): the Modbus-only and all-driver configs at each tag count,
then ``--imports``.

Under qemu-user the gateway's process is qemu running the guest program, so its
``VmRSS`` (what footprint.py reports) also holds qemu's own memory: its binary, its
heap, and the translation cache of the guest code it has translated. This script also
reports, for the same processes:

- **guest RSS / guest anon**: the resident pages (all, and private anonymous ones: heap,
  stacks, written data) of the guest's own mappings only. The guest's mappings come from
  ``/proc/self/maps`` read inside the process (qemu answers it with the guest's view), the
  residency from the host's ``/proc/PID/pagemap``. A ``sitecustomize`` put on the
  gateway's ``PYTHONPATH`` (footprint.py sets it to the copy's folder) writes that map
  every second from a daemon thread (a thread stack of a few KiB);
- **Python heap**: ``tracemalloc``'s traced memory, at the end and at its peak, from a
  second pass with tracing on (tracing costs memory itself, so the RSS figures come from
  the first pass, without it);
- the same two per import step (footprint.py's ``IMPORTS`` list).

In a chroot of the machine's own architecture the guest's mappings are the whole
process, so guest RSS equals VmRSS: the .deb test checks that (tests/appliance/
test_packaging.py). Each run also says whether the gateway kept up (points polled,
overruns, read errors, from its final status.json): under emulation it may not.

``--steps rss,heap,imports`` picks the passes. A run that fails is reported and the others
go on (exit status 1 at the end); ``--out`` is rewritten after each run. Times under
emulation are not speed and are not reported as such. Bounded: each footprint.py run
stops after ``--duration`` seconds (footprint.py gives a gateway 120 s to become ready).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# benchmarks/platform.py would shadow the stdlib's `platform`: keep this folder off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

import argparse  # noqa: E402
import ast  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from array import array  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

GUEST_DIR = "/tmp/edgegw-footprint"  # inside the chroot
GUEST_PYTHON = "/opt/edgegw/bin/python"
PAGE = 4096

# Put on the gateway's PYTHONPATH in the guest: in `gateway.cli run` only, a daemon
# thread writes the guest's view of its mappings (and tracemalloc's figures) every second.
SITECUSTOMIZE = """
import os, sys, threading, time

def _edgegw_footprint_hook():
    maps_dir = os.environ.get("EDGEGW_GUEST_MAPS")
    if not maps_dir:
        return
    argv = open("/proc/self/cmdline", "rb").read().split(b"\\0")
    if b"gateway.cli" not in argv or argv[argv.index(b"gateway.cli") + 1 :][:1] != [b"run"]:
        return
    trace = os.environ.get("EDGEGW_GUEST_TRACEMALLOC") == "1"
    if trace:
        import tracemalloc
        tracemalloc.start()

    def loop():
        import json
        pid = os.getpid()
        while True:
            try:
                traced = list(tracemalloc.get_traced_memory()) if trace else None
                head = json.dumps({"pid": pid, "label": "gateway", "traced": traced})
                with open("/proc/self/maps") as f:
                    maps = f.read()
                tmp = f"{maps_dir}/{pid}.tmp"
                with open(tmp, "w") as f:
                    f.write(head + "\\n" + maps)
                os.replace(tmp, f"{maps_dir}/{pid}.maps")
            except Exception as e:  # a measurement aid: say so, never stop the gateway
                print(f"footprint hook: {e!r}", file=sys.stderr)
            time.sleep(1.0)

    threading.Thread(target=loop, name="footprint-guest-maps", daemon=True).start()

_edgegw_footprint_hook()
"""

# Run in the guest: import footprint.py's IMPORTS steps one after the other; after each,
# hand the guest's map to the host and wait until the host has measured it.
GUEST_IMPORTS = """
import importlib, json, os, sys, time
steps, maps_dir, trace = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
if trace:
    import tracemalloc
    tracemalloc.start()
pid = os.getpid()

def step(label):
    traced = list(tracemalloc.get_traced_memory()) if trace else None
    with open(f"{maps_dir}/{pid}.tmp", "w") as f:
        f.write(json.dumps({"pid": pid, "label": label, "traced": traced}) + "\\n")
        f.write(open("/proc/self/maps").read())
    os.replace(f"{maps_dir}/{pid}.tmp", f"{maps_dir}/{pid}.maps")
    deadline = time.monotonic() + 120
    while os.path.exists(f"{maps_dir}/{pid}.maps"):
        if time.monotonic() > deadline:
            sys.exit(f"the host did not measure step {label!r} in 120 s")
        time.sleep(0.05)

step("python")
for label, mods in steps:
    for m in mods.split(", "):
        importlib.import_module(m)
    step(label)
"""


@dataclass
class Sample:
    label: str
    guest_rss_mib: float
    guest_anon_mib: float
    vmrss_mib: float  # the whole qemu process, what footprint.py reports
    rssanon_mib: float
    traced_mib: float | None
    traced_peak_mib: float | None


@dataclass
class Sampler:
    """Measures every guest process that hands in its map (see SITECUSTOMIZE)."""

    root: Path
    maps_dir: Path
    samples: dict[int, list[Sample]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            for dump in sorted(self.maps_dir.glob("*.maps")):
                try:
                    self.measure(dump)
                except (OSError, ValueError) as e:  # the process may just have exited
                    self.errors.append(f"{dump.name}: {e!r}")
                finally:
                    dump.unlink(missing_ok=True)
            self.stop.wait(0.05)

    def measure(self, dump: Path) -> None:
        head, _, maps = dump.read_text().partition("\n")
        info = json.loads(head)
        pid = int(info["pid"])  # a chroot shares the host's pid namespace
        guest = parse_maps(maps)
        host = parse_maps(Path(f"/proc/{pid}/maps").read_text())
        base = guest_base(guest, host, str(self.root))
        present = anon = 0
        with open(f"/proc/{pid}/pagemap", "rb") as pm:
            for start, end, perms, _off, _path in guest:
                if perms.startswith("---"):
                    continue  # reserved, never resident
                first, n = (start + base) // PAGE, (end - start) // PAGE
                entries = array("Q", os.pread(pm.fileno(), 8 * n, 8 * first))
                for entry in entries:
                    if entry >> 63 & 1:  # present
                        present += 1
                        if not entry >> 61 & 1:  # not a file page nor shared: anonymous
                            anon += 1
        status = proc_status(pid)
        traced = info.get("traced")
        self.samples.setdefault(pid, []).append(
            Sample(
                label=info["label"],
                guest_rss_mib=present * PAGE / 2**20,
                guest_anon_mib=anon * PAGE / 2**20,
                vmrss_mib=status["VmRSS"],
                rssanon_mib=status["RssAnon"],
                traced_mib=traced[0] / 2**20 if traced else None,
                traced_peak_mib=traced[1] / 2**20 if traced else None,
            )
        )


Mapping = tuple[int, int, str, int, str]


def parse_maps(text: str) -> list[Mapping]:
    out = []
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 5:
            continue
        a, b = (int(x, 16) for x in parts[0].split("-"))
        out.append((a, b, parts[1], int(parts[2], 16), parts[5] if len(parts) > 5 else ""))
    return out


def guest_base(guest: list[Mapping], host: list[Mapping], root: str) -> int:
    """Host address minus guest address: matched on the first file mapped at offset 0
    (the host shows the chroot's files with the chroot's path in front)."""
    for start, _end, _perms, off, path in guest:
        if path.startswith("/") and off == 0:
            for hstart, _e, _p, hoff, hpath in host:
                if hoff == 0 and hpath in (root.rstrip("/") + path, path):
                    return hstart - start
    raise ValueError("no file mapping in common between the guest's and the host's maps")


def proc_status(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            out[key] = int(value.split()[0]) / 1024
    return out


def footprint_imports() -> list[list[str]]:
    """footprint.py's IMPORTS, read without importing it (it would import gateway)."""
    tree = ast.parse((REPO / "benchmarks" / "footprint.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "IMPORTS" for t in node.targets
        ):
            return [list(x) for x in ast.literal_eval(node.value)]
    raise SystemExit("benchmarks/footprint.py has no IMPORTS list")


class Chroot:
    def __init__(self, root: Path) -> None:
        self.root = root

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 3600
    ) -> subprocess.CompletedProcess[str]:
        base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
        cmd = ["chroot", str(self.root), "/usr/bin/env", "-i"]
        cmd += [f"{k}={v}" for k, v in {**base, **(env or {})}.items()]
        return subprocess.run(
            [*cmd, *args], capture_output=True, text=True, timeout=timeout, check=False
        )


def ensure_mosquitto(ch: Chroot) -> None:
    if (ch.root / "usr/sbin/mosquitto").exists():
        return
    r = ch.run(
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "mosquitto",
        env={"DEBIAN_FRONTEND": "noninteractive"},
    )
    if r.returncode != 0:
        raise SystemExit(f"installing mosquitto in the chroot failed:\n{r.stdout}{r.stderr}")


def mib(x: float | None) -> str:
    return "-" if x is None else f"{x:6.1f}"


def run_footprint(
    ch: Chroot, sampler: Sampler, kind: str, tags: int, duration: float, trace: bool
) -> dict[str, object]:
    before = set(sampler.samples)
    dirs = set((ch.root / "tmp").glob(f"edgegw-footprint-{kind}-{tags}-*"))
    # keep the run's folder: its status.json says whether the gateway kept up (below)
    env = {"EDGEGW_GUEST_MAPS": f"{GUEST_DIR}/maps", "EDGEGW_FOOTPRINT_KEEP": "1"}
    if trace:
        env["EDGEGW_GUEST_TRACEMALLOC"] = "1"
    r = ch.run(
        GUEST_PYTHON, f"{GUEST_DIR}/benchmarks/footprint.py", "--configs", kind,
        "--tags", str(tags), "--duration", str(duration), env=env,
        timeout=duration + 900,
    )  # fmt: skip
    time.sleep(0.3)  # the sampler's last round
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    new_dirs = set((ch.root / "tmp").glob(f"edgegw-footprint-{kind}-{tags}-*")) - dirs
    if r.returncode != 0 or not lines:
        why = (r.stdout + r.stderr).strip().splitlines()[-1:]
        logs = [tail(d / "gateway.log") for d in new_dirs]
        raise RunFailed(f"footprint.py {kind} {tags}: {' '.join(why)}; gateway.log: {logs}")
    res: dict[str, object] = json.loads(lines[-1])
    gw = [
        s for pid in set(sampler.samples) - before for s in sampler.samples[pid]
        if s.label == "gateway"
    ]  # fmt: skip
    if not gw:
        raise RunFailed(f"no guest map from the gateway ({kind} {tags}): {sampler.errors[-3:]}")
    last = gw[-1]
    res.update(
        guest_rss_end_mib=round(last.guest_rss_mib, 1),
        guest_anon_end_mib=round(last.guest_anon_mib, 1),
        guest_rss_max_mib=round(max(s.guest_rss_mib for s in gw), 1),
        guest_anon_max_mib=round(max(s.guest_anon_mib for s in gw), 1),
        qemu_own_end_mib=round(last.vmrss_mib - last.guest_rss_mib, 1),
        samples=len(gw),
        **load_done(set(new_dirs)),
    )
    for d in new_dirs:
        shutil.rmtree(d, ignore_errors=True)
    if trace:
        res = {
            "config": kind,
            "tags": tags,
            "traced_end_mib": round(last.traced_mib or 0, 1),
            "traced_peak_mib": round(max(s.traced_peak_mib or 0 for s in gw), 1),
        }
    return res


class RunFailed(Exception):
    """One footprint.py run failed; the others still run."""


def tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return repr(e)


def load_done(new_dirs: set[Path]) -> dict[str, object]:
    """Whether the gateway polled what the config asks under emulation (every tag once a
    second), from its final status.json: the memory figures are for that load only if so."""
    if len(new_dirs) != 1:
        return {"polled": None}
    st = json.loads((new_dirs.pop() / "state" / "status.json").read_text())
    devices = st["devices"].values()
    return {
        "points_polled": st["pipeline"]["points_polled"],
        "points_sealed": st["pipeline"]["points_sealed"],
        "messages_acked": st["uplink"]["acked"],
        "run_s": round((st["time_ns"] - st["started_ns"]) / 1e9, 1),
        "overruns": sum(d.get("overruns", 0) for d in devices),
        "read_errors": sum(d.get("errors", 0) for d in devices),
        "errors_by_device": {
            d["name"]: f"{d['errors']} errors, last: {d.get('last_error')}"
            for d in devices
            if d.get("errors")
        },
    }


def run_imports(ch: Chroot, sampler: Sampler, trace: bool) -> list[Sample]:
    before = set(sampler.samples)
    r = ch.run(
        GUEST_PYTHON, "-c", GUEST_IMPORTS, json.dumps(footprint_imports()),
        f"{GUEST_DIR}/maps", "1" if trace else "0", timeout=1200,
    )  # fmt: skip
    if r.returncode != 0:
        raise RunFailed(f"the import steps failed: {(r.stdout + r.stderr)[-2000:]}")
    pids = set(sampler.samples) - before
    return [s for pid in pids for s in sampler.samples[pid]]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--chroot", default=os.environ.get("EDGEGW_CHROOT"), help="the chroot")
    ap.add_argument("--tags", default="1000,10000", help="comma-separated tag counts")
    ap.add_argument("--configs", default="modbus,all", help="modbus, all, or both")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds sampled after ready")
    ap.add_argument("--out", type=Path, help="write every figure here as JSON (after each run)")
    ap.add_argument(
        "--steps",
        default="rss,heap,imports",
        help="rss: footprint.py runs; heap: the same with tracemalloc; imports: per import step",
    )
    a = ap.parse_args()
    if not a.chroot:
        raise SystemExit("--chroot (or EDGEGW_CHROOT) is needed")
    if os.geteuid() != 0:
        raise SystemExit("run as root (chroot, /proc/PID/pagemap)")
    ch = Chroot(Path(a.chroot).resolve())
    if not (ch.root / GUEST_PYTHON.lstrip("/")).exists():
        raise SystemExit(f"{ch.root} has no {GUEST_PYTHON}: install the edgegw package there")
    arch = ch.run("dpkg", "--print-architecture").stdout.strip()
    ensure_mosquitto(ch)
    work = ch.root / GUEST_DIR.lstrip("/")
    shutil.rmtree(work, ignore_errors=True)
    (work / "benchmarks").mkdir(parents=True)
    (work / "maps").mkdir()
    shutil.copy(REPO / "benchmarks" / "footprint.py", work / "benchmarks" / "footprint.py")
    (work / "sitecustomize.py").write_text(SITECUSTOMIZE)

    sampler = Sampler(ch.root, work / "maps")
    thread = threading.Thread(target=sampler.run, name="guest-sampler", daemon=True)
    thread.start()
    steps = set(a.steps.split(","))
    report: dict[str, Any] = {"arch": arch, "duration_s": a.duration, "runs": [], "failed": []}

    def save() -> None:
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(report, indent=1) + "\n")

    try:
        for kind in a.configs.split(","):
            for tags in (int(t) for t in a.tags.split(",")):
                for trace in [False] * ("rss" in steps) + [True] * ("heap" in steps):
                    try:
                        res = run_footprint(ch, sampler, kind, tags, a.duration, trace)
                    except RunFailed as e:
                        print(f"FAILED: {e}", flush=True)
                        report["failed"].append(str(e))
                        continue
                    print(json.dumps(res), flush=True)
                    report["runs"].append(res)
                    save()
        if "imports" in steps:
            try:
                report.update(measure_imports(ch, sampler))
            except RunFailed as e:
                print(f"FAILED: {e}", flush=True)
                report["failed"].append(str(e))
            save()
    finally:
        sampler.stop.set()
        thread.join()
        shutil.rmtree(work, ignore_errors=True)
    summary(report)
    if sampler.errors:
        print(f"\n{len(sampler.errors)} sample(s) missed (a process exiting): {sampler.errors[:3]}")
    save()
    return 1 if report["failed"] else 0


def measure_imports(ch: Chroot, sampler: Sampler) -> dict[str, Any]:
    r = ch.run(GUEST_PYTHON, f"{GUEST_DIR}/benchmarks/footprint.py", "--imports")
    if r.returncode != 0:
        raise RunFailed(f"footprint.py --imports failed: {(r.stdout + r.stderr)[-2000:]}")
    print(r.stdout, end="", flush=True)
    plain = run_imports(ch, sampler, trace=False)
    with_trace = run_imports(ch, sampler, trace=True)
    return {
        "footprint_imports": json.loads(r.stdout.strip().splitlines()[-1])["imports"],
        "imports": [
            {
                "step": p.label,
                "vmrss_mib": round(p.vmrss_mib, 1),
                "guest_rss_mib": round(p.guest_rss_mib, 1),
                "guest_anon_mib": round(p.guest_anon_mib, 1),
                "traced_mib": round(t.traced_mib or 0, 2),
            }
            for p, t in zip(plain, with_trace, strict=True)
        ],
    }


def summary(report: dict[str, Any]) -> None:
    arch, runs = report["arch"], report["runs"]
    print(f"\n{arch}: gateway process, at the end of {report['duration_s']:.0f} s of polling (MiB)")
    print(f"{'config':8} {'tags':>6} {'VmRSS':>7} {'guest RSS':>10} {'guest anon':>10} "
          f"{'qemu own':>9} {'py heap':>8} {'py peak':>8}  load")  # fmt: skip
    keys = sorted({(r["config"], r["tags"]) for r in runs}, key=lambda k: (k[0] != "modbus", k))
    for kind, tags in keys:
        res = next(
            (r for r in runs if (r["config"], r["tags"]) == (kind, tags) and "rss_end_mib" in r), {}
        )
        tr = next(
            (r for r in runs if (r["config"], r["tags"]) == (kind, tags) and "traced_end_mib" in r),
            {},
        )
        print(
            f"{kind:8} {tags:>6} {mib(res.get('rss_end_mib'))}  "
            f"{mib(res.get('guest_rss_end_mib'))}     {mib(res.get('guest_anon_end_mib'))}     "
            f"{mib(res.get('qemu_own_end_mib'))}   {mib(tr.get('traced_end_mib'))}   "
            f"{mib(tr.get('traced_peak_mib'))}  {res.get('points_polled')} points polled "
            f"in {res.get('run_s')} s, {res.get('overruns')} overruns"
        )
    if report.get("imports"):
        print(f"\n{arch}: imports, cumulative (MiB)")
        print(f"{'step':40} {'VmRSS':>7} {'guest RSS':>10} {'guest anon':>10} {'py heap':>8}")
        for s in report["imports"]:
            print(f"{s['step']:40} {mib(s['vmrss_mib'])}  {mib(s['guest_rss_mib'])}     "
                  f"{mib(s['guest_anon_mib'])}   {mib(s['traced_mib'])}")  # fmt: skip
    for f in report["failed"]:
        print(f"FAILED: {f}")


if __name__ == "__main__":
    sys.exit(main())
