"""Strict CBOR decoding for bytes that came from the network.

cbor2's decoder is linear in its input for plain data, but some CBOR *tags* make it do
far more than read: a rational (tag 30) computes a gcd of two bignums (quadratic), a
bigfloat or decimal fraction does arbitrary-precision arithmetic, tag 35 compiles a regex,
tag 28/29 builds shared (even cyclic) structures. None of our formats uses a tag inside a
payload, so the strict decoder refuses every tag, indefinite lengths, duplicate map keys,
map keys other than text or byte strings (hash-collision floods) and deep nesting. What is
left is linear.

Two ways to the same answer, chosen once at import:

- cbor2 >= 6 has decoder options for all of it (``semantic_decoders``,
  ``allow_indefinite``, ``allow_duplicate_keys``, ``strict_hashable_types``): one pass in
  its compiled decoder.
- cbor2 5 (Debian 12's python3-cbor2 5.4.6, what the armhf package uses: cbor2 6 is Rust
  and has no armhf build) has none of them. There :func:`check_item` first walks the item
  by its CBOR heads in pure Python (linear, no value is built) and refuses what the options
  would refuse; what passes is plain data, which ``cbor2.loads`` decodes in linear time.

Both accept and refuse the same bytes (tests/security/test_strictcbor.py runs both over
the strict-CBOR corpora, and against Debian's cbor2 5 where it is installed).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from typing import Any

import cbor2

__all__ = ["CborError", "check_item", "decode_at", "strict_loads"]


class CborError(ValueError):
    """Bytes that are not the strict CBOR our formats use."""


def _no_tags(decoder: Any, *args: Any) -> Any:
    raise cbor2.CBORDecodeError("CBOR tags are not allowed here")


class _EveryTag(Mapping[int, Any]):
    """``semantic_decoders`` that answers for every tag: none of cbor2's built-in tag
    decoders (bignums, fractions, regexes, shared references, ...) ever runs."""

    def __getitem__(self, tag: int) -> Any:
        return _no_tags

    def __contains__(self, tag: object) -> bool:
        return True

    def get(self, tag: int, default: Any = None) -> Any:
        return _no_tags

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


_EVERY_TAG = _EveryTag()


def _decoder(fp: io.BytesIO, max_depth: int) -> cbor2.CBORDecoder:
    return cbor2.CBORDecoder(  # type: ignore[call-arg]  # options of cbor2 >= 6
        fp,
        semantic_decoders=_EVERY_TAG,
        tag_hook=_no_tags,
        max_depth=max_depth,
        allow_indefinite=False,
        allow_duplicate_keys=False,
        strict_hashable_types=True,
    )


def _options_work() -> bool:
    """Whether this cbor2's decoder options exist and refuse what they must (a tag, an
    indefinite length, a duplicate key, an integer key, depth)."""
    try:
        _decoder(io.BytesIO(b"\x00"), 1).decode()
    except TypeError:  # cbor2 5: unexpected keyword argument
        return False
    probes = (b"\xc1\x00", b"\x9f\xff", b"\xa2\x61a\x00\x61a\x00", b"\xa1\x00\x00", b"\x81\x81\x80")
    for bad in probes:
        try:
            _decoder(io.BytesIO(bad), 1).decode()
        except Exception:  # refused, as it should be
            continue
        return False
    return True


# Decode with cbor2's own options (True) or walk the heads first, then cbor2.loads (False).
# Tests switch it to run both paths on one machine.
USE_DECODER_OPTIONS: bool = _options_work()


def check_item(data: bytes, pos: int = 0, max_depth: int = 8) -> int:
    """Walk the one CBOR item at ``data[pos:]`` by its heads and return the offset after it;
    raise CborError for anything the strict decoder refuses: tags, indefinite lengths,
    reserved or malformed heads, simple values 0-31 in two bytes, nesting deeper than
    ``max_depth`` (an item at depth d > max_depth: the top item is at 0), map keys other
    than text or byte strings, a key twice in one map (text and byte strings compared by
    their content, as decoded), and lengths past the end of ``data``.

    Linear in the bytes walked, and nothing is decoded: a string is skipped, not copied
    (map keys excepted: they are short in our formats, and compared)."""
    n = len(data)
    left = 1  # items still to walk in the current container (2 per map entry)
    keys: set[tuple[int, bytes]] | None = None  # the current map's keys; None: not a map
    stack: list[tuple[int, set[tuple[int, bytes]] | None]] = []
    while True:
        if left == 0:
            if not stack:
                return pos
            left, keys = stack.pop()
            continue
        if pos >= n:
            raise CborError("the data ends early (truncated)")
        ib = data[pos]
        major = ib >> 5
        info = ib & 0x1F
        is_key = keys is not None and not left & 1
        left -= 1
        if info < 24:
            arg = info
            pos += 1
        elif info < 28:
            end = pos + 1 + (1 << (info - 24))
            if end > n:
                raise CborError("the data ends early (truncated)")
            arg = int.from_bytes(data[pos + 1 : end], "big")
            pos = end
        elif info == 31:
            if major == 7:
                raise CborError("break code where a data item was expected")
            if 2 <= major <= 5:
                raise CborError("indefinite lengths are not allowed")
            raise CborError(f"malformed head 0x{ib:02x}")
        else:
            raise CborError(f"reserved value in head 0x{ib:02x}")
        if major == 2 or major == 3:  # byte or text string
            end = pos + arg
            if end > n:
                raise CborError("the data ends early (truncated)")
            if is_key:
                key = (major, data[pos:end])
                if key in keys:  # type: ignore[operator]  # is_key: keys is a set
                    raise CborError("duplicate map key")
                keys.add(key)  # type: ignore[union-attr]
            pos = end
            continue
        if is_key:
            raise CborError("map keys must be text or byte strings")
        if major <= 1:
            continue
        if major == 4 or major == 5:
            if arg == 0:
                continue
            if len(stack) >= max_depth:
                raise CborError(f"maximum container nesting depth ({max_depth}) exceeded")
            items = arg if major == 4 else 2 * arg
            if items > n - pos:  # every item is at least one byte
                raise CborError("the data ends early (truncated)")
            stack.append((left, keys))
            left, keys = items, (set() if major == 5 else None)
            continue
        if major == 6:
            raise CborError("CBOR tags are not allowed here")
        if info == 24 and arg < 32:  # major 7: simple values 0-31 take one byte
            raise CborError(f"simple value {arg} in two bytes (invalid)")


def decode_at(data: bytes, pos: int, *, max_depth: int = 8) -> tuple[Any, int]:
    """Decode the one item at ``data[pos:]``; returns it and the offset after it. Map keys
    must be text or byte strings (anything else could be crafted to collide in a hash
    table)."""
    if USE_DECODER_OPTIONS:
        fp = io.BytesIO(data)
        fp.seek(pos)
        try:
            obj = _decoder(fp, max_depth).decode()
        except Exception as exc:  # cbor2 raises several types on hostile input
            raise CborError(str(exc) or type(exc).__name__) from None
        return obj, fp.tell()
    end = check_item(data, pos, max_depth)
    try:  # plain, definite, tag-free data now: linear for any cbor2
        obj = cbor2.loads(data[pos:end] if pos or end != len(data) else data)
    except Exception as exc:  # e.g. a text string that is not UTF-8
        raise CborError(str(exc) or type(exc).__name__) from None
    return obj, end


def strict_loads(data: bytes, *, max_depth: int = 8) -> Any:
    """Decode exactly one item that fills ``data``; trailing bytes are an error."""
    obj, end = decode_at(data, 0, max_depth=max_depth)
    if end != len(data):
        raise CborError(f"{len(data) - end} trailing bytes after the CBOR item")
    return obj
