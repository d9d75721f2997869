"""Read planning: merging per area/DB, PDU budgets and packing (properties + brute force)."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import drivers.s7.plan as plan_module
from drivers.s7 import DeviceConfig, ReadPlan, compile_plan, describe_plan
from drivers.s7.plan import max_item_bytes, pack


def device(*tags: dict[str, Any], **kw: Any) -> DeviceConfig:
    return DeviceConfig.model_validate(
        {"protocol": "s7", "name": "dev", "host": "127.0.0.1", "tags": list(tags), **kw}
    )


def t(name: str, address: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "address": address, **kw}


def ranges(plan: ReadPlan) -> list[tuple[str, int, int, int]]:
    return [(r.label.split()[0], r.start, r.size, len(r.tags)) for r in plan.ranges]


def test_contiguous_and_near_tags_merge_per_db_and_area() -> None:
    plan = compile_plan(
        device(
            t("a", "DB1.DBW0"),
            t("b", "DB1.DBD2", type="REAL"),
            t("c", "DB1.DBX20.1"),  # 14 unused bytes before it: within max_gap 16
            t("d", "DB2.DBW0"),
            t("m", "MW0"),
            t("i", "EB0"),
            t("q", "A0.0"),
        )
    )
    assert ranges(plan) == [
        ("DB1", 0, 21, 3),
        ("DB2", 0, 2, 1),
        ("M", 0, 2, 1),
        ("I", 0, 1, 1),
        ("Q", 0, 1, 1),
    ]
    assert plan.ranges[0].unused == 14
    assert len(plan.requests) == 1 and len(plan.requests[0].items) == 5


def test_gap_above_max_gap_splits() -> None:
    plan = compile_plan(device(t("a", "DB1.DBW0"), t("b", "DB1.DBW10"), max_gap=7))
    assert ranges(plan) == [("DB1", 0, 2, 1), ("DB1", 10, 2, 1)]
    assert len(plan.requests) == 1  # still one request: two items


def test_bits_of_one_byte_share_it() -> None:
    plan = compile_plan(device(*(t(f"b{i}", f"M0.{i}") for i in range(8)), t("w", "MW0")))
    assert ranges(plan) == [("M", 0, 2, 9)]


def test_long_runs_are_cut_at_tag_boundaries_to_fit_one_item() -> None:
    reals = [t(f"f{i}", f"DB1.DBD{4 * i}", type="REAL") for i in range(200)]
    plan = compile_plan(device(*reals))
    assert max_item_bytes(480) == 462
    assert [(r.start, r.size) for r in plan.ranges] == [(0, 460), (460, 340)]
    assert [len(q.items) for q in plan.requests] == [1, 1]  # 460 + 340 > one response


def test_tag_longer_than_one_item_is_read_in_parts() -> None:
    plan = compile_plan(device(t("s", "DB1.STRING0.254"), pdu_size=240))
    (r,) = plan.ranges
    assert r.size == 256
    parts = [(i.start, i.size, i.part, i.parts) for q in plan.requests for i in q.items]
    assert parts == [(0, 222, 1, 2), (222, 34, 2, 2)]
    assert [q.completes for q in plan.requests] == [(), (0,)]


def test_items_limit_and_request_budget() -> None:
    # 30 single-byte items 100 bytes apart: the request budget at PDU 240 allows 19
    # items, the item cap 20; the request size is 12 + 12 * items.
    tags = [t(f"b{i}", f"DB1.DBB{100 * i}") for i in range(30)]
    plan = compile_plan(device(*tags, pdu_size=240))
    assert [len(q.items) for q in plan.requests] == [19, 11]
    assert plan.requests[0].request_bytes == 12 + 12 * 19 == 240
    capped = compile_plan(device(*tags, max_items_per_request=5))
    assert [len(q.items) for q in capped.requests] == [5] * 6


def test_odd_item_goes_last_so_it_needs_no_fill_byte() -> None:
    plan = compile_plan(device(t("a", "DB1.DBB0"), t("b", "DB2.DBW0"), t("c", "DB3.DBW0")))
    (req,) = plan.requests
    assert [i.size for i in req.items] == [2, 2, 1]
    assert req.response_bytes == 14 + (4 + 2) + (4 + 2) + (4 + 1)


def test_fewest_requests_when_first_fit_is_not_optimal(monkeypatch: pytest.MonkeyPatch) -> None:
    # Responses carry 135 - 14 = 121 bytes of items (4 + size each): first-fit
    # decreasing puts 56+52 together and needs 3 requests; 42+52+26 and 56+14+44 fit 2.
    sizes, pdu = [38, 48, 22, 52, 10, 40], 135
    assert pack(sizes, pdu, 20) == [[0, 1, 2], [3, 4, 5]]
    monkeypatch.setattr(plan_module, "EXACT_LIMIT", 0)  # first-fit decreasing alone
    assert len(pack(sizes, pdu, 20)) == 3


def test_full_names_config_order_and_pdu_variants() -> None:
    plan = compile_plan(device(t("b", "MW2"), t("a", "MW0"), pdu_size=960))
    assert plan.tag_names == ("dev/b", "dev/a")
    assert plan.ranges[0].tags == ("dev/a", "dev/b")
    small = plan.for_pdu(240)
    assert small.pdu_size == 240 and small.tag_names == plan.tag_names
    assert plan.for_pdu(240) is small and plan.for_pdu(2000) is plan


def test_describe_plan_shows_items_and_budget() -> None:
    plan = compile_plan(
        device(
            t("temp", "DB1.DBD0", type="REAL"),
            t("pressure", "DB1.DBD8", type="REAL"),
            t("run", "M0.0"),
            *(t(f"x{i}", f"DB5.DBW{2 * i}") for i in range(6)),
        )
    )
    assert describe_plan(plan) == [
        "request 1/1: 3 items, request 48/480 B, response 51/480 B: "
        "DB1 bytes 0..11 (12 B, 4 unused: temp, pressure); "
        "DB5 bytes 0..11 (12 B: x0, x1, x2, x3, ... (+2 more)); "
        "M bytes 0..0 (1 B: run)"
    ]
    long = compile_plan(device(t("s", "DB1.STRING0.254"), pdu_size=240))
    assert describe_plan(long) == [
        "request 1/2: 1 item, request 24/240 B, response 240/240 B: "
        "DB1 bytes 0..255 part 1/2 (bytes 0..221) (222 B: s)",
        "request 2/2: 1 item, request 24/240 B, response 52/240 B: "
        "DB1 bytes 0..255 part 2/2 (bytes 222..255) (34 B: s)",
    ]


# --- properties -------------------------------------------------------------------------

TYPES = ["BOOL", "BYTE", "WORD", "INT", "DWORD", "DINT", "REAL", "LREAL", "STRING"]
LETTER = {"BOOL": "X", "BYTE": "B", "WORD": "W", "INT": "W", "DWORD": "D", "DINT": "D"}
LETTER |= {"REAL": "D", "LREAL": "B", "STRING": "B"}


@st.composite
def devices(draw: st.DrawFn) -> DeviceConfig:
    n = draw(st.integers(1, 40))
    tags = []
    for i in range(n):
        dtype = draw(st.sampled_from(TYPES))
        area = draw(st.sampled_from(["DB1", "DB2", "DB7", "M", "I", "Q"]))
        byte = draw(st.integers(0, 600))
        extra: dict[str, Any] = {}
        if dtype == "STRING":
            extra["length"] = draw(st.integers(1, 254))
        bit = f".{draw(st.integers(0, 7))}" if dtype == "BOOL" else ""
        letter = LETTER[dtype]
        if area.startswith("DB"):
            address = f"{area}.DB{letter}{byte}{bit}"
        else:
            address = f"{area}{'' if letter == 'X' else letter}{byte}{bit}"
        tags.append({"name": f"t{i}", "address": address, "type": dtype, **extra})
    return device(
        *tags,
        pdu_size=draw(st.sampled_from([64, 100, 240, 480, 960])),
        max_gap=draw(st.integers(0, 40)),
        max_items_per_request=draw(st.integers(1, 20)),
    )


def _response(sizes: list[int]) -> int:
    # Independent of the planner: header 12, function + count 2, per item a 4-byte
    # header and its data, and a fill byte after each odd-length item but the last.
    return 12 + 2 + sum(4 + s for s in sizes) + sum(s % 2 for s in sizes[:-1])


def _items(plan: ReadPlan) -> Iterator[tuple[int, Any]]:
    for k, q in enumerate(plan.requests):
        for item in q.items:
            yield k, item


@settings(max_examples=300, deadline=None)
@given(devices())
def test_no_request_exceeds_the_budget_and_every_tag_is_read_once(dev: DeviceConfig) -> None:
    plan = compile_plan(dev)
    pdu = dev.pdu_size
    for q in plan.requests:
        sizes = [i.size for i in q.items]
        assert 1 <= len(q.items) <= dev.max_items_per_request
        assert 10 + 2 + 12 * len(q.items) == q.request_bytes <= pdu
        assert _response(sizes) == q.response_bytes <= pdu
        assert len(q.tail) + 6 == q.request_bytes  # the PDU as built has that size
    # every tag is in exactly one range, inside its bytes
    names = [n for r in plan.ranges for n in r.tags]
    assert sorted(names) == sorted(plan.tag_names) and len(set(names)) == len(names)
    by_name = {f"dev/{x.name}": x for x in dev.tags}
    for r in plan.ranges:
        for n in r.tags:
            at, size = by_name[n].location, by_name[n].size
            assert (r.area, r.db) == (at.area, at.db)
            assert r.start <= at.byte and at.byte + size <= r.start + r.size
    # every range's parts are read exactly once, cover it, and it completes with its last
    parts: dict[int, list[tuple[int, int, int]]] = {}
    for k, item in _items(plan):
        parts.setdefault(item.range, []).append((item.start, item.size, k))
    assert sorted(parts) == list(range(len(plan.ranges)))
    for index, r in enumerate(plan.ranges):
        got = sorted(parts[index])
        assert got[0][0] == r.start and sum(s for _, s, _ in got) == r.size
        assert all(a + s == b for (a, s, _), (b, _, _) in pairwise(got))
        last = max(k for _, _, k in got)
        assert [k for k, q in enumerate(plan.requests) if index in q.completes] == [last]
        assert len(got) == 1 or r.size > max_item_bytes(pdu)  # parts only when needed


def _partitions(items: list[int]) -> Iterator[list[list[int]]]:
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for p in _partitions(rest):
        for k in range(len(p)):
            yield [*p[:k], [first, *p[k]], *p[k + 1 :]]
        yield [[first], *p]


def _fits(sizes: list[int], pdu: int, cap: int) -> bool:
    odd = sum(s % 2 for s in sizes)
    response = 14 + sum(4 + s for s in sizes) + max(0, odd - 1)  # best order: odd last
    return len(sizes) <= cap and 12 + 12 * len(sizes) <= pdu and response <= pdu


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(1, 60), min_size=1, max_size=7),
    st.integers(64, 160),
    st.integers(1, 6),
)
def test_packing_uses_the_fewest_requests_on_small_cases(
    sizes: list[int], pdu: int, cap: int
) -> None:
    """Against a brute force over every grouping of the items."""
    sizes = [min(s, max_item_bytes(pdu)) for s in sizes]
    bins = pack(sizes, pdu, cap)
    assert sorted(i for b in bins for i in b) == list(range(len(sizes)))
    assert all(_response([sizes[i] for i in b]) <= pdu for b in bins)
    best = min(
        len(p)
        for p in _partitions(list(range(len(sizes))))
        if all(_fits([sizes[i] for i in b], pdu, cap) for b in p)
    )
    assert len(bins) == best
