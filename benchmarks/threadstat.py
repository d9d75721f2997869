"""Per-thread CPU and wakeups of a process, from ``/proc/PID/task/*``: what each thread
costs and how often it wakes. A wakeup here is a voluntary context switch (the thread
went to sleep on its own: a wait on a queue, a timer, a socket): a count, so it does not
depend on how loaded the machine is, unlike CPU time. Thread names come from ``comm``
(``e2e.py --threads`` runs the gateway with ``benchmarks/threadnames`` on its path, which
names the kernel threads after the Python ones)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ThreadSample:
    name: str
    cpu_ns: int
    wakeups: int  # voluntary context switches
    preempted: int  # involuntary ones (another process took the core)


def sample(pid: int) -> dict[int, ThreadSample]:
    """tid -> sample for every thread of ``pid`` now (threads that end meanwhile are left out)."""
    out: dict[int, ThreadSample] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            cpu = int((task / "schedstat").read_text().split()[0])
            vol = invol = 0
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    vol = int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    invol = int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(task.name)] = ThreadSample(name, cpu, vol, invol)
    return out


def per_second(
    pid: int, before: dict[int, ThreadSample], after: dict[int, ThreadSample], seconds: float
) -> list[dict[str, object]]:
    """One row per thread: CPU ms per second and wakeups per second between two samples
    (the main thread, whose tid is the pid, is named ``event loop``)."""
    rows = []
    for tid, b in sorted(after.items()):
        a = before.get(tid, ThreadSample(b.name, 0, 0, 0))
        rows.append(
            {
                "thread": "event loop" if tid == pid else b.name,
                "tid": tid,
                "cpu_ms_per_s": round((b.cpu_ns - a.cpu_ns) / 1e6 / seconds, 3),
                "wakeups_per_s": round((b.wakeups - a.wakeups) / seconds, 2),
                "preempted_per_s": round((b.preempted - a.preempted) / seconds, 2),
            }
        )
    return rows


def table(rows: list[dict[str, object]]) -> str:
    lines = [f"  {'thread':<18} {'CPU ms/s':>9} {'wakeups/s':>10} {'preempted/s':>12}"]
    for r in rows:
        lines.append(
            f"  {r['thread']!s:<18} {r['cpu_ms_per_s']:>9} {r['wakeups_per_s']:>10} "
            f"{r['preempted_per_s']:>12}"
        )
    total_cpu = sum(float(r["cpu_ms_per_s"]) for r in rows)  # type: ignore[arg-type]
    total_wake = sum(float(r["wakeups_per_s"]) for r in rows)  # type: ignore[arg-type]
    lines.append(f"  {'all':<18} {total_cpu:>9.3f} {total_wake:>10.2f}")
    return "\n".join(lines)
