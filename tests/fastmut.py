"""A fast pass over mutmut's own mutants, for a loaded machine where ``make mutate`` is
too slow: each mutant is run (in a forked child, ``-x``, with a time budget) against
only the tests that reach its function, found by one traced run of the tests you name.
It can only over-count survivors: a test that starts the code in a subprocess is not
seen by the traced run (run such tests against a mutant by hand, ``MUTANT_UNDER_TEST``).

From the repository root, with mutmut installed (``make mutate`` installs it)::

    .venv/bin/python tests/fastmut.py gen                       # mutants/ (no test run)
    .venv/bin/python tests/fastmut.py stats ST.json TESTS...    # who reaches what
    .venv/bin/python tests/fastmut.py run ST.json 'security.audit.*' RES.jsonl [ORDER]
    .venv/bin/python tests/fastmut.py show RES.jsonl [survived]  # diffs of a status
    .venv/bin/python tests/fastmut.py module forwarder RES.jsonl  # gen, stats, run: a set below

``run`` appends one JSON line per mutant to RES.jsonl (with the first failing test of a
killed one) and skips those already there (resumable); ORDER is a file of mutant names,
to run those, in that order. Run it niced; it starts a process group per mutant and kills
it at the budget. ``FASTMUT_JOBS=N`` runs N mutants side by side: worth it for tests that
wait on a broker (the forwarder's use a few % of a core), not for CPU-bound ones.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path.cwd()
MUT = ROOT / "mutants"


def gen() -> None:
    from mutmut.__main__ import create_mutants
    from mutmut.mutation.trampoline import set_mutant_under_test
    from mutmut.utils.file_utils import copy_also_copy_files, copy_src_dir

    set_mutant_under_test("mutant_generation")
    MUT.mkdir(exist_ok=True)
    copy_src_dir()
    copy_also_copy_files()
    print(create_mutants(2))


def enter() -> None:
    """Run from the mutated copy, as mutmut does; children import it too."""
    shutil.copytree(ROOT / "tests", MUT / "tests", dirs_exist_ok=True)
    os.chdir(MUT)
    sys.path = [str(MUT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    os.environ["PYTHONPATH"] = str(MUT)


def all_mutants() -> list[str]:
    names: list[str] = []
    for meta in MUT.rglob("*.meta"):
        names += json.loads(meta.read_text())["exit_code_by_key"].keys()
    return names


def stats(out: Path, tests: list[str]) -> None:
    import pytest
    from mutmut.mutation import trampoline

    enter()
    hits: dict[str, set[str]] = defaultdict(set)
    dur: dict[str, float] = defaultdict(float)
    current: set[str] = set()

    def record(name: str, caller: str | None = None) -> None:
        current.add(name)

    trampoline.record_trampoline_hit = record  # type: ignore[assignment]
    trampoline.set_mutant_under_test("stats")

    class Plugin:
        def pytest_runtest_setup(self, item: Any) -> None:
            current.clear()

        def pytest_runtest_teardown(self, item: Any, nextitem: Any) -> None:
            for f in current:
                hits[f].add(item.nodeid)
            current.clear()

        def pytest_runtest_logreport(self, report: Any) -> None:
            dur[report.nodeid] += report.duration

    rc = pytest.main(["--rootdir=.", "-q", "-p", "no:cacheprovider", *tests], plugins=[Plugin()])
    found = {k: sorted(v) for k, v in hits.items()}
    out.write_text(json.dumps({"rc": int(rc), "hits": found, "dur": dur}))
    print("stats: exit", rc, "functions reached", len(hits))


class _FirstFailure:
    """Notes the first failing test and its last error line (to tell a flaky kill)."""

    def __init__(self) -> None:
        self.failed: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.failed and not self.failed:
            text = str(report.longrepr).strip().splitlines() or [""]
            self.failed = {"test": report.nodeid, "why": text[-1][:200]}


def start(name: str, tests: list[str], scratch: Path) -> int:
    """The mutant against the tests, in a forked child (its own process group)."""
    import pytest
    from mutmut.mutation.trampoline import set_mutant_under_test

    pid = os.fork()
    if pid:
        return pid
    os.setsid()
    fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ["MUTANT_UNDER_TEST"] = name
    set_mutant_under_test(name)
    first = _FirstFailure()
    # Its own temporary root: children run side by side (-j) and pytest prunes old roots.
    args = ["--rootdir=.", "-x", "-q", "-p", "no:cacheprovider", f"--basetemp={scratch}"]
    try:
        rc = int(pytest.main([*args, *tests], plugins=[first]))
    except BaseException:
        rc = 99
    with contextlib.suppress(OSError):
        (scratch.parent / f"{scratch.name}.json").write_text(json.dumps(first.failed))
    os._exit(rc)


def run(stats_file: Path, pattern: str, results: Path, order: Path | None) -> None:
    """Runs the mutants, FASTMUT_JOBS at a time (default 1): tests that mostly wait on a
    broker leave the CPU idle, so several can share it."""
    import pytest
    from mutmut.utils.format_utils import mangled_name_from_mutant_name

    st = json.loads(stats_file.read_text())
    hits, dur = st["hits"], st["dur"]
    names = sorted(n for n in all_mutants() if fnmatch.fnmatch(n, pattern))
    if order is not None:
        have = set(names)
        names = [n for n in order.read_text().split() if n in have]
    done = set()
    if results.exists():
        done = {json.loads(line)["name"] for line in results.read_text().splitlines() if line}
    todo = [n for n in names if n not in done]
    jobs = int(os.environ.get("FASTMUT_JOBS", "1"))
    slack = float(os.environ.get("FASTMUT_SLACK", "4"))  # budget: 20 s + slack x the tests' time
    print(f"{len(names)} mutants, {len(todo)} to run, {jobs} at a time", flush=True)
    enter()
    files = sorted({t.split("::")[0] for f in hits.values() for t in f})
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        pytest.main(["--rootdir=.", "-q", "-p", "no:cacheprovider", "--collect-only", *files])
    scratch_root = Path(f"/tmp/fastmut-{os.getpid()}")
    scratch_root.mkdir(exist_ok=True)
    running: dict[int, tuple[str, float, float, int, Path]] = {}
    queue = list(todo)
    count = 0

    def finish(pid: int, status: str, rc: int | None) -> None:
        name, began, _, ntests, scratch = running.pop(pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # whatever the child left running (a broker)
        record(name, status, rc, began, ntests, scratch)

    def record(
        name: str, status: str, rc: int | None, began: float, ntests: int, scratch: Path
    ) -> None:
        nonlocal count
        rec: dict[str, Any] = {"name": name, "status": status, "rc": rc}
        rec |= {"secs": round(time.monotonic() - began, 1), "tests": ntests}
        note = scratch.parent / f"{scratch.name}.json"
        with contextlib.suppress(OSError, ValueError):
            rec |= json.loads(note.read_text())
        note.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
        with open(results, "a") as f:
            f.write(json.dumps(rec) + "\n")
        count += 1
        print(count, len(todo), status, rec["secs"], name, rec.get("test", ""), flush=True)

    while queue or running:
        while queue and len(running) < jobs:
            name = queue.pop(0)
            tests = sorted(hits.get(mangled_name_from_mutant_name(name), []), key=lambda t: dur[t])
            scratch = scratch_root / str(len(todo) - len(queue))
            if not tests:
                record(name, "no tests", None, time.monotonic(), 0, scratch)
                continue
            budget = 20 + slack * sum(dur[t] for t in tests)
            pid = start(name, tests, scratch)
            running[pid] = (name, time.monotonic(), budget, len(tests), scratch)
        time.sleep(0.05)
        for pid, (_, began, budget, _, _) in list(running.items()):
            done_pid, ws = os.waitpid(pid, os.WNOHANG)
            if done_pid:
                rc = os.waitstatus_to_exitcode(ws)
                finish(pid, {0: "survived", 1: "killed", 3: "killed"}.get(rc, f"exit {rc}"), rc)
            elif time.monotonic() - began > budget:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                finish(pid, "timeout", None)
    shutil.rmtree(scratch_root, ignore_errors=True)


def show(results: Path, status: str) -> None:
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    for line in results.read_text().splitlines():
        r = json.loads(line)
        if r["status"] == status:
            diff = get_diff_for_mutant(r["name"]).splitlines()[2:]
            print("##", r["name"])
            print("\n".join(x for x in diff if x[:1] in "+-" and x[:3] not in ("+++", "---")))


# The test sets each module was judged by (docs/mutation/), and how many mutants run side
# by side: the forwarder's and the receiver's slow tests wait on a broker or a child.
G, S = "tests/gateway/", "tests/security/"
SETS: dict[str, tuple[str, list[str], int]] = {
    "forwarder": (
        "gateway.forwarder.*",
        [
            *(G + f"test_{n}.py" for n in ("forwarder", "forwarder_rules", "forwarder_offer")),
            *(G + f"test_forwarder_mutants{n}.py" for n in ("", "2", "3")),
            *(G + f"test_{n}.py" for n in ("uplink_connack", "uplink_brokers", "uplink_audit")),
            *(G + f"test_{n}.py" for n in ("uplink_flapping", "mqtt_link")),
            "-k",
            "not wrong_password and not idle_link",
        ],
        12,
    ),
    "receiver": (
        "gateway.receiver.*",
        [
            *(G + f"test_receiver{n}.py" for n in ("", "_edges", "_interleaved", "_mqtt")),
            *(G + f"test_receiver_{n}.py" for n in ("mqtt_mutants", "mutants", "mutants3")),
            *(G + f"test_{n}.py" for n in ("receiver_mutants4", "receiver_schema_mutants")),
            *(G + f"test_{n}.py" for n in ("sqlite_store_mutants", "witness", "attack_corpus")),
            *(G + f"test_{n}.py" for n in ("enrolment", "payload_v2", "platform_store")),
            *(G + f"test_{n}.py" for n in ("receive_cli", "command_results_receiver")),
        ],
        6,
    ),
    "buffer": (
        "buffer.*",
        ["tests/buffer", G + "test_pipeline.py", G + "test_pipeline_mutants2.py"],
        3,
    ),
    "pipeline": (
        "gateway.pipeline.*",
        [
            *(G + f"test_pipeline{n}.py" for n in ("", "_more", "_mutants2")),
            *(G + f"test_{n}.py" for n in ("payload_v2", "attack_corpus", "receiver_mutants")),
            "tests/buffer/test_outbox_room.py",
            *(S + f"test_{n}.py" for n in ("cose", "cose_envelope", "cose_mutants", "keyring")),
        ],
        2,
    ),
}


def module(name: str, results: Path) -> None:
    """gen (once), the traced run of the module's test set, then the run: one command."""
    pattern, tests, jobs = SETS[name]
    tests = [t for t in tests if not t.startswith("tests/") or (ROOT / t).exists()]
    me = [sys.executable, __file__]
    if not MUT.exists():
        subprocess.run([*me, "gen"], check=True)
    st = MUT / f"{name}-stats.json"
    subprocess.run([*me, "stats", str(st), *tests], check=False)
    env = {"FASTMUT_JOBS": str(jobs)} | dict(os.environ)
    subprocess.run([*me, "run", str(st), pattern, str(results)], check=True, env=env)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "gen":
        gen()
    elif cmd == "stats":
        stats(ROOT / args[0], args[1:])
    elif cmd == "run":
        run(ROOT / args[0], args[1], ROOT / args[2], ROOT / args[3] if len(args) > 3 else None)
    elif cmd == "module":
        module(args[0], ROOT / args[1])
    elif cmd == "show":
        show(ROOT / args[0], args[1] if len(args) > 1 else "survived")
    else:
        sys.exit(__doc__)
