"""What may be written to a tag: the ``write`` block of a tag's config, shared by every
protocol, and the check of a value against it (pure: no protocol library, no I/O).

Nothing is writable unless its tag has a ``write`` block. A writable number needs the
range a command may set (``min`` and ``max``, in engineering units, after scale and
offset) or the list of values it may take (``values``, e.g. the states of an enum); a
bool may be limited to some ``values`` (e.g. only ``[false]``: a stop that cannot start).
``min_interval_s`` is the shortest time between two writes of the tag.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .writespec import WriteSpec

__all__ = ["WriteKind", "WriteSpec", "spec_problem", "value_problem"]

WriteKind = Literal["bool", "int", "float", "string", "any"]
"""What a tag holds, for writes: ``int`` means a command's value must be a whole number
(an integer type read without scale or offset); ``any``: not known before the device says
(an OPC UA node without a declared ``type``)."""


def _is_number(v: Any) -> bool:
    return type(v) in (int, float)


def spec_problem(
    spec: WriteSpec, kind: WriteKind, lo: float | None, hi: float | None
) -> str | None:
    """Why ``spec`` cannot apply to a tag of ``kind`` whose values span ``lo..hi``
    (engineering units; None: unknown), or None. For the config validators."""
    ranged = spec.min is not None
    if kind in ("bool", "string"):
        if ranged:
            return f"write: min/max do not apply to a {kind} tag; use values to limit it"
        want = bool if kind == "bool" else str
        if spec.values is not None and any(type(v) is not want for v in spec.values):
            return f"write.values: a {kind} tag takes only {want.__name__} values"
        return None
    if kind in ("int", "float"):
        if not ranged and spec.values is None:
            return (
                "write: a writable number needs min and max (the range a command may set) "
                "or values (the only values it may set)"
            )
        if spec.values is not None and any(not _is_number(v) for v in spec.values):
            return "write.values: a number tag takes only numbers"
        if (
            kind == "int"
            and spec.values is not None
            and any(type(v) is float and not v.is_integer() for v in spec.values)
        ):
            return "write.values: this tag holds whole numbers"
        if ranged and lo is not None and hi is not None:
            assert spec.min is not None and spec.max is not None
            if spec.min < lo or spec.max > hi:
                return (
                    f"write: min..max ({spec.min:g}..{spec.max:g}) goes beyond what the tag "
                    f"can hold ({lo:g}..{hi:g})"
                )
    return None


def value_problem(spec: WriteSpec, kind: WriteKind, value: Any) -> tuple[str, str] | None:
    """Why a command may not set ``value`` on a tag of ``kind`` with this ``spec``:
    ``(reason code, text)``, or None. Reason codes: ``not_writable``, ``bad_value``
    (wrong type), ``not_allowed`` (not among ``values``), ``out_of_range``."""
    if not spec.allowed:
        return "not_writable", "the tag's write block says allowed: false"
    t = type(value)
    if kind == "bool" and t is not bool:
        return "bad_value", f"the tag is a bool; got {t.__name__}"
    if kind == "string" and t is not str:
        return "bad_value", f"the tag is text; got {t.__name__}"
    if kind in ("int", "float") and t not in (int, float):
        return "bad_value", f"the tag is a number; got {t.__name__}"
    if kind == "any" and t not in (bool, int, float, str):
        return "bad_value", f"{t.__name__} is not a value a tag can take"
    if t is float and not math.isfinite(value):
        return "bad_value", "the value is not a finite number"
    if kind == "int" and t is float and not value.is_integer():
        return "bad_value", f"the tag holds whole numbers; got {value!r}"
    if spec.values is not None and not _among(value, spec.values):
        shown = ", ".join(repr(v) for v in spec.values[:10])
        return "not_allowed", f"{value!r} is not one of the allowed values ({shown})"
    lo, hi = spec.min, spec.max
    if lo is not None and hi is not None and t in (int, float) and not lo <= value <= hi:
        return "out_of_range", f"{value!r} is outside {lo:g}..{hi:g}"
    return None


def _among(value: Any, values: list[Any]) -> bool:
    """``value`` is one of ``values``; bool is an int in Python, so a bool matches only a
    bool (True never passes for 1), while 2 and 2.0 are the same number."""
    if type(value) is bool or type(value) is str:
        return any(type(v) is type(value) and v == value for v in values)
    return any(_is_number(v) and v == value for v in values)


def __getattr__(name: str) -> Any:
    # The pydantic model is imported on first use: the daemon runs without pydantic
    # (gateway/plainconfig.py) and checks values with the functions above.
    if name == "WriteSpec":
        from .writespec import WriteSpec

        return WriteSpec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
