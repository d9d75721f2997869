"""What the receiver knows about one gateway, between messages and across restarts.

Everything classification depends on is here (or in the store's tables of messages, keys
and audit entries), and it is saved in the same transaction as the message that changed
it: a restarted receiver, or another receiver sharing the store, classifies the next
message exactly as this one would have.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import cbor2

from security.checkpoint import ZERO_HASH, MerkleFrontier, genesis_head
from security.strictcbor import strict_loads

from .intervals import Intervals

STATE_VERSION = 2  # 2: "floor" is null until a boot folds (1 wrote [0, 0] for that)
MAX_BOOTS = 256  # boots kept in detail; older ones fold into one floor


@dataclass(slots=True)
class LogWitness:
    """The witness of one audit log: the state after the last entry it checked, in file
    order. Entries that arrive ahead of a hole wait in the store until the hole fills."""

    next_offset: int  # byte offset of the next entry to check
    size: int  # records checked
    head: bytes  # hash of the last record (the log's genesis hash before the first)
    cp_prev: bytes  # hash of the last checkpoint (zeros before the first)
    frontier: list[bytes]  # RFC 9162 compact range over the records
    started_at: int  # offset where witnessing began (0 unless enrolled late)
    checkpoints: int = 0
    max_cp_size: int = 0  # the largest size a valid checkpoint of this log stated
    last_cp_ts: int = 0

    @classmethod
    def at_genesis(cls, log_id: bytes) -> LogWitness:
        return cls(0, 0, genesis_head(log_id), ZERO_HASH, [], 0)

    def merkle(self) -> MerkleFrontier:
        m = MerkleFrontier()
        m.size, m._stack = self.size, list(self.frontier)
        return m

    def to_list(self) -> list[Any]:
        return [
            self.next_offset,
            self.size,
            self.head,
            self.cp_prev,
            self.frontier,
            self.started_at,
            self.checkpoints,
            self.max_cp_size,
            self.last_cp_ts,
        ]

    @classmethod
    def from_list(cls, v: list[Any]) -> LogWitness:
        return cls(v[0], v[1], v[2], v[3], list(v[4]), v[5], v[6], v[7], v[8])


@dataclass(slots=True)
class GatewayState:
    """Per-gateway classification state; serialised whole (it stays small: a few intervals,
    at most MAX_BOOTS boots, one compact Merkle range per audit log)."""

    seen: Intervals = field(default_factory=Intervals)  # delivered, or explained by a notice
    explained: Intervals = field(default_factory=Intervals)  # declared dropped by notices
    boots: dict[int, list[int]] = field(default_factory=dict)  # boot -> [lowest, highest] seq
    # (boot, highest seq) folded from forgotten boots; None until a boot is folded (a
    # folded boot 0 is a floor like any other).
    boot_floor: tuple[int, int] | None = None
    logs: dict[bytes, LogWitness] = field(default_factory=dict)
    current_log: bytes | None = None

    # -- boots ------------------------------------------------------------------------

    @property
    def boot(self) -> int:
        """The newest boot seen."""
        return max(self.boots, default=self.boot_floor[0] if self.boot_floor else 0)

    def order_problem(self, boot: int, seq: int) -> str | None:
        """Why (boot, seq) cannot come from a gateway whose seqs only ever grow, if so.

        Every seq of boot N is below every seq of boot N+1, so a message must sit between
        the seqs of the boots around it; else it is a replay, or the gateway's state was
        rolled back (restored from a copy) and it is reusing seqs."""
        order = sorted(self.boots)
        i = bisect.bisect_left(order, boot)
        lower = order[i - 1] if i > 0 else None
        j = i + 1 if i < len(order) and order[i] == boot else i
        higher = order[j] if j < len(order) else None
        if lower is not None and self.boots[lower][1] >= seq:
            return (
                f"seq {seq} of boot {boot} is not above seq {self.boots[lower][1]} of the "
                f"earlier boot {lower}: the gateway's state was rolled back, or a replay"
            )
        if lower is None and self.boot_floor is not None:
            # Below every tracked boot: the folded boots are the lower neighbour.
            floor_boot, floor_seq = self.boot_floor
            if boot <= floor_boot:
                return f"boot {boot} is older than the boots this receiver still tracks"
            if floor_seq >= seq:
                return (
                    f"seq {seq} of boot {boot} is not above seq {floor_seq} of the earlier "
                    f"boots (up to {floor_boot}): the gateway's state was rolled back, or a "
                    "replay"
                )
        if higher is not None and self.boots[higher][0] <= seq:
            return (
                f"seq {seq} of boot {boot} is not below seq {self.boots[higher][0]} of the "
                f"later boot {higher}: a replay of an old boot's message"
            )
        return None

    def note_boot(self, boot: int, seq: int) -> None:
        r = self.boots.get(boot)
        if r is None:
            self.boots[boot] = [seq, seq]
            if len(self.boots) > MAX_BOOTS:
                oldest = min(self.boots)
                high = self.boots.pop(oldest)[1]
                if self.boot_floor is not None:
                    high = max(high, self.boot_floor[1])
                self.boot_floor = (oldest, high)
        else:
            r[0], r[1] = min(r[0], seq), max(r[1], seq)

    # -- storage ----------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        return bytes(
            cbor2.dumps(
                {
                    "v": STATE_VERSION,
                    "seen": self.seen.flat(),
                    "explained": self.explained.flat(),
                    "boots": [[b, lo, hi] for b, (lo, hi) in sorted(self.boots.items())],
                    "floor": list(self.boot_floor) if self.boot_floor else None,
                    "logs": [[k, w.to_list()] for k, w in self.logs.items()],
                    "current_log": self.current_log,
                }
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> GatewayState:
        m = strict_loads(data, max_depth=6)
        v = m.get("v")
        if v not in (1, STATE_VERSION):
            raise ValueError(f"receiver state version {v!r} is not {STATE_VERSION}")
        f = m["floor"]
        legacy_none = v == 1 and f == [0, 0]
        floor = None if f is None or legacy_none else (f[0], f[1])
        return cls(
            seen=Intervals.from_flat(m["seen"]),
            explained=Intervals.from_flat(m["explained"]),
            boots={b: [lo, hi] for b, lo, hi in m["boots"]},
            boot_floor=floor,
            logs={k: LogWitness.from_list(w) for k, w in m["logs"]},
            current_log=m["current_log"],
        )
