"""Outputs that get every verified, new message after it is stored."""

from __future__ import annotations

import json
import math
import sys
from typing import IO, Any

from .rows import VTYPES
from .schema import Payload


def _json_value(v: Any) -> Any:
    """JSON has no NaN or infinities, and no bytes: "NaN", "Infinity", "-Infinity" (as
    JavaScript names them) and hex, with ``vtype`` saying what the value was."""
    if type(v) is float and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if type(v) is bytes:
        return v.hex()
    return v


class JsonLinesSink:
    """One JSON object per line, valid JSON only (RFC 8259: no bare NaN): ``"type":
    "reading"`` per reading, ``"event"`` per anomaly event, ``"notice"`` per drop."""

    def __init__(self, out: IO[str] = sys.stdout) -> None:
        self.out = out

    def write(self, p: Payload, kid: bytes, received_ns: int) -> None:
        w = self.out.write
        dumps = json.dumps
        for r in p.readings:
            v = r[2]
            rec: dict[str, Any] = {
                "type": "reading",
                "gw": p.gw,
                "seq": p.seq,
                "tag": r[0],
                "ts": r[1],
                "vtype": VTYPES[type(v)],
                "value": _json_value(v),
                "quality": r[3],
            }
            if len(r) > 4 and r[4] is not None:
                rec["reason"] = r[4]
            if len(r) > 5 and r[5] is not None:
                rec["server_ts"] = r[5]
            w(dumps(rec, allow_nan=False, ensure_ascii=False) + "\n")
        if p.event is not None:
            e = p.event
            ev = {
                "type": "event",
                "gw": p.gw,
                "seq": p.seq,
                **{k: _json_value(e[k]) for k in sorted(e)},
            }
            w(dumps(ev, allow_nan=False, ensure_ascii=False) + "\n")
        for d in p.drops:
            rec = {
                "type": "notice",
                "gw": p.gw,
                "seq": p.seq,
                "notice": "data_dropped",
                "first_seq": d.first_seq,
                "last_seq": d.last_seq,
                "messages": d.messages,
                "points": d.points,
                "bytes": d.bytes,
                "reason": d.reason,
                "at": d.at_ns,
            }
            w(dumps(rec, allow_nan=False) + "\n")
        self.out.flush()

    def close(self) -> None:
        self.out.flush()
