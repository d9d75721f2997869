"""Read planning: a device's tags -> multi-variable reads that fit the PDU (pure, no I/O).

1. **Merge.** Per area and DB, tags sorted by (start, end) are cut greedily into byte
   ranges: a range grows while the hole before the next tag is at most ``max_gap`` bytes
   and the range stays within one item's data limit (``pdu - 18``). A tag is never split
   between ranges; a single tag larger than the limit (a long STRING with a small PDU) is
   read in several items ("parts") and joined before decoding.
2. **Pack.** The items are packed into as few requests as possible (first-fit
   decreasing, then an exact search when that may not be optimal and there are at most
   12 items). Every request satisfies, with ``n`` items of ``len_i`` data bytes::

       n <= max_items_per_request (20)
       request  = 10 (header) + 2 (function, item count) + 12 * n            <= pdu
       response = 12 (header) + 2 (function, item count)
                  + sum(4 (item header) + len_i + fill_i)                     <= pdu

   where ``fill_i`` is 1 after an odd-length item except the last (an odd item is put
   last when there is one, so it needs no fill byte).

The plan is compiled for the requested ``pdu_size``; if the PLC grants a smaller PDU the
driver uses ``plan.for_pdu(granted)``, compiled once and cached.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..common import covered, partition
from .decode import RangeDecoder, field_of
from .types import AREAS, Area

if TYPE_CHECKING:
    from .config import DeviceConfig, S7Tag

__all__ = [
    "Item",
    "Range",
    "ReadPlan",
    "Request",
    "compile_plan",
    "describe_plan",
    "max_item_bytes",
    "pack",
    "partition",
    "request_bytes",
    "response_bytes",
    "single_tag_plan",
]

_AREA_ORDER = {Area.DB: 0, Area.M: 1, Area.I: 2, Area.Q: 3}
_READ_VAR = 0x04
_BYTE = 0x02  # transport size of each item: bytes
EXACT_LIMIT = 12
"""Items up to which the packer searches for the optimum when first-fit may miss it."""


def request_bytes(items: int) -> int:
    """Size of a read request PDU with ``items`` address specifications."""
    return 12 + 12 * items


def response_bytes(sizes: list[int] | tuple[int, ...]) -> int:
    """Size of the response PDU to items of these data sizes, in this order."""
    fills = sum(s & 1 for s in sizes[:-1])
    return 14 + sum(4 + s for s in sizes) + fills


def max_item_bytes(pdu: int) -> int:
    """Most data bytes one item can carry: the whole response is that one item."""
    return pdu - 18


def max_items(pdu: int, cap: int) -> int:
    return min(cap, (pdu - 12) // 12)


@dataclass(frozen=True, slots=True)
class Range:
    """Contiguous bytes of one area/DB holding one or more tags."""

    area: Area
    db: int
    start: int
    size: int
    tags: tuple[str, ...]
    """Full names ``"<device>/<tag>"`` of the tags inside."""
    unused: int
    """Bytes read only to bridge gaps between tags."""
    label: str
    """e.g. ``"DB10 bytes 0..461"``, for messages."""
    decoder: RangeDecoder
    members: tuple[int, ...]
    """Indices of its tags in the device config."""


@dataclass(frozen=True, slots=True)
class Item:
    """One address specification of a request: a range, or a part of a long one."""

    range: int
    """Index into ``ReadPlan.ranges``."""
    start: int
    size: int
    part: int
    """1-based part number; ``parts`` > 1 only for a range longer than one item."""
    parts: int
    spec: bytes
    """The 12 encoded bytes of the item in the request."""


@dataclass(frozen=True, slots=True)
class Request:
    """One multi-variable read and what its response completes."""

    items: tuple[Item, ...]
    head: bytes
    """PDU bytes before the 2-byte sequence number."""
    tail: bytes
    """PDU bytes after it."""
    request_bytes: int
    response_bytes: int
    completes: tuple[int, ...]
    """Ranges whose last part arrives with this response (decoded right after it)."""


@dataclass(frozen=True, slots=True, eq=False)
class ReadPlan:
    """Everything one poll of a device does, compiled once per PDU size."""

    device: str
    config: DeviceConfig
    pdu_size: int
    ranges: tuple[Range, ...]
    requests: tuple[Request, ...]
    tag_names: tuple[str, ...]
    """Full names of all tags, in config order."""
    _variants: dict[int, ReadPlan] = field(default_factory=dict, repr=False)
    _isolated: dict[int, ReadPlan] = field(default_factory=dict, repr=False)

    def for_pdu(self, pdu: int) -> ReadPlan:
        """The same tags packed for a (smaller) granted PDU; cached."""
        pdu = min(pdu, self.pdu_size)
        if pdu == self.pdu_size:
            return self
        plan = self._variants.get(pdu)
        if plan is None:
            plan = self._variants[pdu] = compile_plan(self.config, pdu_size=pdu)
        return plan

    def isolated(self, range_index: int) -> ReadPlan:
        """The tags of one range, each in its own item: read when the PLC refuses the
        merged range, to tell its good tags from its bad ones."""
        plan = self._isolated.get(range_index)
        if plan is None:
            tags = [(i, self.config.tags[i]) for i in self.ranges[range_index].members]
            plan = _compile(self.config, tags, self.pdu_size, max_gap=None)
            self._isolated[range_index] = plan
        return plan


def pack(sizes: list[int], pdu: int, items_cap: int) -> list[list[int]]:
    """Pack items of these data sizes into the fewest requests; returns index lists.

    Each list is in wire order (ascending index, one odd-sized item moved last).
    """
    n_max = max_items(pdu, items_cap)
    if n_max < 1 or any(s > max_item_bytes(pdu) for s in sizes):
        raise ValueError(f"an item does not fit a PDU of {pdu} bytes")
    weight = [4 + s + (s & 1) for s in sizes]  # with its fill byte; one odd item saves it

    def fits(total: int, count: int, odd: int, i: int) -> bool:
        odd += sizes[i] & 1
        return count < n_max and 14 + total + weight[i] - (1 if odd else 0) <= pdu

    order = sorted(range(len(sizes)), key=lambda i: (-weight[i], i))
    bins: list[list[int]] = []
    state: list[list[int]] = []  # [weight total, count, odd count] per bin
    for i in order:  # first-fit decreasing
        for b, (total, count, odd) in enumerate(state):
            if fits(total, count, odd, i):
                bins[b].append(i)
                state[b] = [total + weight[i], count + 1, odd + (sizes[i] & 1)]
                break
        else:
            bins.append([i])
            state.append([weight[i], 1, sizes[i] & 1])
    lower = max(math.ceil(sum(weight) / (pdu - 13)), math.ceil(len(sizes) / n_max), 0)
    if len(bins) > lower and len(sizes) <= EXACT_LIMIT:
        bins = _exact(order, weight, sizes, fits, bins, lower)
    return sorted((_wire_order(b, sizes) for b in bins), key=lambda b: min(b))


def _exact(
    order: list[int],
    weight: list[int],
    sizes: list[int],
    fits: Callable[[int, int, int, int], bool],
    best: list[list[int]],
    lower: int,
) -> list[list[int]]:
    """Depth-first search for fewer bins than ``best``; bounded to stay cheap."""
    budget = [200_000]
    bins: list[list[int]] = []
    state: list[list[int]] = []
    result = [best]

    def dfs(k: int) -> None:
        budget[0] -= 1
        if len(bins) >= len(result[0]) or budget[0] < 0 or len(result[0]) == lower:
            return
        if k == len(order):
            result[0] = [list(b) for b in bins]
            return
        i = order[k]
        seen: set[tuple[int, int, bool]] = set()
        for b, (total, count, odd) in enumerate(state):
            key = (total, count, odd > 0)
            if key in seen or not fits(total, count, odd, i):
                continue
            seen.add(key)  # bins in the same state are interchangeable
            bins[b].append(i)
            state[b] = [total + weight[i], count + 1, odd + (sizes[i] & 1)]
            dfs(k + 1)
            bins[b].pop()
            state[b] = [total, count, odd]
        if len(bins) + 1 < len(result[0]):
            bins.append([i])
            state.append([weight[i], 1, sizes[i] & 1])
            dfs(k + 1)
            bins.pop()
            state.pop()

    dfs(0)
    return result[0]


def _wire_order(members: list[int], sizes: list[int]) -> list[int]:
    out = sorted(members)
    odd = [i for i in out if sizes[i] & 1]
    if odd:  # the last item needs no fill byte
        out.remove(odd[-1])
        out.append(odd[-1])
    return out


def _spec(area: Area, db: int, start: int, size: int) -> bytes:
    # S7ANY address: 0x12, length 10, syntax id 0x10, transport size, count, DB, area,
    # then the start as a 24-bit bit address.
    head = struct.pack(">BBBBHHB", 0x12, 0x0A, 0x10, _BYTE, size, db, AREAS[area].code)
    return head + (start * 8).to_bytes(3, "big")


def _label(area: Area, db: int, start: int, end: int) -> str:
    where = f"DB{db}" if area is Area.DB else area.value
    return f"{where} bytes {start}..{end - 1}"


def compile_plan(device: DeviceConfig, pdu_size: int | None = None) -> ReadPlan:
    """Compile a device's tags into ranges and PDU-sized requests."""
    return _compile(
        device, list(enumerate(device.tags)), pdu_size or device.pdu_size, device.max_gap
    )


def single_tag_plan(device: DeviceConfig, tag: S7Tag, pdu_size: int) -> ReadPlan:
    """One tag alone, for the PDU the PLC granted (the read-back after a write)."""
    return _compile(device, [(device.tags.index(tag), tag)], pdu_size, max_gap=None)


def _compile(
    device: DeviceConfig, tags: list[tuple[int, S7Tag]], pdu: int, max_gap: int | None
) -> ReadPlan:
    """``max_gap`` None: every tag in its own range, even where tags overlap."""
    limit = max_item_bytes(pdu)
    if limit < 1 or max_items(pdu, device.max_items_per_request) < 1:
        raise ValueError(f"a PDU of {pdu} bytes is too small to read anything (at least 24)")
    prefix = device.name + "/"
    by_block: dict[tuple[Area, int], list[tuple[int, int, int, S7Tag]]] = {}
    for index, tag in tags:
        at = tag.location
        by_block.setdefault((at.area, at.db), []).append((at.byte, at.byte + tag.size, index, tag))
    ranges: list[Range] = []
    for area, db in sorted(by_block, key=lambda k: (_AREA_ORDER[k[0]], k[1])):
        entries = sorted(by_block[area, db], key=lambda x: x[:3])
        spans = [(s, e) for s, e, _, _ in entries]
        runs = (
            [(i, i + 1) for i in range(len(spans))]
            if max_gap is None
            else partition(spans, limit, max_gap)
        )
        for first, last in runs:
            run = entries[first:last]
            start = run[0][0]
            end = max(e for _, e, _, _ in run)
            fields = [field_of(t, prefix + t.name, s - start) for s, _, _, t in run]
            ranges.append(
                Range(
                    area=area,
                    db=db,
                    start=start,
                    size=end - start,
                    tags=tuple(f.name for f in fields),
                    unused=end - start - covered(spans[first:last]),
                    label=_label(area, db, start, end),
                    decoder=RangeDecoder.compile(end - start, fields),
                    members=tuple(i for _, _, i, _ in run),
                )
            )
    items: list[Item] = []
    for r_index, r in enumerate(ranges):
        parts = math.ceil(r.size / limit)
        for p in range(parts):
            start = r.start + p * limit
            size = min(limit, r.start + r.size - start)
            items.append(Item(r_index, start, size, p + 1, parts, _spec(r.area, r.db, start, size)))
    bins = pack([i.size for i in items], pdu, device.max_items_per_request)
    last_request: dict[int, int] = {}
    for b, members in enumerate(bins):
        for i in members:
            last_request[items[i].range] = max(b, last_request.get(items[i].range, b))
    requests = []
    for b, members in enumerate(bins):
        chosen = tuple(items[i] for i in members)
        param = bytes([_READ_VAR, len(chosen)]) + b"".join(i.spec for i in chosen)
        requests.append(
            Request(
                items=chosen,
                head=b"\x32\x01\x00\x00",  # protocol id, job request, reserved
                tail=struct.pack(">HH", len(param), 0) + param,
                request_bytes=request_bytes(len(chosen)),
                response_bytes=response_bytes([i.size for i in chosen]),
                completes=tuple(r for r in sorted(last_request) if last_request[r] == b),
            )
        )
    return ReadPlan(
        device=device.name,
        config=device,
        pdu_size=pdu,
        ranges=tuple(ranges),
        requests=tuple(requests),
        tag_names=tuple(prefix + t.name for _, t in tags),
    )


def describe_plan(plan: ReadPlan, max_names: int = 4) -> list[str]:
    """One human line per request: its items, their tags and the PDU budget, e.g.
    ``request 1/1: 2 items, request 36/480 B, response 30/480 B: DB1 bytes 0..7 (8 B:
    temp, pressure); M bytes 0..0 (1 B: run)``."""
    cut = len(plan.device) + 1
    n, pdu = len(plan.requests), plan.pdu_size
    lines = []
    for k, req in enumerate(plan.requests, 1):
        parts = []
        for item in req.items:
            r = plan.ranges[item.range]
            where = r.label
            if item.parts > 1:
                where += f" part {item.part}/{item.parts} (bytes {item.start}.."
                where += f"{item.start + item.size - 1})"
            unused = f", {r.unused} unused" if r.unused and item.part == 1 else ""
            names = [t[cut:] for t in r.tags[:max_names]]
            if len(r.tags) > max_names:
                names.append(f"... (+{len(r.tags) - max_names} more)")
            parts.append(f"{where} ({item.size} B{unused}: {', '.join(names)})")
        count = f"{len(req.items)} item{'s' if len(req.items) > 1 else ''}"
        lines.append(
            f"request {k}/{n}: {count}, request {req.request_bytes}/{pdu} B, "
            f"response {req.response_bytes}/{pdu} B: " + "; ".join(parts)
        )
    return lines
