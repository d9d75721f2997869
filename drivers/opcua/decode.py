"""DataValues -> readings: value mapping, quality from StatusCode, timestamps.

Per value the fast path is a status check, a dict lookup of the variant type and one
timestamp conversion; everything rarer (arrays, conversions, wrong types, bad
statuses) takes a slower path whose messages are cached per tag and status code.

- Quality: StatusCode severity Good -> GOOD, Uncertain -> UNCERTAIN (reason: the
  status name, e.g. ``UncertainLastUsableValue``), Bad -> BAD_DEVICE (reason: the
  status name and the node).
- Counts (``DecodeCounts``, the driver's stats): bad statuses by name and values that
  cannot be passed on, both off the fast path.
- Timestamp: SourceTimestamp, else ServerTimestamp, else the time the response arrived.
  When the server sent both, the ServerTimestamp is kept too, as the reading's sixth
  element (``(tag, ts, value, quality, reason or None, server_ts)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from asyncua import ua

from drivers.contract import Quality, Reading

from .types import TYPE_BY_ID

__all__ = ["DecodeCounts", "Decoder", "datetime_ns", "status_name"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_GOOD, _UNCERTAIN = int(Quality.GOOD), int(Quality.UNCERTAIN)
_BAD_DEVICE, _BAD_CONFIG = int(Quality.BAD_DEVICE), int(Quality.BAD_CONFIG)
_MISSING = object()


def datetime_ns(dt: datetime) -> int:
    """UTC ns since the Unix epoch of an asyncua (aware, UTC) datetime, exactly."""
    d = dt - _EPOCH
    return (d.days * 86400 + d.seconds) * 1_000_000_000 + d.microseconds * 1000


_NULL_DATETIME_NS = datetime_ns(datetime(1601, 1, 1, tzinfo=UTC))


def _datetime_value(v: datetime | None) -> int:
    return _NULL_DATETIME_NS if v is None else datetime_ns(v)


# Built-in type id -> converter; None: asyncua's Python value is already the reading's.
_CONVERT: dict[int, Callable[[Any], Any] | None] = {
    1: None,
    **dict.fromkeys(range(2, 12), None),  # SByte..Double: int / float
    12: lambda v: "" if v is None else v,
    13: _datetime_value,
    14: str,
    15: lambda v: "" if v is None else bytes(v).hex(),
    17: lambda v: v.to_string(),
    18: lambda v: v.to_string(),
    19: lambda v: int(v.value),
    20: lambda v: v.to_string(),
    21: lambda v: v.Text or "",
}
assert set(_CONVERT) == set(TYPE_BY_ID)  # one table: types.py


def _over(value: Any, bound: int) -> int:
    """The bytes of a str (UTF-8) or bytes value when more than ``bound``, else 0."""
    if isinstance(value, str):
        if len(value) * 4 <= bound:  # cannot be over: at most 4 bytes a character
            return 0
        n = len(value.encode())
    elif isinstance(value, bytes | bytearray):
        n = len(value)
    else:
        return 0
    return n if n > bound else 0


def status_name(code: int) -> str:
    """``BadNodeIdUnknown`` for 0x80340000; info bits (low 16) are ignored."""
    name, _ = ua.status_codes.get_name_and_doc(code & 0xFFFF0000)
    if name in ("Good", "Uncertain", "Bad") and code & 0x0FFF0000:
        return f"{name} (0x{code:08X})"  # a code asyncua does not know by name
    return name


@dataclass(slots=True)
class DecodeCounts:
    """What decoding counts (the driver's stats extend it)."""

    exceptions: dict[str, int] = field(default_factory=dict)
    """Bad statuses the server answered, by name (``BadNodeIdUnknown``): per value, and
    per call (a service fault that is not about the link)."""
    decode_errors: int = 0
    """Values that could not be passed on (a type other than the tag's, an array, too
    large, no value)."""

    def bad_status(self, code: int) -> None:
        name = _STATUS_NAMES.get(code)
        if name is None:
            name = _STATUS_NAMES[code] = status_name(code)
        self.exceptions[name] = self.exceptions.get(name, 0) + 1


_STATUS_NAMES: dict[int, str] = {}


class Decoder:
    """Turns the DataValues of a fixed list of tags into readings."""

    __slots__ = ("_reasons", "counts", "expected", "index", "max_value_bytes", "names", "nodes")

    def __init__(
        self,
        names: Sequence[str],
        nodes: Sequence[str],
        expected: Sequence[int | None],
        index: Sequence[int | None] | None = None,
        max_value_bytes: int = 65536,
        counts: DecodeCounts | None = None,
    ) -> None:
        self.counts = DecodeCounts() if counts is None else counts
        self.max_value_bytes = max_value_bytes
        self.names = tuple(names)
        self.nodes = tuple(nodes)
        self.expected = tuple(expected)
        self.index = tuple(index) if index is not None else (None,) * len(self.names)
        self._reasons: dict[tuple[int, int], str] = {}

    def decode(
        self, values: Sequence[Any], indices: Sequence[int], out: list[Reading], now: int
    ) -> int:
        """Append one reading per DataValue (``values[k]`` is tag ``indices[k]``'s);
        returns how many are bad."""
        names, expected, convert = self.names, self.expected, _CONVERT
        bad = 0
        for i, dv in zip(indices, values, strict=True):
            code = dv.StatusCode.value
            src, srv = dv.SourceTimestamp, dv.ServerTimestamp
            st = src or srv
            if st is None:
                ts = now
            else:
                d = st - _EPOCH
                ts = (d.days * 86400 + d.seconds) * 1_000_000_000 + d.microseconds * 1000
            # both kept: the server's time rides along as a sixth element
            tail: tuple[int, ...] = ()
            if src is not None and srv is not None:
                d = srv - _EPOCH
                tail = ((d.days * 86400 + d.seconds) * 1_000_000_000 + d.microseconds * 1000,)
            if code >= 0x80000000:
                out.append((names[i], ts, None, _BAD_DEVICE, self._bad(i, code), *tail))
                self.counts.bad_status(code)
                bad += 1
                continue
            var = dv.Value
            vt = var.VariantType
            f = convert.get(vt, _MISSING)
            if f is None and expected[i] in (None, vt) and not var.is_array:
                value = var.Value
            else:
                problem = self._unusual(i, var, vt, f)
                if isinstance(problem, tuple):
                    out.append((names[i], ts, None, *problem, *tail))
                    self.counts.decode_errors += 1
                    bad += 1
                    continue
                value = problem
            if code < 0x40000000:
                out.append(
                    (names[i], ts, value, _GOOD, None, *tail)
                    if tail
                    else (names[i], ts, value, _GOOD)
                )
            else:
                out.append((names[i], ts, value, _UNCERTAIN, status_name(code), *tail))
        return bad

    def decode_items(self, items: Sequence[Any], out: list[Reading], now: int) -> int:
        """Append readings for MonitoredItemNotifications (ClientHandle = tag index)."""
        return self.decode([it.Value for it in items], [it.ClientHandle for it in items], out, now)

    def _unusual(self, i: int, var: Any, vt: Any, f: Any) -> Any:
        """The value, or ``(quality, reason)`` when it cannot be passed on."""
        if vt == 0:
            return _BAD_DEVICE, "no value (the server sent a Null variant)"
        spec = TYPE_BY_ID.get(int(vt))
        type_name = spec.name if spec else getattr(vt, "name", str(vt))
        if f is _MISSING:
            return _BAD_CONFIG, (
                f"value of type {type_name} is not supported (the wire format carries "
                "bool, int, float and str)"
            )
        value = var.Value
        if var.is_array:
            n = len(value) if value is not None else 0
            k = self.index[i]
            if k is not None:
                # A server that honours IndexRange sends [element]; one that ignores
                # it (asyncua's) sends the whole array.
                if n == 1 or k < n:
                    return self._element(i, value[0 if n == 1 else k], vt, f, type_name)
                return _BAD_CONFIG, f"index {k} is out of range: the array has {n} element(s)"
            return _BAD_CONFIG, (
                f"value is an array of {n} {type_name}; the wire format carries scalars: "
                "add 'index: <n>' to the tag to read one element"
            )
        return self._element(i, value, vt, f, type_name)

    def _element(self, i: int, value: Any, vt: Any, f: Any, type_name: str) -> Any:
        want = self.expected[i]
        if want is not None and want != vt:
            return _BAD_CONFIG, (
                f"value is {type_name} but the tag's type is {TYPE_BY_ID[want].name}; "
                "correct the type (or the node)"
            )
        # the bound holds for every value that becomes text or bytes: String, ByteString
        # (as sent, before hex), LocalizedText's text, a QualifiedName's or NodeId's name
        bound = self.max_value_bytes
        size = _over(value.Text if vt == 21 and value is not None else value, bound)
        out = value if size or f is None else f(value)
        if not size and vt in (17, 18, 20):
            size = _over(out, bound)
        if size:
            return _BAD_CONFIG, (
                f"value too large: {size} bytes of {type_name}, more than max_value_bytes "
                f"({bound}); raise the device's max_value_bytes if it is meant"
            )
        return out

    def _bad(self, i: int, code: int) -> str:
        key = (i, code)
        reason = self._reasons.get(key)
        if reason is None:
            reason = f"{status_name(code)} (node {self.nodes[i]})"
            self._reasons[key] = reason
        return reason
