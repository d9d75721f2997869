"""The payload inside each signed message (see docs/wire-format.md).

One CBOR map per message with text keys, readable by any CBOR library. The receiver's
strict decoder is gateway/receiver/schema.py.

Kinds: ``telemetry`` carries readings; ``notice`` tells the platform about the gateway's
own handling of data (``data_dropped`` with the seq ranges and point count lost to a full
outbox); ``event`` carries anomaly events; ``audit`` the audit log. Every kind shares the
one seq space, so the platform sees every message in one sequence.

Two payload versions (``v``); the gateway sends ``gateway.payload_version`` (2 unless a
platform still needs 1):

- **1**: readings in ``r``, each ``[tag, ts, value, quality, reason?, server_ts?]``,
  encoded as they come from the drivers. About 32 bytes a float32 point, most of it the
  tag name repeated in every reading.
- **2**: the same readings in columns. ``tags`` names each tag once per message (tag
  sets: a common prefix and the rest of each name), and ``b`` holds one block per batch
  (one device read): the set it reads, one timestamp for the block (or one per reading),
  the values, one quality for the block (or one each), reasons and server timestamps only
  when there are some. Floats take their shortest exact CBOR width (a float32 register
  is 5 bytes, not 9). Building it is a few C-level passes per batch (``zip``,
  ``tuple.count``), never per-point Python.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from itertools import groupby
from typing import Any

import cbor2

PAYLOAD_VERSION = 2
"""What the gateway sends unless configured otherwise."""
VERSIONS = (1, 2)
MAX_PREFIX = 64
"""Characters of a tag set's common prefix (bounds what a receiver expands)."""

# Tag sets met again are kept (a polled device's plan reads the same names every cycle);
# a set met once is only remembered by its hash: an OPC UA subscription's changes name
# another subset of its tags in every message, and keeping each (36 KiB for 500 tags)
# grew the daemon by 2 MiB a minute until the cache was full (4,096 sets: 150 MiB).
_SET_CACHE_NAMES = 100_000  # names held at most (a 10,000-tag config's sets hold 10,000)
_SEEN_ONCE_MAX = 4096
_set_cache: dict[tuple[str, ...], list[Any]] = {}
_seen_once: set[int] = set()
_cached_names = 0


def encode_payload(
    *,
    gw: str,
    seq: int,
    boot: int,
    kind: str,
    t_ns: int,
    readings: Sequence[Any] = (),
    groups: Iterable[Sequence[Any]] | None = None,
    version: int = PAYLOAD_VERSION,
    **extra: Any,
) -> bytes:
    """One payload. Telemetry readings come as ``readings`` (one flat list) or as
    ``groups`` (one list per batch: each becomes a version-2 block, so a device read
    shares one timestamp and one tag set)."""
    if version not in VERSIONS:
        raise ValueError(f"payload version {version} is not one of {VERSIONS}")
    body: dict[str, Any] = {
        "v": version,
        "gw": gw,
        "seq": seq,
        "boot": boot,
        "kind": kind,
        "t": t_ns,
    }
    if kind == "telemetry":
        if version == 1:
            body["r"] = readings if groups is None else [r for g in groups for r in g]
        else:
            body["tags"], body["b"] = columns([readings] if groups is None else groups)
    body.update(extra)
    # Version 2 is encoded deterministically (RFC 8949 §4.2.1): sorted keys and each float
    # in the shortest width that holds it exactly.
    if version >= 2:
        return _dumps_telemetry(body) if "tags" in body else cbor2.dumps(body, canonical=True)
    return cbor2.dumps(body)


class EncodedSet(list[Any]):
    """A kept tag set (``[prefix, [rest of each name]]``) with its canonical CBOR: a
    device's plan reads the same names every cycle, so they are encoded once, not in
    every message (a fifth of a 1,000-point message's encoding went to them). Equal to
    the plain list in every way."""

    __slots__ = ("cbor",)

    def __init__(self, value: list[Any]) -> None:
        super().__init__(value)
        self.cbor = cbor2.dumps(value, canonical=True)


_KEYS: dict[str, bytes] = {}  # map keys, encoded


def _dumps_telemetry(body: dict[str, Any]) -> bytes:
    """``cbor2.dumps(body, canonical=True)``, byte for byte, with each kept tag set
    written as the bytes it was encoded to. (cbor2's ``encoders=`` hook would do it, but
    slows every other value down: 74 → 191 µs for 1,000 values.) Canonical order of text
    keys is their encodings' bytewise order (RFC 8949 §4.2.1)."""
    items = []
    for k, v in body.items():
        key = _KEYS.get(k)
        if key is None:
            key = _KEYS[k] = cbor2.dumps(k)
        if k == "tags":
            parts = [s.cbor if type(s) is EncodedSet else cbor2.dumps(s, canonical=True) for s in v]
            items.append((key, _head(0x80, len(parts)) + b"".join(parts)))
        else:
            items.append((key, cbor2.dumps(v, canonical=True)))
    items.sort()
    return _head(0xA0, len(items)) + b"".join([k + v for k, v in items])


def _head(major: int, n: int) -> bytes:
    """The head of a CBOR array (0x80) or map (0xA0) of ``n`` items, shortest form."""
    if n < 24:
        return bytes((major | n,))
    if n < 0x100:
        return bytes((major | 24, n))
    if n < 0x10000:
        return bytes((major | 25,)) + n.to_bytes(2, "big")
    return bytes((major | 26,)) + n.to_bytes(4, "big")


def columns(groups: Iterable[Sequence[Any]]) -> tuple[list[Any], list[Any]]:
    """Readings, one sequence per batch -> (tag sets, blocks) of payload version 2."""
    sets: list[Any] = []
    index: dict[tuple[str, ...], int] = {}
    blocks: list[Any] = []
    todo = list(groups)
    todo.reverse()
    while todo:
        g = todo.pop()
        n = len(g)
        if not n:
            continue
        try:
            cols = tuple(zip(*g, strict=True))
            width = len(cols)
        except ValueError:  # some readings carry a reason (or server time), others not
            width = max(map(len, g))
            g = [(*r, *(None,) * (width - len(r))) for r in g]
            cols = tuple(zip(*g, strict=True))
        ts = cols[1]
        t0 = ts[0]
        if ts.count(t0) != n:
            # A device read of several requests has one timestamp per request: a block
            # per request keeps one timestamp a block (else 9 bytes a reading).
            runs = [sum(1 for _ in run) for _, run in groupby(ts)]
            if len(runs) * 8 <= n:
                at = n
                for length in reversed(runs):
                    todo.append(g[at - length : at])
                    at -= length
                continue
        names: tuple[str, ...] = cols[0]
        k = index.get(names)
        if k is None:
            k = index[names] = len(sets)
            sets.append(tag_set(names))
        qs = cols[3]
        q0 = qs[0]
        same_ts = ts.count(t0) == n
        # A timestamp that is not an integer (a driver's bug) would make the platform
        # refuse the whole message: raise, so the pipeline isolates the reading.
        if type(t0) is not int if same_ts else any(type(t) is not int for t in ts):
            raise TypeError(f"a reading of {names[0]!r}..: timestamp is not an integer")
        block = [k, t0 if same_ts else ts, cols[2], q0 if qs.count(q0) == n else qs]
        if width > 4:
            reasons = cols[4]
            r0 = reasons[0]
            server = cols[5] if width > 5 else None
            if server is not None and server.count(None) == n:
                server = None
            if reasons.count(r0) != n:
                block.append(reasons)
            elif r0 is not None or server is not None:
                block.append(r0)
            if server is not None:
                block.append(server)
        blocks.append(block)
    return sets, blocks


def tag_set(names: tuple[str, ...]) -> list[Any]:
    """``[prefix, [rest of each name]]``: the names' common prefix once (cached from the
    second time a set is met: a device's plan reads the same names every cycle)."""
    cached = _set_cache.get(names)
    if cached is not None:
        return cached
    # Characters, not path parts: "plc7/t0" is the prefix of "plc7/t01" .. "plc7/t09".
    prefix = os.path.commonprefix([min(names), max(names)])[:MAX_PREFIX]  # noqa: RUF071
    cut = len(prefix)
    out = [prefix, [n[cut:] for n in names]]
    h = hash(names)
    if h not in _seen_once:  # the first time: remembered, not kept
        if len(_seen_once) >= _SEEN_ONCE_MAX:
            _seen_once.clear()
        _seen_once.add(h)
        return out
    global _cached_names
    if _cached_names + len(names) > _SET_CACHE_NAMES:
        _set_cache.clear()
        _cached_names = 0
    kept = _set_cache[names] = EncodedSet(out)
    _cached_names += len(names)
    return kept
