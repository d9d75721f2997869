"""Marks: a producer's "published up to here", committed with the message that carries it.

The audit uplink keeps its position in the audit log as marks; the marks must change
exactly when the message commits, so that a crash, a failing seal or a full outbox can
neither skip entries (mark ahead of the outbox) nor leave a committed message unmarked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buffer import URGENT, Outbox, OutboxFull

REPO = Path(__file__).resolve().parents[2]


def body(seq: int) -> bytes:
    return b"m%d" % seq


def test_mark_is_none_until_set_then_follows_each_append(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        assert ob.mark("audit_offset") is None
        s1 = ob.append("t", body, marks={"audit_offset": 100, "audit_log_hi": -(2**63)})
        assert (ob.mark("audit_offset"), ob.mark("audit_log_hi")) == (100, -(2**63))
        ob.append("t", body)  # no marks: the marks stay as they are
        assert ob.mark("audit_offset") == 100
        ob.append("t", body, marks={"audit_offset": 250})
        assert (ob.mark("audit_offset"), ob.mark("audit_log_hi")) == (250, -(2**63))
        assert ob.mark("other") is None
        # marks are not messages: the totals count the three rows only
        assert ob.stats().rows == 3 and ob.pending()[0].seq == s1


def test_marks_survive_reopen(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        ob.append("t", body, marks={"a": 2**63 - 1, "b": -1})
    with Outbox(tmp_path / "o.db") as ob:
        assert (ob.mark("a"), ob.mark("b")) == (2**63 - 1, -1)


def test_a_failing_seal_leaves_the_marks_unchanged(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        ob.append("t", body, marks={"off": 10})

        def boom(seq: int) -> bytes:
            raise RuntimeError("signing failed")

        with pytest.raises(RuntimeError, match="signing failed"):
            ob.append("t", boom, marks={"off": 20, "new": 1})
        assert (ob.mark("off"), ob.mark("new")) == (10, None)
        assert ob.stats().rows == 1


def test_a_refused_message_leaves_the_marks_unchanged(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=1000, policy="stop_acquisition") as ob:
        ob.append("t", lambda s: b"x" * 900, marks={"off": 1})
        with pytest.raises(OutboxFull):
            ob.append("t", lambda s: b"y" * 900, marks={"off": 2})
        assert ob.mark("off") == 1
        # an urgent row is never refused for the cap: it and its mark commit together
        ob.append("t", lambda s: b"z" * 900, priority=URGENT, marks={"off": 3})
        assert ob.mark("off") == 3


@pytest.mark.parametrize("bad", [2**63, -(2**63) - 1])
def test_out_of_range_marks_are_refused_before_anything_is_written(
    tmp_path: Path, bad: int
) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        with pytest.raises(ValueError, match="signed 64-bit"):
            ob.append("t", body, marks={"off": bad})
        with pytest.raises(ValueError, match="non-empty"):
            ob.append("t", body, marks={"": 1})
        assert ob.stats().rows == 0 and ob.mark("off") is None


CHILD = r"""
import sys
from buffer import Outbox, URGENT
with Outbox(sys.argv[1]) as ob:
    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        ob.append("a", lambda s: b"%d" % n, priority=URGENT, marks={"n": n})
        print(n, flush=True)
"""


def test_sigkill_never_separates_a_mark_from_its_message(tmp_path: Path) -> None:
    """Message n carries n in its body and sets mark "n" to n. After a kill -9 at any
    instant the mark must equal the body of the last committed message: never behind it (a
    message without its mark) and never ahead (a mark without its message)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for delay in (0.05, 0.2, 0.5):
        path = tmp_path / f"o-{delay}.db"
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, env=env
        )
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        reported = [int(x) for x in child.stdout.read().split()]
        child.wait()
        with Outbox(path) as ob:
            rows = ob.pending(limit=1_000_000)
            assert rows, "the child committed nothing before the kill"
            last = int(rows[-1].body)
            assert ob.mark("n") == last
            assert [int(r.body) for r in rows] == list(range(1, last + 1))
            assert not reported or last >= reported[-1]  # what was reported is committed
