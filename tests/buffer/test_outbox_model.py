"""The outbox against a plain in-memory model, driven by hypothesis."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from buffer import Outbox, OutboxStats


class SealFailed(Exception):
    pass


class OutboxModel(RuleBasedStateMachine):
    """Model: the unacked rows by seq, the highest seq ever assigned, the boot counter."""

    seqs = Bundle("seqs")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="outbox-model-"))
        self.path = self.dir / "outbox.db"
        self.ob = Outbox(self.path)
        self.rows: dict[int, tuple[str, bytes, int]] = {}
        self.last_seq = 0
        self.boot = 0

    def teardown(self) -> None:
        self.ob.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(
        target=seqs,
        topic=st.sampled_from(["t/a", "t/b", "événements/ü"]),
        body=st.binary(max_size=600) | st.binary(min_size=4000, max_size=9000),
        priority=st.integers(0, 3),
    )
    def append(self, topic: str, body: bytes, priority: int) -> int:
        given: list[int] = []

        def seal(seq: int) -> bytes:
            given.append(seq)
            return seq.to_bytes(8, "big") + body

        seq = self.ob.append(topic, seal, priority=priority)
        assert given == [seq]
        assert seq == self.last_seq + 1
        self.last_seq = seq
        self.rows[seq] = (topic, seq.to_bytes(8, "big") + body, priority)
        return seq

    @rule()
    def append_with_failing_seal(self) -> None:
        def seal(seq: int) -> bytes:
            assert seq == self.last_seq + 1
            raise SealFailed

        try:
            self.ob.append("t/a", seal)
        except SealFailed:
            pass
        else:
            raise AssertionError("append swallowed the seal error")

    @rule(seq=consumes(seqs))
    def ack_one(self, seq: int) -> None:
        assert self.ob.ack([seq]) == (1 if seq in self.rows else 0)
        self.rows.pop(seq, None)

    @rule(data=st.data())
    def ack_subset(self, data: st.DataObject) -> None:
        known = sorted(self.rows)
        chosen = data.draw(st.lists(st.sampled_from(known), unique=True)) if known else []
        # Already-acked and never-assigned seqs are ignored.
        noise = data.draw(st.lists(st.integers(-2, self.last_seq + 5), max_size=4))
        expected = len(set(chosen) | (set(noise) & set(self.rows)))
        assert self.ob.ack(chosen + noise + chosen[:1]) == expected
        for s in set(chosen) | set(noise):
            self.rows.pop(s, None)

    @rule(after=st.integers(-1, 60), limit=st.integers(0, 12))
    def pending(self, after: int, limit: int) -> None:
        got = [(r.seq, r.topic, r.body, r.priority) for r in self.ob.pending(after, limit)]
        want = [(s, *self.rows[s]) for s in sorted(self.rows) if s > after][:limit]
        assert got == want

    @rule()
    def next_boot(self) -> None:
        self.boot += 1
        assert self.ob.next_boot() == self.boot

    @rule(full=st.booleans())
    def reopen(self, full: bool) -> None:
        self.ob.close()
        self.ob = Outbox(self.path, synchronous="FULL" if full else "NORMAL")

    @invariant()
    def stats_match(self) -> None:
        st_ = self.ob.stats()
        first = min(self.rows, default=None)
        assert st_ == OutboxStats(
            rows=len(self.rows),
            bytes=sum(len(body) for _t, body, _p in self.rows.values()),
            first_seq=first,
            last_seq=self.last_seq,
            oldest_created_ns=st_.oldest_created_ns,
        )
        assert (st_.oldest_created_ns is None) == (first is None)

    @invariant()
    def everything_pending_matches(self) -> None:
        got = [(r.seq, r.topic, r.body, r.priority) for r in self.ob.pending(limit=10_000)]
        assert got == [(s, *self.rows[s]) for s in sorted(self.rows)]


OutboxModel.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,  # real files on a shared, busy machine
    suppress_health_check=[HealthCheck.too_slow],
)
TestOutboxModel = OutboxModel.TestCase
