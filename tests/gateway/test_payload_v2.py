"""Payload version 2 (readings in columns): what the gateway encodes is what the receiver
decodes, reading for reading, as version 1 would carry it; every malformed column is
refused naming the field; the pipeline's size-bounded windows hold in both versions."""

from __future__ import annotations

import asyncio
import math
import random
import re
import struct
import time
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.contract import Batch
from gateway.outbox_thread import OutboxThread
from gateway.pipeline import Pipeline
from gateway.receiver import schema
from gateway.receiver.schema import PayloadError
from gateway.wire import encode_payload
from security import DeviceKey
from security.cose import parse1

TS = 1_700_000_000_000_000_000
DOC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"


def doc_readings() -> Any:
    """The ``readings(body)`` of docs/wire-format.md, run as written."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    (code,) = [b for b in blocks if "def readings(" in b]
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    return namespace["readings"]


READINGS = doc_readings()


def norm(r: Any) -> tuple[Any, ...]:
    """A reading as the platform stores it: (tag, ts, value type and bits, quality, reason,
    server_ts); a missing reason or server_ts is null. Floats compare bit for bit (-0.0 is
    not 0.0), except that every NaN is one: version 2 sends the deterministic NaN."""
    v = r[2]
    if type(v) is float:
        value: Any = ("float", "nan" if math.isnan(v) else struct.pack(">d", v))
    else:
        value = (type(v).__name__, v)
    reason = r[4] if len(r) > 4 else None
    server = r[5] if len(r) > 5 else None
    return (r[0], r[1], value, r[3], reason, server)


def decode(groups: list[list[Any]], version: int) -> schema.Payload:
    body = encode_payload(
        gw="gw1", seq=1, boot=1, kind="telemetry", t_ns=1, groups=groups, version=version
    )
    return schema.decode(body)


values = st.one_of(
    st.floats(width=32),
    st.floats(),
    st.integers(-(2**63), 2**64 - 1),
    st.booleans(),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.none(),
)
reading = st.tuples(
    st.sampled_from(["plc1/a", "plc1/b", "plc1/ab", "x", "plc2/a", "é/ü"]),
    st.integers(0, 2**64 - 1),
    values,
    st.integers(0, 4),
).flatmap(
    lambda r: st.one_of(
        st.just(r),
        st.tuples(st.one_of(st.none(), st.text(min_size=1, max_size=8))).map(lambda x: r + x),
        st.tuples(
            st.one_of(st.none(), st.text(min_size=1, max_size=8)),
            st.one_of(st.none(), st.integers(0, 2**64 - 1)),
        ).map(lambda x: r + x),
    )
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(reading, max_size=6), max_size=5))
def test_version_2_carries_exactly_what_version_1_does(groups: list[list[Any]]) -> None:
    flat = [norm(r) for g in groups for r in g]
    v1, v2 = decode(groups, 1), decode(groups, 2)
    assert [norm(r) for r in v1.readings] == flat
    assert [norm(r) for r in v2.readings] == flat
    assert v1.tags == v2.tags == list(dict.fromkeys(r[0] for r in flat))
    assert (v1.version, v2.version) == (1, 2)
    # the documented recipe, with a plain CBOR decoder, reads the same
    for version in (1, 2):
        body = cbor2.loads(
            encode_payload(gw="g", seq=1, boot=1, kind="telemetry", t_ns=1, groups=groups,
                           version=version)
        )  # fmt: skip
        assert [norm(r) for r in READINGS(body)] == flat


def test_a_device_read_is_one_block_with_one_timestamp_and_quality() -> None:
    names = [f"boiler/t{i:02d}" for i in range(20)]
    g1 = [(n, TS, float(i), 0) for i, n in enumerate(names)]
    g2 = [(n, TS + 10**9, float(i) + 0.5, 0) for i, n in enumerate(names)]
    bad = [(n, TS + 2, None, 1, "timeout") for n in names[:3]]
    body = cbor2.loads(
        encode_payload(gw="g", seq=1, boot=1, kind="telemetry", t_ns=1, groups=[g1, g2, bad])
    )
    assert body["v"] == 2 and "r" not in body
    # each tag named once: the set is shared by both reads, the bad read has its own
    assert body["tags"] == [
        ["boiler/t", [f"{i:02d}" for i in range(20)]],
        ["boiler/t0", ["0", "1", "2"]],
    ]
    assert body["b"] == [
        [0, TS, [float(i) for i in range(20)], 0],
        [0, TS + 10**9, [i + 0.5 for i in range(20)], 0],
        [1, TS + 2, [None] * 3, 1, "timeout"],
    ]


def test_a_read_of_several_requests_keeps_one_timestamp_a_block() -> None:
    """A device read of 2 requests (e.g. 200 registers) has 2 timestamps: 2 blocks, not a
    timestamp per reading; readings whose timestamps differ all over keep one each."""
    read = [(f"d/t{i:03d}", TS + (i >= 60), float(i), 0) for i in range(100)]
    body = cbor2.loads(
        encode_payload(gw="g", seq=1, boot=1, kind="telemetry", t_ns=1, groups=[read])
    )
    assert [(b[0], b[1], len(b[2])) for b in body["b"]] == [(0, TS, 60), (1, TS + 1, 40)]
    scattered = [(f"d/t{i}", TS + i % 3, float(i), 0) for i in range(12)]
    body = cbor2.loads(
        encode_payload(gw="g", seq=1, boot=1, kind="telemetry", t_ns=1, readings=scattered)
    )
    assert body["b"][0][1] == [TS + i % 3 for i in range(12)]
    for groups in ([read], [scattered]):
        payload = encode_payload(gw="g", seq=1, boot=1, kind="telemetry", t_ns=1, groups=groups)
        assert [norm(r) for r in schema.decode(payload).readings] == [norm(r) for r in groups[0]]


def test_floats_take_their_shortest_exact_width() -> None:
    f32 = struct.unpack(">f", struct.pack(">f", 20.1))[0]
    for value, size in ((1.5, 3), (f32, 5), (20.1, 9), (math.inf, 3), (-0.0, 3)):
        body = encode_payload(
            gw="g", seq=1, boot=1, kind="telemetry", t_ns=1, readings=[("a", 1, value, 0)]
        )
        block = cbor2.dumps(cbor2.loads(body)["b"][0][2][0], canonical=True)
        assert len(block) == size
        back = schema.decode(body).readings[0][2]
        assert struct.pack(">d", back) == struct.pack(">d", value)  # bit for bit, -0.0 too


def test_bytes_per_point_float32_at_one_read_per_tag() -> None:
    """The benchmark's shape (25 devices x 50 float32 tags in a window, one read each):
    version 1 repeats each name in every reading; version 2 names each tag once."""
    vals = struct.unpack(">50f", struct.pack(">50f", *(i * 1.37 for i in range(50))))
    groups = [
        [(f"plc{d:03d}/t{i:03d}", TS + d, v, 0) for i, v in enumerate(vals)] for d in range(25)
    ]
    v1 = len(
        encode_payload(
            gw="bench", seq=1, boot=1, kind="telemetry", t_ns=1, groups=groups, version=1
        )
    )
    v2 = len(encode_payload(gw="bench", seq=1, boot=1, kind="telemetry", t_ns=1, groups=groups))
    assert v1 / 1250 > 31 and v2 / 1250 < 9  # bounds that catch a regression


def test_other_kinds_keep_their_fields_under_version_2() -> None:
    ev = {"model": "m", "kind": "start", "ts_ns": 1, "score": 0.5, "peak": 0.5,
          "window_end_ns": 1, "inputs": ["a/b"]}  # fmt: skip
    p = schema.decode(encode_payload(gw="g", seq=1, boot=1, kind="event", t_ns=1, event=ev))
    assert p.version == 2 and p.event == ev


OK_SET = [["plc/", ["a", "b"]]]


@pytest.mark.parametrize(
    ("tags", "blocks", "field"),
    [
        ([["plc/", ["a", "b"]]], [[1, TS, [1.0, 2.0], 0]], "b[0].set"),
        (OK_SET, [[True, TS, [1.0, 2.0], 0]], "b[0].set"),
        (OK_SET, [[0, TS, [1.0], 0]], "b[0].values"),
        (OK_SET, [[0, TS, (1.0, 2.0, 3.0), 0]], "b[0].values"),
        (OK_SET, [[0, TS, [1.0, {"a": 1}], 0]], "b[0].values: dict"),
        (OK_SET, [[0, TS, [1.0, -(2**63) - 1], 0]], "b[0].values: integer"),
        (OK_SET, [[0, [TS], [1.0, 2.0], 0]], "b[0].ts"),
        (OK_SET, [[0, -1, [1.0, 2.0], 0]], "b[0].ts"),
        (OK_SET, [[0, [TS, -1], [1.0, 2.0], 0]], "b[0].ts"),
        (OK_SET, [[0, [TS, 1.5], [1.0, 2.0], 0]], "b[0].ts"),
        (OK_SET, [[0, TS, [1.0, 2.0], 5]], "b[0].quality"),
        (OK_SET, [[0, TS, [1.0, 2.0], [0, 0, 0]]], "b[0].quality"),
        (OK_SET, [[0, TS, [1.0, 2.0], [0, True]]], "b[0].quality"),
        (OK_SET, [[0, TS, [1.0, 2.0], 1, ""]], "b[0].reason"),
        (OK_SET, [[0, TS, [1.0, 2.0], 1, ["x"]]], "b[0].reason"),
        (OK_SET, [[0, TS, [1.0, 2.0], 1, ["x", 3]]], "b[0].reason"),
        (OK_SET, [[0, TS, [1.0, 2.0], 1, ["x", "y" * 1025]]], "b[0].reason"),
        (OK_SET, [[0, TS, [1.0, 2.0], 1, None, [1]]], "b[0].server_ts"),
        (OK_SET, [[0, TS, [1.0, 2.0], 1, None, [1, -1]]], "b[0].server_ts"),
        (OK_SET, [[0, TS, [1.0, 2.0], 1, None, 7]], "b[0].server_ts"),
        (OK_SET, [[0, TS, [1.0, 2.0]]], "b[0]: a block"),
        (OK_SET, [5], "b[0]: a block"),
        (OK_SET, {"x": 1}, "b: must be an array"),
        ([*OK_SET, ["x/", ["y"]]], [[0, TS, [1.0, 2.0], 0]], "tags[1]: a tag set no block"),
        ({"plc/": ["a"]}, [], "tags: must be an array"),
        ([["plc/"]], [], "tags[0]: a tag set"),
        ([[7, ["a"]]], [], "tags[0]: a tag set"),
        ([["plc/", []]], [], "tags[0].names"),
        ([["plc/", ["a", 3]]], [], "tags[0].names"),
        ([["p" * 65, ["a"]]], [[0, TS, [1.0], 0]], "tags[0].prefix"),
        ([["", ["a", ""]]], [[0, TS, [1.0, 2.0], 0]], "tags[0].names"),
        ([["p" * 64, ["a" * 449]]], [[0, TS, [1.0], 0]], "tags[0].names"),
    ],
)
def test_malformed_columns_are_refused_naming_the_field(tags: Any, blocks: Any, field: str) -> None:
    body = {"v": 2, "gw": "gw1", "seq": 1, "boot": 1, "kind": "telemetry", "t": 1}
    with pytest.raises(PayloadError, match="^" + re.escape(field)):
        schema.decode(cbor2.dumps({**body, "tags": tags, "b": blocks}))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"v": 2, "r": []}, "lacks field"),  # version 2 has no "r"
        ({"v": 2, "tags": [], "b": [], "r": []}, "unknown field"),
        ({"v": 1, "tags": [], "b": []}, "lacks field"),  # version 1 has no columns
        ({"v": 3, "tags": [], "b": []}, "v: unsupported payload version \\(3\\)"),
    ],
)
def test_each_version_has_its_own_fields(body: dict[str, Any], field: str) -> None:
    base = {"gw": "gw1", "seq": 1, "boot": 1, "kind": "telemetry", "t": 1}
    with pytest.raises(PayloadError, match=field):
        schema.decode(cbor2.dumps({**base, **body}))


def test_bounds_that_hold_exactly() -> None:
    body = {"v": 2, "gw": "gw1", "seq": 1, "boot": 1, "kind": "telemetry", "t": 1}
    longest = [["p" * 64, ["a" * 448]]]  # 512 characters: the longest tag name
    p = schema.decode(cbor2.dumps({**body, "tags": longest, "b": [[0, 2**64 - 1, [1], 4]]}))
    assert p.readings == [("p" * 64 + "a" * 448, 2**64 - 1, 1, 4)]
    assert schema.decode(cbor2.dumps({**body, "tags": [], "b": []})).readings == []
    extremes = [[0, TS, [-(2**63), 2**64 - 1], [0, 4], [None, "x"], [None, 2**64 - 1]]]
    p = schema.decode(cbor2.dumps({**body, "tags": OK_SET, "b": extremes}))
    assert p.readings == [
        ("plc/a", TS, -(2**63), 0, None, None),
        ("plc/b", TS, 2**64 - 1, 4, "x", 2**64 - 1),
    ]


def test_names_cannot_expand_far_beyond_the_message() -> None:
    """A 64-character prefix over many empty-ish names: at most 64 characters of names
    per byte of payload, so a signed message cannot make the receiver build gigabytes."""
    body = {"v": 2, "gw": "gw1", "seq": 1, "boot": 1, "kind": "telemetry", "t": 1}
    n = 5000
    ok = {**body, "tags": [["p" * 64, ["a"] * n]], "b": [[0, TS, [0] * n, 0]]}
    assert len(schema.decode(cbor2.dumps(ok)).readings) == n  # ~13 characters per byte
    # The bound itself: a message this size may expand to at most 64 characters per byte.
    data = cbor2.dumps(ok)
    with pytest.raises(PayloadError, match="tags: the tag names expand"):
        schema._columns(ok["tags"], ok["b"], len(data) // 6)


# -- the pipeline: windows split to fit max_message_bytes, in both versions ----------------


@pytest.mark.parametrize("version", [1, 2])
def test_windows_split_to_fit_and_nothing_is_lost(tmp_path: Path, version: int) -> None:
    key = DeviceKey.load_or_create(tmp_path / "key")[0]
    limit = 6000

    async def main() -> list[Any]:
        ot = OutboxThread(tmp_path / "outbox.db")
        await ot.open()
        pipe = Pipeline(
            gw_id="gw1",
            boot=1,
            topic="edgegw/gw1/telemetry",
            notice_topic="edgegw/gw1/notice",
            key=key,
            outbox=ot,
            flush_window_s=0.05,
            max_points=100_000,
            body_limit=lambda topic: limit,
            payload_version=version,
        )
        run = asyncio.create_task(pipe.run())
        sent = []
        for cycle in range(4):
            for d in range(10):
                rs = [(f"plc{d}/t{i}", TS + cycle, float(cycle * 1000 + i), 0) for i in range(150)]
                sent += rs
                await pipe.put(Batch(f"plc{d}", rs))
            await asyncio.sleep(0.1)
        await pipe.close()
        await run
        assert ot.outbox is not None
        rows = await ot.run(ot.outbox.pending, 0, 10_000)
        await ot.close()
        assert all(len(r.body) <= limit for r in rows)
        assert len(rows) > 4  # each window took several messages
        got = []
        for r in rows:
            p = schema.decode(parse1(r.body).payload)
            assert p.version == version and r.points == len(p.readings)
            got += p.readings
        assert [norm(r) for r in got] == [norm(r) for r in sent]
        return rows

    asyncio.run(main())


def test_a_reading_too_large_for_any_message_becomes_a_bad_reading(tmp_path: Path) -> None:
    key = DeviceKey.load_or_create(tmp_path / "key")[0]

    async def main() -> list[Any]:
        ot = OutboxThread(tmp_path / "outbox.db")
        await ot.open()
        pipe = Pipeline(
            gw_id="gw1",
            boot=1,
            topic="edgegw/gw1/telemetry",
            notice_topic="edgegw/gw1/notice",
            key=key,
            outbox=ot,
            flush_window_s=0.01,
            max_points=10,
            body_limit=lambda topic: 2000,
        )
        now = time.time_ns()
        await pipe._seal(
            [("a/small", now, 1.0, 0), ("a/blob", now, "z" * 5000, 0), ("a/next", now, 2.0, 0)],
            [3],
        )
        assert ot.outbox is not None
        rows = await ot.run(ot.outbox.pending, 0, 100)
        await ot.close()
        return [r for row in rows for r in schema.decode(parse1(row.body).payload).readings]

    got = asyncio.run(main())
    assert [r[0] for r in got] == ["a/small", "a/blob", "a/next"]
    assert got[1][2] is None and got[1][3] == 3 and "value too large" in got[1][4]


def test_a_subscriptions_ever_new_tag_sets_are_not_kept() -> None:
    """An OPC UA subscription names another subset of its tags in every message: those
    sets are not kept (they grew the daemon 2 MiB a minute), while a polled device's set,
    met every cycle, is kept from its second message and encoded the same."""
    from gateway import wire

    wire._set_cache.clear()
    wire._seen_once.clear()
    wire._cached_names = 0
    rng = random.Random(7)
    every = [f"ua/n{i:04d}" for i in range(500)]
    for _ in range(300):  # five minutes of one-second publishes
        names = tuple(sorted(rng.sample(every, 250)))
        prefix, rest = wire.tag_set(names)
        assert [prefix + r for r in rest] == list(names)
    assert len(wire._set_cache) <= 1 and wire._cached_names <= 250
    polled = tuple(f"plc7/t{i:02d}" for i in range(50))
    first = wire.tag_set(polled)
    second = wire.tag_set(polled)
    assert second == first == ["plc7/t", [f"{i:02d}" for i in range(50)]]
    assert wire.tag_set(polled) is second  # kept from the second time
    # a pathological stream of sets met twice each stays within the names budget
    for k in range(3000):
        names = tuple(f"d{k}/t{i}" for i in range(100))
        wire.tag_set(names)
        wire.tag_set(names)
        assert wire._cached_names <= wire._SET_CACHE_NAMES


def plain(obj: Any) -> Any:
    """``obj`` with every list (and kept tag set) as a plain list, for a reference encoding."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    return obj


@given(
    devices=st.sampled_from([1, 2, 5, 23, 24, 30]),
    tags=st.integers(1, 30),
    reason_every=st.integers(0, 7),
    rounds=st.integers(1, 4),
)
@settings(max_examples=40, deadline=None)
def test_kept_tag_sets_encode_to_the_same_bytes(
    devices: int, tags: int, reason_every: int, rounds: int
) -> None:
    """A kept tag set is written as the bytes it was once encoded to: every message is
    byte for byte the canonical encoding of its plain body, the first time a set is met
    and every time after (mixed widths too: some readings with a reason, some without)."""
    from gateway import wire

    wire._set_cache.clear()
    wire._seen_once.clear()
    wire._cached_names = 0
    for r in range(rounds):
        groups = [
            [
                (f"d{d}/t{i}", TS + r, float(i) + 0.5, 0)
                if not reason_every or i % reason_every
                else (f"d{d}/t{i}", TS + r, None, 2, "no answer")
                for i in range(tags)
            ]
            for d in range(devices)
        ]
        got = encode_payload(gw="g", seq=r, boot=1, kind="telemetry", t_ns=TS, groups=groups)
        sets, blocks = wire.columns(groups)
        body = {"v": 2, "gw": "g", "seq": r, "boot": 1, "kind": "telemetry", "t": TS}
        body.update(tags=plain(sets), b=plain(blocks))
        assert got == cbor2.dumps(body, canonical=True)
        # the encoding above met each set first (r = 0) or again; this columns() again
        assert all(type(s) is wire.EncodedSet for s in sets)
        assert [norm(x) for x in READINGS(cbor2.loads(got))] == [norm(x) for g in groups for x in g]


@pytest.mark.parametrize("n", [0, 1, 23, 24, 255, 256, 65535, 65536])
def test_array_and_map_heads_are_cbors_own(n: int) -> None:
    from gateway import wire

    assert wire._head(0x80, n) == cbor2.dumps([0] * n)[: len(wire._head(0x80, n))]
    assert wire._head(0x80, n) + b"\x00" * n == cbor2.dumps([0] * n)
    m = {f"k{i}": 0 for i in range(min(n, 300))}
    assert cbor2.dumps(m).startswith(wire._head(0xA0, len(m)))
