"""Strict CBOR decoding for bytes that came from the network.

cbor2's decoder is linear in its input for plain data, but some CBOR *tags* make it do
far more than read: a rational (tag 30) computes a gcd of two bignums (quadratic), a
bigfloat or decimal fraction does arbitrary-precision arithmetic, tag 35 compiles a regex,
tag 28/29 builds shared (even cyclic) structures. None of our formats uses a tag inside a
payload, so the strict decoder refuses every tag, indefinite lengths, duplicate map keys,
non-text map keys (hash-collision floods) and deep nesting. What is left is linear.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from typing import Any

import cbor2

__all__ = ["CborError", "decode_at", "strict_loads"]


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


def _decoder(fp: io.BytesIO, max_depth: int, text_keys: bool) -> cbor2.CBORDecoder:
    return cbor2.CBORDecoder(
        fp,
        semantic_decoders=_EVERY_TAG,
        tag_hook=_no_tags,
        max_depth=max_depth,
        allow_indefinite=False,
        allow_duplicate_keys=False,
        strict_hashable_types=text_keys,
    )


def decode_at(
    data: bytes, pos: int, *, max_depth: int = 8, text_keys: bool = True
) -> tuple[Any, int]:
    """Decode the one item at ``data[pos:]``; returns it and the offset after it.

    ``text_keys``: map keys must be text or byte strings (anything else could be crafted
    to collide in a hash table)."""
    fp = io.BytesIO(data)
    fp.seek(pos)
    try:
        obj = _decoder(fp, max_depth, text_keys).decode()
    except Exception as exc:  # cbor2 raises several types on hostile input
        raise CborError(str(exc) or type(exc).__name__) from None
    return obj, fp.tell()


def strict_loads(data: bytes, *, max_depth: int = 8, text_keys: bool = True) -> Any:
    """Decode exactly one item that fills ``data``; trailing bytes are an error."""
    obj, end = decode_at(data, 0, max_depth=max_depth, text_keys=text_keys)
    if end != len(data):
        raise CborError(f"{len(data) - end} trailing bytes after the CBOR item")
    return obj
