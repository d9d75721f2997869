"""Who may do what (pure, no I/O): the trusted command keys of the config, and the checks a
verified command must pass before anything is done. Each refusal has a reason code (the
``reason`` of the result and of the audit record) and a sentence saying why."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from drivers.write import value_problem
from security import kid_for, load_public_key

from .wire import Command

if TYPE_CHECKING:
    from drivers.writespec import WriteSpec

    from ..config import CommandsConfig, Config


class Refused(Exception):
    """A command that is not done; ``reason`` is the code in its result."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True, slots=True)
class TrustedKey:
    name: str
    kid: bytes
    public_key: Ed25519PublicKey
    operations: frozenset[str]
    tags: tuple[str, ...]

    def may_write(self, tag: str) -> bool:
        return any(fnmatch.fnmatchcase(tag, p) for p in self.tags)


def trusted_keys(cfg: CommandsConfig) -> dict[bytes, TrustedKey]:
    """kid -> key, from the config (the files were checked when it was loaded)."""
    out: dict[bytes, TrustedKey] = {}
    for k in cfg.keys:
        pub = load_public_key(k.public_key)
        kid = kid_for(pub)
        out[kid] = TrustedKey(k.name, kid, pub, frozenset(k.operations), tuple(k.tags))
    return out


def _when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="seconds")


def check_fresh(cmd: Command, now_ns: int, cfg: CommandsConfig) -> None:
    if cmd.exp_ns <= now_ns:
        raise Refused("expired", f"the command expired at {_when(cmd.exp_ns)}")
    if cmd.iat_ns > now_ns + int(cfg.max_clock_skew_s * 1e9):
        raise Refused(
            "not_yet_valid",
            f"issued at {_when(cmd.iat_ns)}, later than this gateway's clock "
            f"({_when(now_ns)}) plus commands.max_clock_skew_s ({cfg.max_clock_skew_s:g} s)",
        )
    if cmd.exp_ns - cmd.iat_ns > int(cfg.max_lifetime_s * 1e9):
        raise Refused(
            "lifetime_too_long",
            f"valid for {(cmd.exp_ns - cmd.iat_ns) / 1e9:.0f} s, more than "
            f"commands.max_lifetime_s ({cfg.max_lifetime_s:g} s)",
        )


@dataclass(frozen=True, slots=True)
class WriteTarget:
    device: str
    tag: str  # short name
    spec: WriteSpec
    kind: str


def check_write(
    cmd: Command, key: TrustedKey, cfg: Config, now_ns: int, last_write_ns: int | None
) -> WriteTarget:
    """Scope, writability, value and pace of a write; returns what to write."""
    full = cmd.args["tag"]
    if "write" not in key.operations:
        raise Refused("not_authorised", f"key {key.name!r} may not write (its operations)")
    device_name, _, short = full.partition("/")
    device = next((d for d in cfg.devices if d.name == device_name), None)
    tag = next((t for t in device.tags if t.name == short), None) if device else None
    if tag is None:
        raise Refused("unknown_tag", f"no tag {full!r} in this gateway's config")
    if not key.may_write(full):
        raise Refused(
            "not_authorised",
            f"key {key.name!r} may write {', '.join(key.tags)}; not {full!r}",
        )
    spec: WriteSpec | None = getattr(tag, "write", None)
    if spec is None:
        raise Refused("not_writable", f"tag {full!r} has no write block in the config")
    kind = tag.write_kind()
    problem = value_problem(spec, kind, cmd.args["value"])
    if problem is not None:
        raise Refused(*problem)
    if last_write_ns is not None and spec.min_interval_s > 0:
        since = (now_ns - last_write_ns) / 1e9
        if since < spec.min_interval_s:
            raise Refused(
                "too_frequent",
                f"tag {full!r} was written {since:.1f} s ago; its write.min_interval_s is "
                f"{spec.min_interval_s:g} s",
            )
    return WriteTarget(device_name, short, spec, kind)


def check_config(cmd: Command, key: TrustedKey, in_force: int | None) -> None:
    if "config" not in key.operations:
        raise Refused("not_authorised", f"key {key.name!r} may not replace the config")
    version = cmd.args["version"]
    if in_force is not None and version <= in_force:
        raise Refused(
            "version_not_newer",
            f"config version {version} is not above the version in force ({in_force})",
        )
