"""The receiver's store: the interface classification needs (two implementations:
``SqliteStore`` in sqlite_store.py, ``PgStore`` in pg_store.py).

One message is one transaction: its row (gateway, seq, kind, boot, kid, digest of the
signed content), its readings, event, drops or audit entries, any alert it raised, and the
gateway's state (seen seqs, boots, the audit witness) commit together or not at all. The
transaction locks the gateway's row, so several receivers sharing one database classify
as one would (SQLite serialises writers; a PostgreSQL store would ``SELECT ... FOR UPDATE``).

SQLite is the embedded store (one machine, the demo, tests: ``":memory:"`` works too);
PostgreSQL is the platform's store for a fleet (several receivers share it). Both keep the
same tables (README "Platform").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .outcome import Alert
from .schema import Payload
from .state import GatewayState
from .trust import Enrolment

log = logging.getLogger("edgegw.receiver")


class StoreError(Exception):
    """The store cannot commit (disk full, locked, gone): the message is not acknowledged."""


class EnrolmentChanged(StoreError):
    """A gateway's enrolled root key is not the one its stored data was verified with."""


@dataclass(frozen=True, slots=True)
class LearnedKey:
    kid: bytes
    public_key: Ed25519PublicKey
    n: int  # rotation number (0: the enrolled root)
    certified_by: bytes | None


class GatewayTxn(Protocol):
    """One gateway's state and data, locked for one message."""

    state: GatewayState
    keys: dict[bytes, Ed25519PublicKey]  # every key trusted for this gateway

    def stored_digest(self, seq: int) -> bytes | None: ...
    def key_owner(self, kid: bytes) -> tuple[str, Ed25519PublicKey] | None: ...
    def learn_key(self, key: LearnedKey) -> None: ...
    def put_message(self, p: Payload, kid: bytes, digest: bytes, received_ns: int) -> None: ...
    def put_audit_entries(
        self, log_id: bytes, entries: list[tuple[int, bytes]], seq: int, *, insert: bool = True
    ) -> list[tuple[int, bytes, bytes]]:
        """Store entries by offset (only compare them, without ``insert``); returns
        (offset, stored, offered) where they differ from what is stored."""
        ...

    def audit_entries(self, log_id: bytes, from_offset: int) -> Iterator[tuple[int, bytes]]: ...
    def alert(self, a: Alert, received_ns: int) -> None: ...


class Batch:
    """The gateways one store transaction has opened (locked) so far."""

    def __init__(self, open_gateway: Callable[[Enrolment], Any]) -> None:
        self._open = open_gateway
        self.txns: dict[str, Any] = {}

    def gateway(self, enrolment: Enrolment) -> GatewayTxn:
        """The gateway's state and data in this transaction (locked at first use)."""
        txn = self.txns.get(enrolment.gw)
        if txn is None:
            txn = self.txns[enrolment.gw] = self._open(enrolment)
        return txn  # type: ignore[no-any-return]

    def open_all(self, enrolments: list[Enrolment]) -> None:
        """Open (lock) these gateways now, in gateway order; a store may do it in one go."""
        for e in sorted({e.gw: e for e in enrolments}.values(), key=lambda e: e.gw):
            self.gateway(e)


class Store(Protocol):
    def transaction(self, enrolment: Enrolment) -> AbstractContextManager[GatewayTxn]:
        """Lock the gateway's row, hand its state over; commit on a clean exit."""
        ...

    def batch(self) -> AbstractContextManager[Batch]:
        """One transaction for several messages: open gateways with ``gateway()``, in a
        fixed order; everything commits at the end or nothing does."""
        ...

    def check_enrolment(self, enrolment: Enrolment) -> None: ...
    def states(self) -> dict[str, GatewayState]: ...
    def alerts(self, gw: str | None = None) -> list[dict[str, Any]]: ...
    def audit_copy(self, gw: str, log_id: bytes | None = None) -> bytes: ...
    def readings(self, gw: str, tag: str | None = None) -> list[Reading]:
        """A gateway's stored readings (in seq, then arrival order), as the gateway sent them."""
        ...

    def report(self) -> StoreReport:
        """Totals from the store itself: the truth for any number of receivers sharing it."""
        ...

    def record_stats(self, receiver: str, stats: dict[str, Any]) -> None:
        """Keep one receiver process's counters (summed by ``report``)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Reading:
    seq: int
    tag: str
    ts_ns: int
    value: Any
    quality: int
    reason: str | None
    server_ts_ns: int | None


@dataclass(slots=True)
class StoreReport:
    """What a store holds, over every receiver that wrote to it."""

    gateways: int = 0
    messages: int = 0
    points: int = 0
    events: int = 0
    notices: int = 0
    alerts: int = 0
    security_alerts: int = 0
    gaps: int = 0  # seqs missing between the first and last seen, over all gateways
    missing: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # first 20 holes
    receivers: dict[str, dict[str, Any]] = field(default_factory=dict)  # last counters of each
    duplicates: int = 0  # summed over the receivers' counters (deliveries, not messages)

    def to_json(self) -> dict[str, Any]:
        return {
            "gateways": self.gateways,
            "messages": self.messages,
            "points": self.points,
            "events": self.events,
            "notices": self.notices,
            "alerts": self.alerts,
            "security_alerts": self.security_alerts,
            "gaps": self.gaps,
            "duplicates": self.duplicates,
            "receivers": len(self.receivers),
            "missing": {gw: [list(h) for h in hs] for gw, hs in self.missing.items()},
        }


def fill_from_states(r: StoreReport, states: dict[str, GatewayState]) -> None:
    r.gateways = len(states)
    r.gaps = sum(st.seen.missing() for st in states.values())
    r.missing = {gw: st.seen.holes(20) for gw, st in states.items() if st.seen.missing()}
    r.duplicates = sum(int(s.get("duplicates", 0)) for s in r.receivers.values())


def public_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(slots=True)
class Cached:
    """A gateway's state as this process last committed it, valid while the row's version
    is the same (another receiver sharing the store bumps it)."""

    version: int
    state: GatewayState
    keys: dict[bytes, Ed25519PublicKey]


def open_store(url: str, *, readings: bool = True) -> Store:
    """``postgresql://...`` (or ``postgres://``): PgStore; anything else: a SQLite file."""
    if url.startswith(("postgresql://", "postgres://")) or url.startswith("host="):
        from .pg_store import PgStore

        return PgStore(url, readings=readings)
    from .sqlite_store import SqliteStore

    return SqliteStore(url, readings=readings)


from .sqlite_store import SqliteStore  # noqa: E402  (re-exported: the embedded default)

__all__ = [
    "Batch",
    "Cached",
    "EnrolmentChanged",
    "GatewayTxn",
    "LearnedKey",
    "Reading",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreReport",
    "open_store",
    "public_raw",
]
