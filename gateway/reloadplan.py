"""What a SIGHUP reload does with each setting: applied at once, applied at the next
restart (and named as such), or refused (it cannot change while the gateway runs).

Every setting of the config is covered by :data:`RULES` (a test walks the model and
fails on one that is not), so a reload never says "applied" for a setting that is not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .plainconfig import Plain, settings


class Effect(StrEnum):
    APPLIED = "applied"  # in force once the reload returns
    RESTART = "restart"  # kept in the file; in force after the next restart
    FIXED = "fixed"  # cannot change while running: the reload is refused


# Dotted setting -> effect; the longest matching prefix wins.
RULES: dict[str, Effect] = {
    "gateway.id": Effect.FIXED,  # the platform's identity of every message
    "gateway.state_dir": Effect.FIXED,  # keys, outbox, audit log
    "outbox.path": Effect.FIXED,
    "gateway.durability": Effect.RESTART,  # the outbox file's synchronous mode
    "gateway.flush_window_ms": Effect.APPLIED,
    "gateway.payload_version": Effect.APPLIED,  # the next message sealed (receivers take both)
    "gateway.max_batch_points": Effect.APPLIED,
    "gateway.shutdown_drain_s": Effect.APPLIED,
    "outbox.max_mib": Effect.APPLIED,
    "outbox.when_full": Effect.APPLIED,
    "outbox.min_free_mib": Effect.APPLIED,
    "uplink": Effect.APPLIED,  # the forwarder reconnects with the new settings
    "commands": Effect.APPLIED,  # keys at once; the session settings by a reconnect
    "inference": Effect.APPLIED,  # models swapped (a refused model refuses the reload)
    "metrics": Effect.APPLIED,  # the server listens again
    "audit": Effect.APPLIED,
    "devices": Effect.APPLIED,  # only devices whose config changed restart
    "devices_dir": Effect.APPLIED,
}


@dataclass(slots=True)
class ReloadPlan:
    """The settings that differ between two configs, by what a reload does with them."""

    applied: list[str] = field(default_factory=list)
    restart: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {"applied": self.applied, "needs_restart": self.restart, "refused": self.fixed}


def effect(name: str) -> Effect:
    best = ""
    for key in RULES:
        if (name == key or name.startswith(key + ".")) and len(key) > len(best):
            best = key
    if not best:
        raise KeyError(f"no reload rule for setting {name!r}")
    return RULES[best]


def changed(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ; sub-models are walked, anything else
    (lists, e.g. devices) compared whole. Works on the daemon's plain configs
    (gateway/plainconfig.py) and on pydantic ones (tests, tools)."""
    if type(old) is type(new) and (names := _settings(old)) is not None:
        out: list[str] = []
        for name in names:
            out += changed(getattr(old, name), getattr(new, name), f"{prefix}{name}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def plan(old: Any, new: Any) -> ReloadPlan:
    p = ReloadPlan()
    for name in changed(old, new):
        {Effect.APPLIED: p.applied, Effect.RESTART: p.restart, Effect.FIXED: p.fixed}[
            effect(name)
        ].append(name)
    return p


def _settings(obj: Any) -> tuple[str, ...] | None:
    """The setting names of a config model, or None for a value that is not one."""
    if isinstance(obj, Plain):
        return settings(obj)
    fields = getattr(type(obj), "model_fields", None)  # a pydantic model
    if not isinstance(fields, dict):
        return None
    return tuple(n for n, f in fields.items() if not f.exclude)
