"""The payload inside each signed message (see docs/wire-format.md).

One CBOR map per message with text keys, readable by any CBOR library. The receiver's
strict decoder is gateway/receiver/schema.py. Readings are
encoded as they come from the drivers (tuples become arrays), so building a payload is
one C-level ``cbor2.dumps`` call however many points it holds.

Kinds: ``telemetry`` carries readings in ``r``; ``notice`` tells the platform about
the gateway's own handling of data (``data_dropped`` with the seq ranges and point
count lost to a full outbox); ``event`` carries anomaly events. Every kind shares the
one seq space, so the platform sees every message in one sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
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
