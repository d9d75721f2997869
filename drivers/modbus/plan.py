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
"""

from __future__ import annotations

from dataclasses import dataclass

from ..common import covered, partition
from .config import ModbusDevice, ModbusTag
from .decode import BitDecoder, RegisterDecoder, layout
from .types import TABLES, Table

__all__ = ["ReadPlan", "Request", "compile_plan", "describe_plan", "partition", "summarize_plan"]


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


def compile_plan(device: ModbusDevice) -> ReadPlan:
    """Compile a device's tags into the fewest requests under its limits."""
    prefix = device.name + "/"
    base = device.poll_interval_ms
    groups: dict[tuple[int, Table], list[tuple[int, int, int, ModbusTag]]] = {}
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
        for first, last in partition(spans, limit, device.max_gap):
            run = entries[first:last]
            address = run[0][0]
            count = max(e for _, e, _, _ in run) - address
            layouts = [layout(t, device, prefix + t.name, a - address) for a, _, _, t in run]
            compile_decoder = BitDecoder.compile if spec.bits else RegisterDecoder.compile
            requests.append(
                Request(
                    table=table,
                    address=address,
                    count=count,
                    tags=tuple(x.name for x in layouts),
                    unused=count - covered(spans[first:last]),
                    label=f"{table.value} {address}..{address + count - 1}",
                    decoder=compile_decoder(count, layouts),
                    spans=tuple((a - address, e - a) for a, e, _, _ in run),
                    every=every,
                )
            )
    return ReadPlan(
        device=device.name,
        unit_id=device.unit_id,
        requests=tuple(requests),
        tag_names=tuple(prefix + t.name for t in device.tags),
        interval_ms=base,
        uniform=all(r.every == 1 for r in requests),
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
