"""kill -9 at random instants loses nothing committed and never reuses a seq.

A child process appends (and now and then acks) as fast as it can and reports each
operation on stdout only AFTER the call returned. The parent SIGKILLs it at a random
moment, reopens the file and checks the report against the database:

- every seq reported as appended is present with the exact body, topic and priority,
  unless an ack that covered it had at least started;
- an ack that was cut short took effect for all of its seqs or for none of them;
- every row present has the body derived from its seq (no torn or mixed-up rows);
- seqs and boot numbers only go up across kills.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from buffer import Outbox

REPO_ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 6  # round 0 kills early, possibly during start-up or schema creation


def body_for(seq: int) -> bytes:
    # 32 B to ~4.3 KB: the larger ones spill into SQLite overflow pages.
    digest = hashlib.sha256(b"edgegw-crash-%d" % seq).digest()
    return digest * (1 + (seq % 7) * (seq % 23))


CHILD_MAIN = r"""
import random
import sys

from buffer import Outbox

path, sync, rnd, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
out = sys.stdout


def say(line):
    out.write(line + "\n")
    out.flush()


with Outbox(path, synchronous=sync) as ob:
    say(f"ready {ob.next_boot()}")
    while True:
        seq = ob.append(f"round/{rnd}", lambda s: body_for(s), priority=rnd)
        say(f"a {seq}")
        if rng.random() < 0.05:
            seqs = [r.seq for r in ob.pending(limit=40) if rng.random() < 0.6]
            say("i " + " ".join(map(str, seqs)))  # intent: this ack may be under way
            ob.ack(seqs)
            say("k")  # the ack returned
"""


@dataclass
class Report:
    """What a child said before it was killed."""

    boot: int | None = None
    appended: list[int] = field(default_factory=list)
    acked: set[int] = field(default_factory=set)
    unconfirmed_ack: list[int] = field(default_factory=list)


def parse(raw: bytes) -> Report:
    rep = Report()
    lines = raw.decode().split("\n")
    for line in lines[:-1]:  # the last element is "" or a line cut by the kill
        kind, _, rest = line.partition(" ")
        if kind == "ready":
            rep.boot = int(rest)
        elif kind == "a":
            rep.appended.append(int(rest))
        elif kind == "i":
            rep.unconfirmed_ack = [int(s) for s in rest.split()]
        elif kind == "k":
            rep.acked.update(rep.unconfirmed_ack)
            rep.unconfirmed_ack = []
    return rep


def run_child(db: Path, tmp: Path, rnd: int, sync: str, rng: random.Random) -> Report:
    code = "import hashlib\n" + inspect.getsource(body_for) + CHILD_MAIN
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out_path, err_path = tmp / f"child{rnd}.out", tmp / f"child{rnd}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        args = [sys.executable, "-c", code, str(db), sync, str(rnd), str(rng.randrange(2**32))]
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=env)
        try:
            if rnd == 0:
                time.sleep(rng.uniform(0.0, 0.15))
            else:
                deadline = time.monotonic() + 15
                while b"ready" not in out_path.read_bytes():
                    assert proc.poll() is None, err_path.read_text()
                    assert time.monotonic() < deadline, "child did not start"
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.05, 0.5))
            assert proc.poll() is None, f"child exited by itself: {err_path.read_text()}"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return parse(out_path.read_bytes())


def test_sigkill_loses_nothing_and_never_reuses_seqs(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    topic_of: dict[int, tuple[str, int]] = {}  # appended seq -> (topic, priority)
    acked: set[int] = set()
    highest_seen = 0  # highest seq printed or found in the file so far
    last_boot = 0
    losses: list[int] = []
    total_appended = 0

    for rnd in range(ROUNDS):
        sync = "FULL" if rnd % 3 == 2 else "NORMAL"
        rep = run_child(db, tmp_path, rnd, sync, rng)
        ctx = f"(seed {seed}, round {rnd}, {sync})"

        if rep.appended:
            assert rep.appended[0] > highest_seen, f"seq reused after restart {ctx}"
            assert rep.appended == sorted(set(rep.appended)), f"seqs not increasing {ctx}"
        if rep.boot is not None:
            assert rep.boot > last_boot, f"boot number reused {ctx}"
            last_boot = rep.boot
        for s in rep.appended:
            topic_of[s] = (f"round/{rnd}", rnd)
        total_appended += len(rep.appended)
        acked |= rep.acked
        maybe_acked = set(rep.unconfirmed_ack)

        if not db.exists():
            assert rnd == 0 and not rep.appended
            continue
        with Outbox(db) as ob:
            rows = ob.pending(limit=10**9)
            st = ob.stats()
        present = {r.seq: r for r in rows}
        seqs = [r.seq for r in rows]
        assert seqs == sorted(set(seqs)), f"duplicate or unordered seqs {ctx}"
        for r in rows:
            assert r.body == body_for(r.seq), f"seq {r.seq}: wrong body {ctx}"
            if r.seq in topic_of:
                assert (r.topic, r.priority) == topic_of[r.seq], f"seq {r.seq} {ctx}"
            else:  # committed, killed before it was printed: only the round's last one
                assert r.seq > max(rep.appended, default=highest_seen), ctx
                topic_of[r.seq] = (r.topic, r.priority)
        for s in acked:
            assert s not in present, f"acknowledged seq {s} came back {ctx}"
        for s, (_topic, _prio) in topic_of.items():
            if s not in present and s not in acked and s not in maybe_acked:
                losses.append(s)
        cut = [s for s in rep.unconfirmed_ack if s in topic_of]
        gone = {s for s in cut if s not in present}
        assert gone in (set(), set(cut)), f"ack cut by the kill was applied in part {ctx}"
        acked |= gone

        assert st.rows == len(rows)
        assert st.bytes == sum(len(r.body) for r in rows)
        assert st.last_seq >= max(topic_of, default=0)
        highest_seen = max(highest_seen, st.last_seq, *rep.appended)

    assert losses == [], f"{len(losses)} committed messages lost (seed {seed})"
    assert total_appended > 100, "the children barely ran; the test proved little"
    with Outbox(db) as ob:
        seq = ob.append("after", lambda s: body_for(s))
        assert seq == highest_seen + 1
        assert ob.next_boot() > last_boot


def test_a_power_cut_never_lets_a_seq_be_handed_out_twice(tmp_path: Path) -> None:
    """NORMAL durability fsyncs only when it reserves a block of seqs. A power cut is
    simulated by keeping the files as they were at that fsync and throwing away what
    came after (500 more messages, never fsynced): the reopened outbox skips the whole
    reserved block, says so in an unclean_stop drop, and never reuses seqs 2..501."""
    import shutil

    from buffer.seqs import SEQ_BLOCK

    live = tmp_path / "live"
    cut = tmp_path / "cut"
    live.mkdir()
    ob = Outbox(live / "o.db")
    assert ob.append("t", lambda s: b"x") == 1  # reserves 1..SEQ_BLOCK, with an fsync
    cut.mkdir()
    for f in live.iterdir():  # the disk as the power cut leaves it
        shutil.copy2(f, cut / f.name)
    handed = [ob.append("t", lambda s: b"y") for _ in range(500)]
    assert handed == list(range(2, 502))
    ob._conn = None  # the process dies with the power: no clean close
    with Outbox(cut / "o.db") as after:
        nxt = after.append("t", lambda s: b"z")
        drops = [(d.first_seq, d.last_seq, d.reason) for d in after.pending_drops()]
    assert nxt == SEQ_BLOCK + 2 and nxt > max(handed)
    assert drops == [(2, SEQ_BLOCK + 1, "unclean_stop")]
