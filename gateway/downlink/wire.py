"""The command message (platform -> gateway) and the result the gateway seals for it.

A command is a COSE_Sign1 signed with a platform command key (Ed25519, kid = the key's
fingerprint), the full topic ``<prefix>/<gateway id>/command`` as external AAD, around a
CBOR map (docs/wire-format.md, "Commands")::

    {"v": 1, "gw": "gw-01", "id": "0b7c...", "iat": <ns>, "exp": <ns>,
     "op": "write", "args": {"tag": "boiler/setpoint", "value": 21.5}}
    {"v": 1, ..., "op": "config", "args": {"version": 7, "config": "<YAML text>"}}

The gateway answers every command with a ``command_result`` message (signed with the
device key, like telemetry) whose ``result`` map is :func:`result`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import cbor2

from security.cose import Signer, sign1
from security.strictcbor import CborError, strict_loads

COMMAND_VERSION = 1
OPERATIONS = ("write", "config")
COMMAND_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
MAX_TAG = 512
MAX_TEXT = 1024  # a string value written to a tag
I63 = 2**63
U64 = 2**64

OUTCOMES = ("done", "refused", "failed", "rolled_back")
_FIELDS = frozenset({"v", "gw", "id", "iat", "exp", "op", "args"})


class CommandError(ValueError):
    """A verified command payload that is not a command of this format."""


@dataclass(frozen=True, slots=True)
class Command:
    gw: str
    id: str
    iat_ns: int
    exp_ns: int
    op: str
    args: dict[str, Any]

    @property
    def tag(self) -> str | None:
        return self.args.get("tag") if self.op == "write" else None


def _uint(v: Any, limit: int = U64) -> bool:
    return type(v) is int and 0 <= v < limit


def decode_command(payload: bytes) -> Command:
    """Decode a VERIFIED command payload strictly; CommandError names the field."""
    try:
        m = strict_loads(payload, max_depth=4)
    except CborError as exc:
        raise CommandError(f"payload is not strict CBOR: {exc}") from None
    if type(m) is not dict:
        raise CommandError("payload is not a CBOR map")
    if m.get("v") != COMMAND_VERSION or type(m.get("v")) is not int:
        raise CommandError("v: unsupported command version (this gateway knows 1)")
    if missing := _FIELDS - set(m):
        raise CommandError(f"lacks field(s) {', '.join(sorted(missing))}")
    if extra := set(m) - _FIELDS:
        raise CommandError(f"unknown field(s): {', '.join(sorted(repr(k)[:40] for k in extra))}")
    gw, cid, iat, exp, op, args = m["gw"], m["id"], m["iat"], m["exp"], m["op"], m["args"]
    if type(gw) is not str or not 0 < len(gw) <= 64:
        raise CommandError("gw: must be a gateway id")
    if type(cid) is not str or not COMMAND_ID.fullmatch(cid):
        raise CommandError("id: must be 1..64 of [A-Za-z0-9_.:-], starting with a letter or digit")
    if not (_uint(iat) and _uint(exp)):
        raise CommandError("iat and exp: must be uint64 (ns since the epoch)")
    if exp <= iat:
        raise CommandError("exp: must be after iat")
    if op not in OPERATIONS:
        raise CommandError(f"op: must be one of {', '.join(OPERATIONS)}")
    if type(args) is not dict:
        raise CommandError("args: must be a map")
    if op == "write":
        if set(args) != {"tag", "value"}:
            raise CommandError("args: a write has exactly tag and value")
        tag, value = args["tag"], args["value"]
        if type(tag) is not str or not 0 < len(tag) <= MAX_TAG or "/" not in tag:
            raise CommandError("args.tag: must be '<device>/<tag>'")
        tv = type(value)
        if tv not in (bool, int, float, str):
            raise CommandError("args.value: must be a bool, integer, float or text")
        if tv is int and not -I63 <= value < U64:
            raise CommandError("args.value: integer outside int64/uint64")
        if tv is str and len(value) > MAX_TEXT:
            raise CommandError(f"args.value: text longer than {MAX_TEXT} characters")
    else:
        if set(args) != {"version", "config"}:
            raise CommandError("args: a config command has exactly version and config")
        if not _uint(args["version"], I63):
            raise CommandError("args.version: must be an integer 0 <= version < 2**63")
        if type(args["config"]) is not str or not args["config"].strip():
            raise CommandError("args.config: must be the config document (YAML text)")
    return Command(gw, cid, iat, exp, op, args)


def encode_command(
    *,
    gw: str,
    id: str,
    op: str,
    args: dict[str, Any],
    lifetime_s: float,
    iat_ns: int | None = None,
) -> bytes:
    """The CBOR payload of a command (for the platform's signing tool and tests)."""
    iat = time.time_ns() if iat_ns is None else iat_ns
    body = {
        "v": COMMAND_VERSION,
        "gw": gw,
        "id": id,
        "iat": iat,
        "exp": iat + int(lifetime_s * 1e9),
        "op": op,
        "args": args,
    }
    return bytes(cbor2.dumps(body, canonical=True))


def sign_command(payload: bytes, key: Signer, topic: str) -> bytes:
    """The COSE_Sign1 of a command: the topic it is published to is the external AAD."""
    return sign1(payload, key, topic.encode())


def result(
    *,
    digest: bytes,
    outcome: str,
    received_ns: int,
    cmd: Command | None = None,
    kid: bytes | None = None,
    reason: str | None = None,
    detail: str | None = None,
    before: Any = None,
    after: Any = None,
    done_ns: int | None = None,
    again: bool = False,
) -> dict[str, Any]:
    """The ``result`` map of a command_result message (docs/wire-format.md)."""
    assert outcome in OUTCOMES
    return {
        "id": cmd.id if cmd else None,
        "digest": digest,
        "kid": kid,
        "op": cmd.op if cmd else None,
        "outcome": outcome,
        "reason": reason,
        "detail": detail[:MAX_TEXT] if detail else detail,
        "tag": cmd.args.get("tag") if cmd and cmd.op == "write" else None,
        "value": cmd.args.get("value") if cmd and cmd.op == "write" else None,
        "before": before,
        "after": after,
        "version": cmd.args.get("version") if cmd and cmd.op == "config" else None,
        "received": received_ns,
        "done": time.time_ns() if done_ns is None else done_ns,
        "again": again,
    }
