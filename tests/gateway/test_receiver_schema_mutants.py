"""Survivors of the mutation run over gateway/receiver/schema.py that mattered: each field of
an event, a drop notice, an audit batch and a command result checked on its own (a bad
field beside good ones is refused, a value at its exact bound is accepted), so that a
genuine key signing something off the schema is a ``malformed`` security alert and never a
stored row, a receiver error, or a row the store cannot hold (which would be re-delivered
forever). Each case is a real signed message through a Receiver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cbor2
import pytest

from gateway.receiver import Outcome, Receiver, SqliteStore, schema
from gateway.receiver.schema import MAX_ENTRY, PayloadError
from gateway.wire import encode_payload
from security import DeviceKey, sign1
from tests.gateway.test_receiver_mutants import DROP, EVENT, RESULT  # the same valid fields

H = b"h" * 32
AUDIT = {"log": b"L" * 16, "offset": 0, "base": [0, H, H, []], "entries": [b"e"]}
RESET = {"old_log": b"O" * 16, "reason": "key rotated"}
I63 = 2**63
TS = 1_700_000_000_000_000_000


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> DeviceKey:
    return DeviceKey.load_or_create(tmp_path_factory.mktemp("gw"))[0]


def payload(kind: str, **fields: Any) -> bytes:
    return encode_payload(gw="gw1", seq=9, boot=1, kind=kind, t_ns=1, **fields)


def verdict(key: DeviceKey, kind: str, body: bytes) -> Outcome:
    """What a receiver makes of this payload, signed by the gateway's own key."""
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=SqliteStore())
    topic = f"edgegw/gw1/{kind}"
    outcome = rx.handle(topic, sign1(body, key, topic.encode()))
    if outcome is Outcome.MALFORMED:
        [a] = rx.store.alerts()
        assert (a["class"], a["security"], a["seq"]) == ("signed_malformed", 1, None)
    return outcome


def case(kind: str, changes: dict[str, Any]) -> tuple[str, bytes]:
    if kind == "event":
        return kind, payload(kind, event={**EVENT, **changes})
    if kind == "notice":
        return kind, payload(kind, notice="data_dropped", drops=[{**DROP, **changes}])
    if kind == "command_result":
        return kind, payload(kind, result={**RESULT, **changes})
    return kind, payload(kind, **{**AUDIT, **changes})


BAD = {
    "event": [
        {"model": 5},
        {"model": ""},
        {"kind": "middle"},
        {"ts_ns": -1},
        {"window_end_ns": -1},
        {"window_end_ns": 2**64},
        {"score": "high"},
        {"peak": None},
        {"inputs": "plc/t"},  # text, not an array of tag names
        {"inputs": ["plc/t", ""]},
        {"inputs": ["t" * 513]},
    ],
    "notice": [
        {"last_seq": 2.5},  # a float seq
        {"last_seq": True},
        {"first_seq": None},  # one set, one null
        {"first_seq": 3},  # first > last
        {"last_seq": 9},  # not below the notice's own seq
        {"messages": I63},  # SQLite's INTEGER is signed 64-bit: the store could not hold it
        {"points": -1},
        {"bytes": 1.0},
        {"at": I63},
        {"reason": "bored"},
    ],
    "command_result": [
        {"op": "delete"},
        {"id": "i" * 129},
        {"id": ""},
        {"reason": 5},
        {"reason": "r" * 129},
        {"detail": 5},
        {"detail": "d" * 4097},
        {"tag": ""},
        {"tag": "t" * 513},
        {"value": [1]},
        {"before": -(2**63) - 1},
        {"after": "a" * 4097},
        {"version": I63},
        {"version": -1},
        {"received": -1},
        {"done": 2**64},
        {"again": 0},
        {"outcome": "maybe"},
        {"kid": b"k" * 17},
    ],
    "audit": [
        {"log": b"L" * 15},
        {"offset": I63},
        {"offset": -1},
        {"base": [0, H, H]},
        {"base": [-1, H, H, []]},
        {"base": [I63, H, H, []]},
        {"base": [0, b"h" * 31, H, []]},
        {"base": [0, H, b"h" * 31, []]},
        {"base": [0, H, H, H]},  # the frontier must be an array
        {"base": [0, H, H, [H] * 65]},
        {"base": [0, H, H, [H, b"h" * 31]]},
        {"entries": []},
        {"entries": ["text"]},
        {"entries": [b"e", b""]},
        {"entries": [b"e" * (MAX_ENTRY + 1)]},
        {"reset": {**RESET, "old_log": b"O" * 15}},
        {"reset": {**RESET, "reason": ""}},
        {"reset": {**RESET, "extra": 1}},
        {"reset": ["old_log", "reason"]},  # its keys, as an array
        {"reset": RESET, "offset": 5},
    ],
}
GOOD = {
    "event": [
        {"kind": "end"},
        {"score": 1, "peak": -2.5},
        {"inputs": []},
        {"inputs": ["t" * 512]},
    ],
    "notice": [
        {"first_seq": None, "last_seq": None, "messages": 0},
        {"messages": I63 - 1, "points": I63 - 1, "bytes": 0, "at": I63 - 1},
        {"first_seq": 8, "last_seq": 8},
    ],
    "command_result": [
        {"op": "config"},
        {"op": None, "kid": None, "id": None, "tag": None, "version": None},
        {"id": "i" * 128, "reason": "r" * 128},
        {"detail": "d" * 4096, "after": "a" * 4096, "before": b"b" * 4096},
        {"detail": ""},
        {"tag": "t" * 512},
        {"value": -(2**63), "before": 2**64 - 1, "after": None},
        {"version": I63 - 1, "received": 2**64 - 1, "again": True},
    ],
    "audit": [
        {"offset": I63 - 1},
        {"base": [I63 - 1, H, H, [H] * 64]},
        {"entries": [b"e" * MAX_ENTRY, b"x"]},
        {"reset": RESET},
        {"reset": {**RESET, "old_log": None}},
    ],
}


@pytest.mark.parametrize(
    ("kind", "changes"), [(k, c) for k, cs in BAD.items() for c in cs], ids=repr
)
def test_one_bad_field_beside_good_ones_is_malformed(
    key: DeviceKey, kind: str, changes: dict[str, Any]
) -> None:
    assert verdict(key, *case(kind, changes)) is Outcome.MALFORMED


@pytest.mark.parametrize(
    ("kind", "changes"), [(k, c) for k, cs in GOOD.items() for c in cs], ids=repr
)
def test_a_field_at_its_bound_is_accepted(
    key: DeviceKey, kind: str, changes: dict[str, Any]
) -> None:
    assert verdict(key, *case(kind, changes)) is Outcome.VALID


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("event", payload("event", event=list(EVENT))),  # the keys, as an array
        ("command_result", payload("command_result", result=list(RESULT))),
        ("notice", payload("notice", notice="data_dropped", drops=[])),
        ("notice", payload("notice", notice="data_dropped", drops=DROP)),
        ("notice", payload("notice", notice="other", drops=[DROP])),
        ("notice", payload("notice", notice="data_dropped", drops=[list(DROP)])),
    ],
)
def test_a_part_of_the_wrong_shape_is_malformed_not_a_receiver_error(
    key: DeviceKey, kind: str, body: bytes
) -> None:
    assert verdict(key, kind, body) is Outcome.MALFORMED


def test_an_audit_batch_keeps_its_reset_and_no_reset_is_none() -> None:
    a = schema.decode(payload("audit", **AUDIT, reset=RESET)).audit
    assert a is not None and a.is_reset
    assert (a.reset_old_log, a.reset_reason) == (b"O" * 16, "key rotated")
    assert (a.log, a.offset, a.base_size, a.base_head, a.base_cp_prev) == (b"L" * 16, 0, 0, H, H)
    a = schema.decode(payload("audit", **{**AUDIT, "base": [3, H, b"c" * 32, [H]]})).audit
    assert a is not None and not a.is_reset
    assert (a.reset_old_log, a.reset_reason) == (None, None)
    assert (a.base_size, a.base_cp_prev, a.base_frontier) == (3, b"c" * 32, [H])


def test_what_a_refusal_names(tmp_path: Path) -> None:
    """The alert's detail names the field (what the operator reads)."""
    for kind, changes, says in (
        ("event", {"kind": "x"}, "event: model must be text and kind 'start' or 'end'"),
        ("event", {"ts_ns": -1}, "event: ts_ns and window_end_ns must be uint64"),
        ("event", {"score": None}, "event: score and peak must be numbers"),
        ("event", {"inputs": [1]}, "event.inputs: must be an array of tag names"),
        ("notice", {"first_seq": None}, "drops[0]: first_seq and last_seq are both set or"),
        ("notice", {"last_seq": 9}, "drops[0]: seq range must satisfy 1 <= first <= last < 9"),
        ("notice", {"points": -1}, "drops[0]: messages, points, bytes and at must be uints"),
        ("notice", {"reason": "x"}, "drops[0].reason: not a documented reason"),
        ("command_result", {"op": "x"}, "result.op: must be 'write', 'config' or null"),
        ("command_result", {"reason": 1}, "result.reason: must be short text or null"),
        ("command_result", {"detail": 1}, "result.detail: must be text or null"),
        ("command_result", {"tag": 1}, "result.tag: must be a tag name or null"),
        ("command_result", {"value": [1]}, "result.value: not a reading value"),
        ("command_result", {"after": "a" * 4097}, "result.after: too long"),
        ("command_result", {"version": -1}, "result.version: must be a uint or null"),
        ("command_result", {"done": -1}, "result.received and result.done: must be uint64"),
        ("command_result", {"again": 1}, "result.again: must be a bool"),
        ("command_result", {"outcome": "x"}, "result.outcome: not one of done, failed, ref"),
        ("command_result", {"kid": b"k"}, "result.kid: must be 16 bytes or null"),
        ("command_result", {"digest": b"d"}, "result.digest: must be 32 bytes"),
        ("audit", {"log": b"L"}, "log: must be a 16-byte log id"),
        ("audit", {"offset": -1}, "offset: must be a uint"),
        ("audit", {"base": []}, "base: must be [size, head, cp_prev, [frontier hashes]]"),
        ("audit", {"entries": []}, "entries: must be a non-empty array of byte strings"),
        ("audit", {"reset": {}}, "reset: must be {old_log: 16 bytes or null, reason: text}"),
        ("audit", {"reset": RESET, "offset": 1}, "reset: only the first message of a log"),
    ):
        with pytest.raises(PayloadError) as exc:
            schema.decode(case(kind, changes)[1])
        assert str(exc.value).startswith(says), (changes, str(exc.value))
    for body, says in (
        (payload("event", event=[]), "event: must be a map of inputs, kind, model, peak,"),
        (payload("notice", notice="data_dropped", drops=[]), "drops: must be a non-empty array"),
        (
            payload("notice", notice="data_dropped", drops=[{}]),
            "drops[0]: must be a map of at, bytes, first_seq,",
        ),
        (payload("command_result", result=[]), "result: must be a map of after, again, befo"),
    ):
        with pytest.raises(PayloadError) as exc:
            schema.decode(body)
        assert str(exc.value).startswith(says), str(exc.value)


@pytest.mark.parametrize(
    ("reading", "says"),
    [
        (["a", 1, 1.0], "r[1]: a reading is an array of 4 to 6 elements"),
        (["a", 1, 1.0, 0, None, None, 7], "r[1]: a reading is an array of 4 to 6 elements"),
        ("a", "r[1]: a reading is an array of 4 to 6 elements"),
        (["", 1, 1.0, 0], "r[1].tag: must be text of 1..512 characters"),
        (["a" * 513, 1, 1.0, 0], "r[1].tag: must be text of 1..512 characters"),
        ([5, 1, 1.0, 0], "r[1].tag: must be text of 1..512 characters"),
        (["a", -1, 1.0, 0], "r[1].ts: must be a uint64"),
        (["a", 1.0, 1.0, 0], "r[1].ts: must be a uint64"),
        (["a", 1, [1], 0], "r[1].value: list is not a reading value"),
        (["a", 1, -(2**63) - 1, 0], "r[1].value: integer outside int64/uint64"),
        (["a", 1, 1.0, 5], "r[1].quality: must be 0..4"),
        (["a", 1, 1.0, -1], "r[1].quality: must be 0..4"),
        (["a", 1, 1.0, 1.0], "r[1].quality: must be 0..4"),
        (["a", 1, 1.0, 0, ""], "r[1].reason: must be text or null"),
        (["a", 1, "text", 0, 5], "r[1].reason: must be text or null"),
        (["a", 1, 1.0, 0, "x" * 1025], "r[1].reason: must be text or null"),
        # every other field at its bound: only server_ts is wrong
        (["a" * 512, 2**64 - 1, -(2**63), 4, "x" * 1024, -1], "r[1].server_ts: must be a uint"),
        (["a", 0, 0, 0, None, -1], "r[1].server_ts: must be a uint64 or null"),
        (["a", 1, 2**64 - 1, 1, "why", 1.5], "r[1].server_ts: must be a uint64 or null"),
    ],
)
def test_what_a_refused_version_1_reading_names(reading: Any, says: str) -> None:
    body = payload("telemetry", version=1, readings=[["ok", 1, 1.0, 0], reading])
    with pytest.raises(PayloadError) as exc:
        schema.decode(body)
    assert str(exc.value).startswith(says), str(exc.value)


@pytest.mark.parametrize(
    ("block", "says"),
    [
        ([0, TS, [1.0, 2.0], 5], "b[0].quality: must be an integer 0..4"),
        ([0, TS, [1.0, 2.0], [0, 5]], "b[0].quality: must be an integer 0..4 or an array of 2"),
        ([0, -1, [1.0, 2.0], 0], "b[0].ts: must be an integer 0..18446744073709551615"),
        ([0, [1, -1], [1.0, 2.0], 0], "b[0].ts: must be an integer 0..18446744073709551615 or an"),
    ],
)
def test_what_a_refused_column_names(block: list[Any], says: str) -> None:
    body = {"v": 2, "gw": "gw1", "seq": 1, "boot": 1, "kind": "telemetry", "t": 1}
    body |= {"tags": [["plc/", ["a", "b"]]], "b": [block]}
    with pytest.raises(PayloadError) as exc:
        schema.decode(cbor2.dumps(body))
    assert str(exc.value) in (says, says + " array of 2"), str(exc.value)


@pytest.fixture
def fresh_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tag sets are cached across messages (module-wide): start with none, so that every
    set of the test is checked, not found in the cache."""
    monkeypatch.setattr(schema, "_names_cache", {})
    monkeypatch.setattr(schema, "_names_chars", 0)


V2 = {"v": 2, "gw": "gw1", "seq": 1, "boot": 1, "kind": "telemetry", "t": 1}


@pytest.mark.parametrize(
    ("tags", "block", "readings"),
    [
        ([["p" * 64, ["a" * 448]]], [0, TS, [1], 0], [("p" * 64 + "a" * 448, TS, 1, 0)]),
        ([["", ["a" * 512, "b"]]], [0, TS, [1, 2], 0], [("a" * 512, TS, 1, 0), ("b", TS, 2, 0)]),
        ([["plc/", ["a", "b"]]], [0, TS, [1, 2], 0, ["x" * 1024, None]],
         [("plc/a", TS, 1, 0, "x" * 1024), ("plc/b", TS, 2, 0, None)]),
    ],
)  # fmt: skip
def test_a_tag_set_at_its_bounds_is_accepted(
    fresh_names: None, tags: Any, block: Any, readings: Any
) -> None:
    p = schema.decode(cbor2.dumps({**V2, "tags": tags, "b": [block]}))
    assert p.readings == readings


@pytest.mark.parametrize(
    ("tags", "block", "says"),
    [
        ([["plc/", "ab"]], [0, TS, [1, 2], 0], "tags[0].names: must be a non-empty array"),
        ([["", ["a" * 513]]], [0, TS, [1], 0], "tags[0].names: a tag name (prefix + name) is"),
        ([["plc/", ["a", "b"]]], [0, TS, [1, 2], 0, ["x", ""]], "b[0].reason: must be text"),
        ([["plc/", ["a", "b"]]], [0, TS, [1, 2], 0, [None, "x" * 1025]], "b[0].reason: must"),
    ],
)
def test_a_tag_set_beyond_its_bounds_is_refused(
    fresh_names: None, tags: Any, block: Any, says: str
) -> None:
    with pytest.raises(PayloadError) as exc:
        schema.decode(cbor2.dumps({**V2, "tags": tags, "b": [block]}))
    assert str(exc.value).startswith(says), str(exc.value)


def test_names_that_expand_too_far_are_refused_even_the_first_time(fresh_names: None) -> None:
    n = 5000
    ok = {**V2, "tags": [["p" * 64, ["a"] * n]], "b": [[0, TS, [0] * n, 0]]}
    size = len(cbor2.dumps(ok))
    with pytest.raises(PayloadError, match="tags: the tag names expand"):
        schema._columns(ok["tags"], ok["b"], size // 6)  # 65 * 5000 > 64 * size // 6
    assert len(schema.decode(cbor2.dumps(ok)).readings) == n


def test_the_tag_set_cache_stays_within_its_budget(fresh_names: None) -> None:
    """A key holder sending ever-new tag sets cannot grow the receiver's memory."""
    for i in range(60):
        names = [f"{i}-{j}-" + "n" * 400 for j in range(250)]  # ~100k characters a set
        body = {**V2, "tags": [["", names]], "b": [[0, TS, [0] * 250, 0]]}
        assert schema.decode(cbor2.dumps(body)).points == 250
        held = sum(
            len(prefix) * len(rest) + 2 * sum(map(len, rest))
            for prefix, rest in schema._names_cache
        )
        assert held <= schema._NAMES_BUDGET


def test_readings_that_are_not_an_array_are_named() -> None:
    body = {"v": 1, "gw": "gw1", "seq": 1, "boot": 1, "kind": "telemetry", "t": 1, "r": {}}
    with pytest.raises(PayloadError, match=r"^r: must be an array of readings$"):
        schema.decode(cbor2.dumps(body))


V1 = {"v": 1, "gw": "gw1", "seq": 1, "boot": 1, "kind": "telemetry", "t": 1, "r": []}


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"v": "2"}, "v: unsupported payload version (str); accepted: 1, 2"),
        ({"v": 0}, "v: unsupported payload version (0); accepted: 1, 2"),
        ({"kind": "x"}, "kind: not one of audit, command_result, event, notice, telemetry"),
        ({"r": ...}, "lacks field(s) r"),
        ({"r": ..., "t": ...}, "lacks field(s) r, t"),
        ({"x": 1, "y": 2}, "unknown field(s) for kind telemetry: 'x', 'y'"),
        ({"a" * 60: 1}, "unknown field(s) for kind telemetry: '" + "a" * 39),
        ({"gw": "-gw"}, "gw: not a gateway id"),
        ({"gw": "g" * 65}, "gw: not a gateway id"),
        ({"gw": 1}, "gw: not a gateway id"),
        ({"seq": -1}, "seq: must be an integer 0 <= seq < 2**63"),
        ({"boot": 1.0}, "boot: must be an integer 0 <= boot < 2**63"),
        ({"t": "now"}, "t: must be a uint64 (ns since the epoch)"),
    ],
)
def test_what_a_refused_envelope_field_names(changes: dict[str, Any], says: str) -> None:
    body = {k: v for k, v in {**V1, **changes}.items() if v is not ...}
    with pytest.raises(PayloadError) as exc:
        schema.decode(cbor2.dumps(body))
    assert str(exc.value) == says


def test_gateway_ids_at_their_bounds() -> None:
    for gw in ("g" * 64, "G0._-x", "9"):
        assert schema.decode(cbor2.dumps({**V1, "gw": gw})).gw == gw
    for body, says in (
        (b"\xff", "payload is not strict CBOR: "),
        (cbor2.dumps([1]), "payload is not a CBOR map"),
        (payload("notice", notice="lost", drops=[DROP]), "notice: must be 'data_dropped'"),
    ):
        with pytest.raises(PayloadError) as exc:
            schema.decode(body)
        assert str(exc.value).startswith(says), str(exc.value)


def test_the_expansion_bound_is_exact_and_counts_every_set(fresh_names: None) -> None:
    one = [[0, TS, [1], 0]]
    schema._columns([["", ["a" * 64]]], one, 1)  # 64 characters for 1 byte: the bound
    with pytest.raises(PayloadError, match="tags: the tag names expand"):
        schema._columns([["", ["b" * 65]]], one, 1)
    with pytest.raises(PayloadError, match="tags: the tag names expand"):  # 2 x 64 > 64
        schema._columns([["", ["c" * 64]], ["", ["d" * 64]]], [*one, [1, TS, [1], 0]], 1)


def test_a_block_knows_the_type_of_its_values_only_when_they_share_one() -> None:
    p = schema.decode(cbor2.dumps({**V2, "tags": [["p/", ["a", "b"]]], "b": [
        [0, TS, [1.5, 2.5], 0], [0, TS, [1, 2.5], 0], [0, TS, [None, None], 0]]}))  # fmt: skip
    assert [b.vtype for b in p.blocks] == [float, None, type(None)]


def test_an_unhashable_name_is_malformed_not_an_error(fresh_names: None) -> None:
    body = {**V2, "tags": [["p/", [["x"]]]], "b": [[0, TS, [1], 0]]}
    with pytest.raises(PayloadError, match=r"^tags\[0\]\.names: must be a non-empty array"):
        schema.decode(cbor2.dumps(body))


@pytest.mark.parametrize(
    ("block", "says"),
    [
        (
            [0, TS, [1, 2], 0, None, None, 7],
            "b[0]: a block is [set, ts, values, quality, reason?, ",
        ),
        ([1, TS, [1, 2], 0], "b[0].set: not an index into tags (0..0)"),
    ],
)
def test_what_a_refused_block_names(fresh_names: None, block: Any, says: str) -> None:
    body = {**V2, "tags": [["p/", ["a", "b"]]], "b": [block]}
    with pytest.raises(PayloadError) as exc:
        schema.decode(cbor2.dumps(body))
    assert str(exc.value).startswith(says), str(exc.value)


def test_the_expansion_refusal_says_the_bound(fresh_names: None) -> None:
    with pytest.raises(PayloadError) as exc:
        schema._columns([["", ["b" * 65]]], [[0, TS, [1], 0]], 1)
    assert str(exc.value) == "tags: the tag names expand to more than 64 characters per byte"


def nested(depth: int) -> Any:
    v: Any = 0
    for _ in range(depth):
        v = [v]
    return v


def test_a_payload_nests_six_deep_at_most() -> None:
    """Checked while decoding, before the schema: a deeper payload costs nothing more."""
    for depth, says in ((5, "r[0]: a reading is"), (6, "payload is not strict CBOR: max")):
        body = {**V1, "r": nested(depth)}  # in the map: one level more
        with pytest.raises(PayloadError) as exc:
            schema.decode(cbor2.dumps(body))
        assert str(exc.value).startswith(says), str(exc.value)
