"""Read planning: a device's tags -> the fewest coalesced read requests (pure, no I/O).

Tags are grouped by poll interval and table; each group is sorted by (address, end) and
cut greedily into runs: a run grows while its span stays within the request limit and
the unused space before the next tag is at most ``max_gap``. A run is feasible iff its
every prefix is, so taking the longest feasible run each time is optimal (the tests
compare with a brute-force optimum). Everything the driver needs per request - full
tag names, decoders, the text of error messages - is computed here, once.

Per-tag poll intervals live in the plan, not in the gateway: the gateway polls the
device at its fastest interval (``device.poll_interval_ms`` after loading), and a
request whose tags are N times slower is due every N-th cycle (``ReadPlan.due``). Tags of
different intervals never share a request.

Barriers are what the driver learned about a device (``learn.py``): address ranges a
request of two or more tags must not touch, because the device refused such a read
(Modbus exception 2 or 3 for an unmapped address). ``split_request`` halves a refused
request for the driver's bisection.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..common import covered, partition
from .decode import BitDecoder, RegisterDecoder, layout
from .types import TABLES, Table

if TYPE_CHECKING:
    from .config import ModbusDevice, ModbusTag

__all__ = [
    "Barrier",
    "ReadPlan",
    "Request",
    "compile_plan",
    "describe_plan",
    "partition",
    "split_request",
    "summarize_plan",
]

Barrier = tuple[Table, int, int]
"""``(table, lo, hi)``: a request of two or more tags may not read across ``[lo, hi)``:
it may neither read an address in it nor, when ``lo == hi``, both ``lo - 1`` and ``lo``.
A single tag is always read (a tag is never split)."""

_Entry = tuple[int, int, int, "ModbusTag"]  # start, end, index in device.tags, tag


@dataclass(frozen=True, slots=True)
class Request:
    """One Modbus read and how to decode its response."""

    table: Table
    address: int
    count: int
    tags: tuple[str, ...]
    """Full names ``"<device>/<tag>"`` of the tags this request reads."""
    unused: int
    """Registers (or bits) read only to bridge gaps between tags."""
    label: str
    """e.g. ``"holding 100..109"``, for messages."""
    decoder: RegisterDecoder | BitDecoder
    spans: tuple[tuple[int, int], ...] = ()
    """(offset in the response, registers or bits) of each tag, in the order of ``tags``."""
    every: int = 1
    """Due every N-th cycle of the device (1: every cycle)."""
    indexes: tuple[int, ...] = ()
    """Index in ``device.tags`` of each tag, in the order of ``tags`` (for splitting)."""


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """Everything one poll of a device does, compiled once."""

    device: str
    unit_id: int
    requests: tuple[Request, ...]
    tag_names: tuple[str, ...]
    """Full names of all tags, in config order."""
    interval_ms: int = 1000
    """The cycle: the device's fastest interval."""
    uniform: bool = True
    """Every request is due every cycle."""

    def due(self, cycle: int) -> tuple[Request, ...]:
        """The requests to read at cycle ``cycle`` (0, 1, 2, ...): all of them at 0."""
        if self.uniform:
            return self.requests
        return tuple(r for r in self.requests if cycle % r.every == 0)


def full_name(prefix: str, tag: str) -> str:
    """``"<device>/<tag>"``, one string object however many plans and decoders name it
    (interned: at 10,000 tags three copies of every name were 1.3 MiB)."""
    return sys.intern(prefix + tag)


def compile_plan(device: ModbusDevice, barriers: Iterable[Barrier] = ()) -> ReadPlan:
    """Compile a device's tags into the fewest requests under its limits and ``barriers``."""
    prefix = device.name + "/"
    base = device.poll_interval_ms
    blocked: dict[Table, list[tuple[int, int]]] = {}
    for table, lo, hi in barriers:
        blocked.setdefault(table, []).append((lo, hi))
    groups: dict[tuple[int, Table], list[_Entry]] = {}
    for index, tag in enumerate(device.tags):
        start = tag.address
        assert start is not None  # set by validation, from address or register
        every = (tag.poll_interval_ms or base) // base
        entry = (start, start + tag.registers, index, tag)
        groups.setdefault((every, tag.table), []).append(entry)
    order = {t: i for i, t in enumerate(Table)}  # a fixed table order keeps plans stable
    requests: list[Request] = []
    for every, table in sorted(groups, key=lambda k: (k[0], order[k[1]])):
        entries = sorted(groups[every, table], key=lambda x: x[:3])
        spec = TABLES[table]
        limit = device.max_bits_per_request if spec.bits else device.max_registers_per_request
        spans = [(a, e) for a, e, _, _ in entries]
        walls = blocked.get(table)
        joinable = None
        if walls:

            def joinable(start: int, end: int, walls: list[tuple[int, int]] = walls) -> bool:
                return not any(start < hi and end > lo for lo, hi in walls)

        for first, last in partition(spans, limit, device.max_gap, joinable):
            requests.append(_request(device, prefix, table, entries[first:last], every))
    return ReadPlan(
        device=device.name,
        unit_id=device.unit_id,
        requests=tuple(requests),
        tag_names=tuple(full_name(prefix, t.name) for t in device.tags),
        interval_ms=base,
        uniform=all(r.every == 1 for r in requests),
    )


def _request(
    device: ModbusDevice, prefix: str, table: Table, run: list[_Entry], every: int
) -> Request:
    """One request reading ``run`` (entries sorted by start), with its decoder."""
    address = run[0][0]
    count = max(e for _, e, _, _ in run) - address
    layouts = [layout(t, device, full_name(prefix, t.name), a - address) for a, _, _, t in run]
    compile_decoder = BitDecoder.compile if TABLES[table].bits else RegisterDecoder.compile
    return Request(
        table=table,
        address=address,
        count=count,
        tags=tuple(x.name for x in layouts),
        unused=count - covered([(a, e) for a, e, _, _ in run]),
        label=f"{table.value} {address}..{address + count - 1}",
        decoder=compile_decoder(count, layouts),
        spans=tuple((a - address, e - a) for a, e, _, _ in run),
        every=every,
        indexes=tuple(i for _, _, i, _ in run),
    )


def split_request(device: ModbusDevice, req: Request) -> tuple[Request, Request, Barrier]:
    """Halve a request of two or more tags at the tag nearest the middle of its span,
    and the barrier that keeps the halves apart in later plans (what lies between
    them: the unused addresses, or the boundary of two adjacent tags)."""
    assert len(req.indexes) > 1, "a single tag is never split"
    prefix = device.name + "/"
    run = sorted(
        (t.address or 0, (t.address or 0) + t.registers, i, t)
        for i in req.indexes
        for t in (device.tags[i],)
    )
    middle = req.address + req.count / 2
    k = sum(1 for start, _, _, _ in run if start < middle)
    k = min(max(k, 1), len(run) - 1)
    left, right = run[:k], run[k:]
    end_left, start_right = max(e for _, e, _, _ in left), right[0][0]
    lo, hi = min(end_left, start_right), max(end_left, start_right)
    return (
        _request(device, prefix, req.table, left, req.every),
        _request(device, prefix, req.table, right, req.every),
        (req.table, lo, hi),
    )


def describe_plan(plan: ReadPlan, max_names: int = 8) -> list[str]:
    """One human line per request, e.g. ``holding 0..9 (10 regs): temp, pressure``."""
    cut = len(plan.device) + 1
    lines = []
    for r in plan.requests:
        unit = TABLES[r.table].unit if r.count > 1 else TABLES[r.table].unit[:-1]
        unused = f", {r.unused} unused" if r.unused else ""
        every = f", every {r.every * plan.interval_ms} ms" if not plan.uniform else ""
        names = [t[cut:] for t in r.tags[:max_names]]
        more = f", ... (+{len(r.tags) - max_names} more)" if len(r.tags) > max_names else ""
        lines.append(f"{r.label} ({r.count} {unit}{unused}{every}): {', '.join(names)}{more}")
    return lines


def summarize_plan(plan: ReadPlan) -> str:
    """What coalescing saves, against one request per tag, e.g.
    ``14 tags in 3 requests per cycle: 11 fewer than one request per tag (79%)``."""
    tags, n = len(plan.tag_names), len(plan.requests)
    if plan.uniform:
        saved = tags - n
        return (
            f"{tags} tags in {n} request(s) per cycle: {saved} fewer than one request per "
            f"tag ({saved / tags:.0%})"
        )
    per_s = sum(1000 / (r.every * plan.interval_ms) for r in plan.requests)
    naive = sum(len(r.tags) * 1000 / (r.every * plan.interval_ms) for r in plan.requests)
    return (
        f"{tags} tags in {n} request(s), {per_s:.3g} requests/s at a {plan.interval_ms} ms "
        f"cycle: one request per tag would be {naive:.3g}/s ({1 - per_s / naive:.0%} saved)"
    )
