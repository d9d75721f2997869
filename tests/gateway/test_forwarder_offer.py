"""When the forwarder takes the rows the pipeline offers, and when it leaves them to the
fetch: exactly the rows waiting, never more than the window, and the cursors moved past
them (a real SQLite outbox; the rules checked one by one, each found by a mutant that
the end-to-end offer tests let through)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from buffer import NORMAL, URGENT, OutboxRow
from gateway.config import UplinkConfig
from gateway.forwarder import Forwarder
from gateway.outbox_thread import OutboxThread

TOPIC = "edgegw/gw1/telemetry"


class Rig:
    """A forwarder on a real outbox holding rows 1..n, as if a session had fetched up to
    ``upto`` (the test then commits and offers rows by hand)."""

    def __init__(self, tmp: Path, upto: int) -> None:
        self.ot = OutboxThread(tmp / "outbox.db")
        self.ob: Any = asyncio.run(self.ot.open())
        for _ in range(upto):
            self.commit()
        self.fwd = Forwarder(UplinkConfig(host="::1", port=1), "t1", self.ot)
        self.fwd._fetched_upto = upto
        self.fwd._cursors.live = upto

    def commit(self, priority: int = NORMAL) -> OutboxRow:
        seq = self.ob.append(TOPIC, lambda seq: b"%d" % seq, priority=priority, points=1)
        return OutboxRow(seq, TOPIC, b"%d" % seq, priority, 0, 1)

    def take(self, *offers: list[OutboxRow], room: int = 10) -> list[int]:
        for rows in offers:
            self.fwd.offer(rows)
        return [r.seq for r in self.fwd._take_offered(self.ob, room)]

    def close(self) -> None:
        asyncio.run(self.ot.close())


def test_the_rows_waiting_offered_in_two_parts_are_taken_and_the_cursors_move_past_them(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, upto=4)
    try:
        assert rig.take([rig.commit()], [rig.commit()]) == [5, 6]  # two offers, both held
        assert rig.fwd._fetched_upto == 6 and rig.fwd._cursors.live == 6
        assert rig.fwd._offered == []
        # the next fetch on this session starts after them: no row twice, no error
        seven = rig.commit()
        assert [r.seq for r in rig.fwd._next_rows(10)] == [seven.seq]
    finally:
        rig.close()


def test_offered_rows_with_a_row_between_them_not_offered_are_left_to_the_fetch(
    tmp_path: Path,
) -> None:
    """5 and 7 offered, 6 (an urgent notice) committed between them by someone else:
    taking 5 and 7 would move the cursor past 6 and strand it for this session."""
    rig = Rig(tmp_path, upto=4)
    try:
        five = rig.commit()
        rig.commit(URGENT)
        assert rig.take([five], [rig.commit()]) == []
        assert rig.fwd._fetched_upto == 4
        assert [r.seq for r in rig.fwd._next_rows(10)] == [6, 5, 7]
    finally:
        rig.close()


def test_offered_rows_are_taken_only_when_they_fit_the_window(tmp_path: Path) -> None:
    rig = Rig(tmp_path, upto=4)
    try:
        rows = [rig.commit(), rig.commit()]
        assert rig.take(rows, room=1) == []  # more than the window: the fetch takes 1
        assert rig.fwd._fetched_upto == 4
        assert rig.take(rows, room=2) == [5, 6]  # exactly the window
    finally:
        rig.close()


def test_offered_rows_already_fetched_are_nothing_to_take(tmp_path: Path) -> None:
    """The fetch got to them first (the pump woke before the offer came): nothing is
    taken, nothing raised, and they are not sent a second time."""
    rig = Rig(tmp_path, upto=4)
    try:
        stale = OutboxRow(4, TOPIC, b"4", NORMAL, 0, 1)
        assert rig.take([stale]) == []
        assert rig.take([stale], room=0) == []
        assert rig.fwd._fetched_upto == 4
        # held with a row after it that was not fetched: that one is taken
        assert rig.take([stale], [rig.commit()]) == [5]
    finally:
        rig.close()
