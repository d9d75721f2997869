"""What several protocol drivers share: config checks and request grouping (pure code,
no protocol library)."""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEVICE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def check_device_name(v: str) -> str:
    """A device name as used in tag names ("<device>/<tag>"); ValueError says why not."""
    if not DEVICE_NAME.match(v):
        raise ValueError(f"device name {v!r} is not allowed; accepted: letters, digits and _ . -")
    return v


def check_host(v: str) -> str:
    """An IPv6 literal (brackets accepted), an IPv4 literal or a host name, normalised;
    ValueError says what is wrong (a port written into the host, a bad IPv4, ...)."""
    host = v.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # URL-style IPv6 literal
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(
                f"host {v!r} is neither an IPv6 literal nor a host name; put a port in "
                "'port', not in 'host'"
            ) from None
    labels = host.split(".")
    if all(p.isdigit() for p in labels):  # looks like IPv4: must be one
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ValueError(f"host {v!r} is not a valid IPv4 address") from None
    if len(host) <= 253 and all(_HOST_LABEL.match(p) for p in labels):
        return host
    raise ValueError(f"host {v!r} is not valid; accepted: an IPv4/IPv6 literal or a host name")


def partition(
    spans: list[tuple[int, int]],
    limit: int,
    max_gap: int,
    joinable: Callable[[int, int], bool] | None = None,
) -> list[tuple[int, int]]:
    """Cut spans ``(start, end)`` sorted by (start, end) into runs ``(first, last+1)``.

    Greedy: each run covers at most ``limit`` units (registers, bytes; unless it is one
    span that alone is longer) and leaves no hole wider than ``max_gap`` between its
    spans; with ``joinable``, a run of two or more spans must also satisfy
    ``joinable(run_start, run_end)`` (e.g. not cross an address the device refuses).
    Every rule is kept by any part of a run that keeps it, so for intervals sorted by
    start this gives the fewest runs.
    """
    runs: list[tuple[int, int]] = []
    i, n = 0, len(spans)
    while i < n:
        start, end = spans[i]
        j = i + 1
        while j < n:
            s, e = spans[j]
            top = max(end, e)
            if s - end > max_gap or top - start > limit:
                break
            if joinable is not None and not joinable(start, top):
                break
            end = top
            j += 1
        runs.append((i, j))
        i = j
    return runs


def covered(spans: list[tuple[int, int]]) -> int:
    """Units covered by at least one span (spans sorted by start)."""
    total, reach = 0, -1
    for s, e in spans:
        if e > reach:
            total += e - max(s, reach)
            reach = e
    return total


def duplicate_tag(tags: Sequence[Any]) -> tuple[int, str] | None:
    """The first tag (index, message) whose name an earlier tag already has."""
    first: dict[str, int] = {}
    for i, tag in enumerate(tags):
        if tag.name in first:
            return i, (
                f"duplicate tag name {tag.name!r}: tags[{first[tag.name]}] has it too; "
                "tag names must be unique within a device"
            )
        first[tag.name] = i
    return None


def range_problem(field: str, v: int, lo: int, hi: int | None) -> str | None:
    """Why ``v`` is outside ``lo..hi`` (``hi`` None: no upper bound), or None."""
    if v < lo or (hi is not None and v > hi):
        text = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        return f"{field} {v} is out of range; accepted: {text}"
    return None


def read_device_list(path: str | Path) -> list[Any]:
    """The raw device list of a YAML file holding ``devices:`` (a list) or a bare list;
    ValueError for a file of another shape."""
    import yaml  # here: the daemon gets its config from a child process (gateway/configload.py)

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict) and "devices" in data:
        data = data["devices"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of devices or a mapping with 'devices'")
    return data


class CompactFields:
    """For a model made in thousands (a tag): its field values in a key-sharing dict,
    where that is smaller.

    pydantic gives each model a dict of its own (464 B for a Modbus tag's 16 fields);
    set as attributes of a plain object, the same values take 200-296 B, because
    CPython keeps the keys once per class and each object only its values (at 10,000
    tags: 1.7-2.6 MiB, and less of the start-up peak that stays in RSS). A model with few
    fields (an OPC UA or S7 tag's 7-8) is smaller as it is and is left so. Done as each
    tag is validated, so the dict it replaces is freed before the next tag's is made.
    The model reads, compares, dumps, copies and pickles as before.
    """

    def model_post_init(self, context: Any, /) -> None:
        compact = key_sharing(self.__dict__, type(self))
        if compact is not None:
            object.__setattr__(self, "__dict__", compact)


# model class -> the plain class whose instances hold its values, or None where the
# key-sharing dict is not smaller (decided by the first one made)
_HOLDERS: dict[type, type | None] = {}


def key_sharing(values: dict[str, Any], owner: type) -> dict[str, Any] | None:
    """``values`` as a key-sharing dict (the instance dict of a plain class, one per
    ``owner``, that they were set on in their order); None where that is not smaller."""
    if owner not in _HOLDERS:  # the first one made decides
        holder_cls = type(f"{owner.__name__}Fields", (), {"__module__": __name__})
        out = _set_on(holder_cls(), values)
        smaller = sys.getsizeof(out) < sys.getsizeof(values)
        _HOLDERS[owner] = holder_cls if smaller else None
        return out if smaller else None
    known = _HOLDERS[owner]
    return None if known is None else _set_on(known(), values)


def _set_on(holder: Any, values: dict[str, Any]) -> dict[str, Any]:
    for key, value in values.items():
        setattr(holder, key, value)
    out: dict[str, Any] = holder.__dict__
    return out
