"""Outputs that get every verified, new message after it is stored."""

from __future__ import annotations

import json
import math
import sys
from typing import IO, Any

from .schema import Payload


def _json_value(v: Any) -> Any:
    """JSON has no NaN or infinities, and no bytes: encode them as text, never bare."""
    if type(v) is float and not math.isfinite(v):
        return str(v)  # "nan", "inf", "-inf"
    if type(v) is bytes:
        return v.hex()
    return v


class JsonLinesSink:
    """One JSON object per reading, for pipes and quick looks."""

    def __init__(self, out: IO[str] = sys.stdout) -> None:
        self.out = out

    def write(self, p: Payload, kid: bytes, received_ns: int) -> None:
        w = self.out.write
        for r in p.readings:
            rec = {
                "gw": p.gw,
                "seq": p.seq,
                "tag": r[0],
                "ts": r[1],
                "value": _json_value(r[2]),
                "quality": r[3],
            }
            if len(r) > 4 and r[4] is not None:
                rec["reason"] = r[4]
            if len(r) > 5:
                rec["server_ts"] = r[5]
            w(json.dumps(rec, allow_nan=False) + "\n")
        self.out.flush()

    def close(self) -> None:
        self.out.flush()
