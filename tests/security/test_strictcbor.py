"""security/strictcbor.py decodes the same way on every cbor2: with cbor2 6's decoder
options (amd64, arm64) and by walking the heads first, then plain cbor2.loads (cbor2 5:
the armhf package, Debian 12's python3-cbor2). Both accept the same bytes, decode them to
the same values and refuse the same bytes; and the walk path is checked against Debian's
cbor2 5 itself, in a Debian python3 of its own."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from security import strictcbor
from security.strictcbor import CborError, check_item, decode_at, strict_loads
from tests.conftest import REPO
from tests.security.strictcbor_paths import OPTIONS_HERE, strict_cbor_path  # noqa: F401  (fixture)

both_paths = pytest.mark.usefixtures("strict_cbor_path")

# (name, bytes, max_depth, accepted). Each shape our formats never hold is refused; each
# neighbour of it that is plain data is accepted, so a checker that refuses too much fails.
CASES: list[tuple[str, bytes, int, bool]] = [
    ("map of plain values", cbor2.dumps({"a": [1, -2, 2.5, "x", b"y", None, True]}), 8, True),
    ("text and bytes keys that look alike", b"\xa2\x41a\x01\x61a\x02", 8, True),
    ("non-minimal int and length", b"\x82\x18\x01\x78\x01a", 8, True),
    ("64-bit ints", cbor2.dumps([2**64 - 1, -(2**64)]), 8, True),
    (
        "half, single, double floats",
        b"\x83\xf9\x3c\x00\xfa\x3f\x80\x00\x00\xfb" + bytes(8),
        8,
        True,
    ),
    ("undefined and simple values", b"\x84\xf7\xe0\xf3\xf8\x20", 8, True),
    ("empty containers at the depth limit", b"\x81\x81\x80", 2, True),
    ("depth exactly max_depth", b"\x81" * 8 + b"\x00", 8, True),
    ("empty map and array at depth 0", b"\x82\xa0\x80", 0, False),
    ("duplicate text key", b"\xa2\x61a\x01\x61a\x02", 8, False),
    ("duplicate key, other length encoding", b"\xa2\x61a\x01\x78\x01a\x02", 8, False),
    ("duplicate key in a nested map", b"\xa1\x61m\xa2\x41k\x01\x41k\x02", 8, False),
    ("same key in two maps", b"\x82\xa1\x61k\x01\xa1\x61k\x02", 8, True),
    ("integer key", b"\xa1\x01\x01", 8, False),
    ("null key", b"\xa1\xf6\x01", 8, False),
    ("array key", b"\xa1\x80\x01", 8, False),
    ("tagged key", b"\xa1\xc1\x00\x01", 8, False),
    ("tag", cbor2.dumps(cbor2.CBORTag(1, 0)), 8, False),
    ("bignum", cbor2.dumps(2**70), 8, False),
    ("tag deep inside", b"\xa1\x61a\x81\xc1\x00", 8, False),
    ("indefinite array", b"\x9f\x01\xff", 8, False),
    ("indefinite text", b"\x7f\x61a\xff", 8, False),
    ("indefinite map", b"\xbf\xff", 8, False),
    ("indefinite int", b"\x1f", 8, False),
    ("break", b"\xff", 8, False),
    ("reserved head", b"\x1c", 8, False),
    ("reserved simple head", b"\xfc", 8, False),
    ("simple value 16 in two bytes", b"\xf8\x10", 8, False),
    ("too deep", b"\x81" * 9 + b"\x00", 8, False),
    ("too deep through a map", b"\xa1\x61a" * 3 + b"\x00", 2, False),
    ("array longer than the input", b"\x9b" + (2**40).to_bytes(8, "big"), 8, False),
    ("map longer than the input", b"\xa3\x61a\x01", 8, False),
    ("text longer than the input", b"\x63ab", 8, False),
    ("truncated head", b"\x19\x01", 8, False),
    ("text that is not UTF-8", b"\x62\xff\xfe", 8, False),
    ("key that is not UTF-8", b"\xa1\x62\xff\xfe\x00", 8, False),
    ("trailing byte", cbor2.dumps(1) + b"\x00", 8, False),
    ("empty", b"", 8, False),
]


def outcome(data: bytes, max_depth: int) -> tuple[bool, str]:
    """(accepted, the value's repr or the error type): comparable across paths."""
    try:
        return True, repr(strict_loads(data, max_depth=max_depth))
    except CborError:
        return False, "CborError"


@pytest.mark.parametrize(
    ("name", "data", "max_depth", "accepted"), CASES, ids=[c[0] for c in CASES]
)
@both_paths
def test_each_shape_is_accepted_or_refused(
    name: str, data: bytes, max_depth: int, accepted: bool
) -> None:
    ok, what = outcome(data, max_depth)
    assert ok is accepted, f"{name}: {what}"
    if ok:
        assert what == repr(cbor2.loads(data))  # the value cbor2 itself makes of it


@both_paths
def test_refusals_name_what_is_wrong() -> None:
    for data, words in (
        (cbor2.dumps(cbor2.CBORTag(30, [1, 2])), "tags are not allowed"),
        (b"\x81" * 20 + b"\x00", "depth"),
        (b"\x9f\xff", "indefinite"),
        (b"\xa2\x61a\x01\x61a\x02", "uplicate"),
    ):
        with pytest.raises(CborError, match=words):
            strict_loads(data)


@both_paths
def test_decode_at_returns_the_end_of_the_item() -> None:
    data = b"\xff" + cbor2.dumps({"k": [1, 2]}) + b"\x00junk"
    assert decode_at(data, 1) == ({"k": [1, 2]}, len(data) - 5)
    assert check_item(data, 1) == len(data) - 5


# Hypothesis: CBOR-shaped bytes with every kind of head, good and bad, nested.
_ARG_BYTES = {24: 1, 25: 2, 26: 4, 27: 8}


@st.composite
def _head(draw: st.DrawFn, major: int, arg: int) -> bytes:
    """``major``/``arg`` in the shortest head or a longer one (also valid CBOR)."""
    sizes = [
        s
        for s in (0, 24, 25, 26, 27)
        if (s == 0 and arg < 24) or (s and arg < 256 ** _ARG_BYTES[s])
    ]
    info = draw(st.sampled_from(sizes))
    if info == 0:
        return bytes([major << 5 | arg])
    return bytes([major << 5 | info]) + arg.to_bytes(_ARG_BYTES[info], "big")


_leaf = st.one_of(
    st.integers(0, 2**64 - 1).flatmap(lambda n: _head(0, n)),
    st.integers(0, 2**64 - 1).flatmap(lambda n: _head(1, n)),
    st.binary(max_size=6).flatmap(lambda b: _head(2, len(b)).map(lambda h: h + b)),
    st.sampled_from(["", "a", "k", "é", "\U0001f600"]).flatmap(
        lambda t: _head(3, len(t.encode())).map(lambda h: h + t.encode())
    ),
    st.binary(min_size=1, max_size=3).map(lambda b: bytes([0x60 | len(b)]) + b),  # maybe not UTF-8
    st.sampled_from(
        [b"\xf4", b"\xf5", b"\xf6", b"\xf7", b"\xe5", b"\xf8\x10", b"\xf8\x1f", b"\xf8\xff"]
    ),
    st.sampled_from([b"\xf9\x7c\x00", b"\xfa\x7f\xc0\x00\x00", b"\xfb" + bytes(8)]),
    st.sampled_from([b"\xff", b"\x1c", b"\x5f", b"\x9f", b"\xbf", b"\xfc", b"\x1f", b"\xdf"]),
    st.integers(0, 2**64 - 1).flatmap(lambda n: _head(6, n)),  # a tag (its content follows)
)


def _containers(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    def array(items: list[bytes]) -> st.SearchStrategy[bytes]:
        return _head(4, len(items)).map(lambda h: h + b"".join(items))

    def cmap(items: list[bytes]) -> st.SearchStrategy[bytes]:
        return _head(5, len(items) // 2).map(lambda h: h + b"".join(items[: len(items) // 2 * 2]))

    keys = st.sampled_from(
        [b"\x61a", b"\x61k", b"\x41a", b"\x78\x01a", b"\x01", b"\x80", b"\xc1\x00"]
    )
    pairs = st.lists(st.tuples(keys, children), max_size=4).map(
        lambda kv: [x for p in kv for x in p]
    )
    return st.one_of(
        st.lists(children, max_size=4).flatmap(array),
        pairs.flatmap(cmap),
        st.tuples(_head(6, 1), children).map(lambda t: t[0] + t[1]),
    )


cbor_ish = st.recursive(_leaf, _containers, max_leaves=12)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=cbor_ish,
    cut=st.integers(0, 3),
    extra=st.binary(max_size=2),
    max_depth=st.integers(0, 4),
)
def test_both_paths_agree_on_cbor_shaped_bytes(
    data: bytes, cut: int, extra: bytes, max_depth: int
) -> None:
    """Whatever the bytes (truncated, with trailing bytes, any depth limit), the walk path
    accepts, decodes and refuses exactly as cbor2 6's options do."""
    if not OPTIONS_HERE:
        pytest.skip("this cbor2 has no strict decoder options to compare with")
    sample = (data[: len(data) - cut] if cut < len(data) else data) + extra
    saved = strictcbor.USE_DECODER_OPTIONS
    try:
        strictcbor.USE_DECODER_OPTIONS = True
        by_options = outcome(sample, max_depth)
        strictcbor.USE_DECODER_OPTIONS = False
        by_walk = outcome(sample, max_depth)
    finally:
        strictcbor.USE_DECODER_OPTIONS = saved
    assert by_walk == by_options, sample.hex()


# Against Debian's cbor2 5 (what the armhf package runs on), in Debian's own python3:
# security/strictcbor.py is loaded by its path, the rest of the repo is not needed.
_DEBIAN_PY = "/usr/bin/python3"
_RUN_CASES = r"""
import importlib.util, json, sys
import cbor2
spec = importlib.util.spec_from_file_location("strictcbor", sys.argv[1])
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
out = {"cbor2": cbor2.__file__, "options": m.USE_DECODER_OPTIONS, "results": []}
for data, depth in json.load(sys.stdin):
    try:
        out["results"].append([True, repr(m.strict_loads(bytes.fromhex(data), max_depth=depth))])
    except m.CborError:
        out["results"].append([False, "CborError"])
print(json.dumps(out))
"""


def debian_cbor2_version() -> str | None:
    if shutil.which(_DEBIAN_PY) is None or sys.executable == _DEBIAN_PY:
        return None
    r = subprocess.run(
        [_DEBIAN_PY, "-I", "-c", "import importlib.metadata as m; print(m.version('cbor2'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return r.stdout.strip() if r.returncode == 0 else None


def test_walk_path_on_debians_cbor2_5_matches() -> None:
    """The very cbor2 the armhf package depends on (python3-cbor2, Debian 12: 5.4.6; `make
    deps` installs it): strictcbor falls back to the walk there, and every corpus case
    comes out as it does here, values included."""
    version = debian_cbor2_version()
    if version is None:
        pytest.skip(f"{_DEBIAN_PY} has no cbor2: apt-get install python3-cbor2 (make deps)")
    if int(version.split(".")[0]) >= 6:
        pytest.skip(f"{_DEBIAN_PY} has cbor2 {version}, not the cbor2 5 of Debian 12")
    extra = [
        (cbor2.dumps({"v": 2, "x": [1.5, -(2**63), "é", b"\x00" * 40, None]}), 6),
        (cbor2.dumps([float("inf"), float("nan"), -0.0, 65504.0]), 2),
    ]
    cases = [(d.hex(), depth) for _, d, depth, _ in CASES] + [(d.hex(), n) for d, n in extra]
    r = subprocess.run(
        [_DEBIAN_PY, "-I", "-c", _RUN_CASES, str(REPO / "security" / "strictcbor.py")],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    there = json.loads(r.stdout)
    assert there["options"] is False, there["cbor2"]  # cbor2 5 has no strict options
    here = [list(outcome(bytes.fromhex(d), n)) for d, n in cases]
    # cbor2 6 prints a simple value as CBORSimpleValue(n), cbor2 5 as CBORSimpleValue(value=n)
    got = [(ok, what.replace("Value(value=", "Value(")) for ok, what in there["results"]]
    assert got == [tuple(x) for x in here]
    assert sum(ok for ok, _ in here) >= 10  # the comparison covers accepted values too
