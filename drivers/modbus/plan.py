"""Read planning: a device's tags -> the fewest coalesced read requests (pure, no I/O).

Per table, tags are sorted by (address, end) and cut greedily into runs: a run grows
while its span stays within the request limit and the unused space before the next tag
is at most ``max_gap``. A run is feasible iff its every prefix is, so taking the longest
feasible run each time is optimal (the tests compare with a brute-force optimum).
Everything the driver needs per request - full tag names, decoders, the text of
error messages - is computed here, once.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..common import covered, partition
from .config import ModbusTag, ModbusTcpDevice
from .decode import BitDecoder, RegisterDecoder, layout
from .types import TABLES, Table, register_count

__all__ = ["ReadPlan", "Request", "compile_plan", "describe_plan", "partition"]


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


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """Everything one poll of a device does, compiled once."""

    device: str
    unit_id: int
    requests: tuple[Request, ...]
    tag_names: tuple[str, ...]
    """Full names of all tags, in config order."""


def compile_plan(device: ModbusTcpDevice) -> ReadPlan:
    """Compile a device's tags into the fewest requests under its limits."""
    prefix = device.name + "/"
    by_table: dict[Table, list[tuple[int, int, int, ModbusTag]]] = {}
    for index, tag in enumerate(device.tags):
        end = tag.address + register_count(tag.table, tag.type)
        by_table.setdefault(tag.table, []).append((tag.address, end, index, tag))
    requests: list[Request] = []
    for table in Table:  # a fixed table order keeps plans stable
        entries = sorted(by_table.get(table, ()), key=lambda x: x[:3])
        if not entries:
            continue
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
                )
            )
    return ReadPlan(
        device=device.name,
        unit_id=device.unit_id,
        requests=tuple(requests),
        tag_names=tuple(prefix + t.name for t in device.tags),
    )


def describe_plan(plan: ReadPlan, max_names: int = 8) -> list[str]:
    """One human line per request, e.g. ``holding 0..9 (10 regs): temp, pressure``."""
    cut = len(plan.device) + 1
    lines = []
    for r in plan.requests:
        unit = TABLES[r.table].unit if r.count > 1 else TABLES[r.table].unit[:-1]
        unused = f", {r.unused} unused" if r.unused else ""
        names = [t[cut:] for t in r.tags[:max_names]]
        more = f", ... (+{len(r.tags) - max_names} more)" if len(r.tags) > max_names else ""
        lines.append(f"{r.label} ({r.count} {unit}{unused}): {', '.join(names)}{more}")
    return lines
