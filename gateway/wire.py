"""The payload inside each signed message (see docs/wire-format.md).

One CBOR map per message with text keys, readable by any CBOR library. Readings are
encoded as they come from the drivers (tuples become arrays), so building a payload is
one C-level ``cbor2.dumps`` call however many points it holds.

Kinds: ``telemetry`` carries readings in ``r``; ``notice`` tells the platform about
the gateway's own handling of data (``data_dropped`` with the seq ranges and point
count lost to a full outbox); ``event`` carries anomaly events. Every kind shares the
one seq space, so the platform sees every message in one sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2

PAYLOAD_VERSION = 1


def encode_payload(
    *,
    gw: str,
    seq: int,
    boot: int,
    kind: str,
    t_ns: int,
    readings: Sequence[Any] = (),
    **extra: Any,
) -> bytes:
    body: dict[str, Any] = {
        "v": PAYLOAD_VERSION,
        "gw": gw,
        "seq": seq,
        "boot": boot,
        "kind": kind,
        "t": t_ns,
    }
    if kind == "telemetry":
        body["r"] = readings
    body.update(extra)
    return cbor2.dumps(body)


class PayloadError(ValueError):
    """A verified payload that does not have the documented shape."""


@dataclass(frozen=True, slots=True)
class Payload:
    gw: str
    seq: int
    boot: int
    kind: str
    t_ns: int
    readings: list[list[Any]]
    body: dict[str, Any] = field(repr=False, default_factory=dict)
    """The whole map, for kinds with fields of their own."""


def decode_payload(data: bytes) -> Payload:
    try:
        m = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types for bad input
        raise PayloadError(f"payload is not CBOR: {exc}") from None
    if not isinstance(m, dict):
        raise PayloadError("payload is not a CBOR map")
    if m.get("v") != PAYLOAD_VERSION:
        raise PayloadError(f"unsupported payload version {m.get('v')!r}")
    try:
        p = Payload(
            m["gw"],
            m["seq"],
            m["boot"],
            m["kind"],
            m["t"],
            m["r"] if m.get("kind") == "telemetry" else [],
            m,
        )
    except KeyError as exc:
        raise PayloadError(f"payload lacks field {exc.args[0]!r}") from None
    if not (
        isinstance(p.gw, str)
        and isinstance(p.seq, int)
        and isinstance(p.boot, int)
        and isinstance(p.kind, str)
        and isinstance(p.readings, list)
    ):
        raise PayloadError("payload fields have the wrong types")
    return p
