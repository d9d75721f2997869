"""What the driver keeps per plan and connection, and how it classifies faults (no I/O)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from asyncua import ua

from .decode import DecodeCounts, Decoder
from .plan import OpcuaPlan

__all__ = [
    "FILTER_REFUSED",
    "LINK_CODES",
    "LINK_ERRORS",
    "RECHECK_S",
    "TOO_MUCH",
    "OpcuaStats",
    "Oversize",
    "Reads",
    "Runtime",
]

_S = ua.StatusCodes
# Service results that mean the session or link is gone: reconnect.
LINK_CODES = frozenset(
    (
        _S.BadSessionIdInvalid,
        _S.BadSessionClosed,
        _S.BadSessionNotActivated,
        _S.BadSecureChannelIdInvalid,
        _S.BadSecureChannelClosed,
        _S.BadConnectionClosed,
        _S.BadServerHalted,
        _S.BadShutdown,
        _S.BadCommunicationError,
        _S.BadTimeout,
        _S.BadNotConnected,
        _S.BadServerNotConnected,
        _S.BadNoCommunication,
        _S.BadTcpInternalError,
    )
)
# Service results meaning "too much in one call": split further instead of failing.
TOO_MUCH = (
    ua.StatusCodes.BadTooManyOperations,
    ua.StatusCodes.BadRequestTooLarge,
    ua.StatusCodes.BadResponseTooLarge,
    ua.StatusCodes.BadEncodingLimitsExceeded,
)
# Monitored-item results meaning "not with this filter": retried without the deadband.
FILTER_REFUSED = (
    ua.StatusCodes.BadFilterNotAllowed,
    ua.StatusCodes.BadMonitoredItemFilterUnsupported,
    ua.StatusCodes.BadMonitoredItemFilterInvalid,
    ua.StatusCodes.BadDeadbandFilterInvalid,
)
LINK_ERRORS = (ConnectionError, OSError, TimeoutError, asyncio.TimeoutError, ua.UaError)
"""Raised by a read only when the link or session is gone (see ``_read_part``)."""


@dataclass(slots=True)
class Reads:
    """Tags read together, with ReadParameters cached per (offset, size)."""

    indices: list[int]
    items: list[ua.ReadValueId]
    cache: dict[tuple[int, int], ua.ReadParameters] = field(default_factory=dict)

    def params(self, pos: int, size: int) -> ua.ReadParameters:
        p = self.cache.get((pos, size))
        if p is None:
            p = ua.ReadParameters(
                NodesToRead=self.items[pos : pos + size],
                TimestampsToReturn=ua.TimestampsToReturn.Both,
            )
            self.cache[pos, size] = p
        return p


@dataclass(slots=True)
class Runtime:
    """A plan bound to one connection: resolved node ids, prebuilt requests."""

    plan: OpcuaPlan
    generation: int
    decoder: Decoder
    nodes: dict[int, ua.NodeId]
    unresolved: list[tuple[int, str]]
    reads: Reads


@dataclass(slots=True)
class OpcuaStats(DecodeCounts):
    """Counters of one driver, for status and metrics (the names Modbus's ``LinkStats``
    uses where they mean the same; nothing per good value)."""

    requests: int = 0
    """Read service calls (polling, and the reads of tags a subscription cannot monitor)."""
    notifications: int = 0
    """Values the server pushed (data-change notifications of a subscription)."""
    timeouts: int = 0
    """Calls that got no answer within timeout_ms (the link is then dropped)."""
    link_errors: int = 0
    """Calls that lost the link or the session (connection closed, session gone)."""
    last_ok_ns: int | None = None
    """When the server last answered a read or pushed values."""
    last_exception: str | None = None
    """The last bad status the server answered, with the node or call it was about."""

    def carry_from(self, old: OpcuaStats) -> None:
        """Go on counting from ``old`` (the driver a reload replaced)."""
        self.requests += old.requests
        self.notifications += old.notifications
        self.timeouts += old.timeouts
        self.link_errors += old.link_errors
        self.decode_errors += old.decode_errors
        for name, n in old.exceptions.items():
            self.exceptions[name] = self.exceptions.get(name, 0) + n
        self.last_ok_ns = self.last_ok_ns or old.last_ok_ns
        self.last_exception = self.last_exception or old.last_exception


RECHECK_S = 600.0  # a value found too large is read again (alone) after this long


@dataclass(slots=True)
class Oversize:
    """Tags whose answer was larger than the client's message limit (asyncua drops such
    an answer with the link, so the culprit is found across reconnects): the tags of
    such a read are suspects, read one at a time after the others; a suspect whose
    answer alone is too large is a culprit, reported BAD_CONFIG unread and read alone
    again every RECHECK_S (a value may shrink). Indices are the plan's tag indices."""

    suspects: set[int] = field(default_factory=set)
    culprits: dict[int, tuple[str, float]] = field(default_factory=dict)  # reason, next try
    read_first: bool = False
    """A subscription's answer was too large (which item's, asyncua cannot tell): read
    every tag before subscribing again, and leave the culprits out of the subscription."""

    def __bool__(self) -> bool:
        return bool(self.suspects or self.culprits)

    def split(
        self, indices: list[int], now: float
    ) -> tuple[list[int], list[int], list[tuple[int, str]]]:
        """``indices`` as (read together, read alone, not read: (index, reason))."""
        together: list[int] = []
        alone: list[int] = []
        skipped: list[tuple[int, str]] = []
        for i in indices:
            c = self.culprits.get(i)
            if c is not None and now < c[1]:
                skipped.append((i, c[0]))
            elif c is not None or i in self.suspects:
                alone.append(i)
            else:
                together.append(i)
        return together, alone, skipped

    def tripped(self, indices: list[int], reason: str, now: float) -> None:
        if len(indices) == 1:
            self.suspects.discard(indices[0])
            self.culprits[indices[0]] = (reason, now + RECHECK_S)
        else:
            self.suspects.update(indices)

    def cleared(self, indices: list[int]) -> None:
        """These were read (their answer fit)."""
        for i in indices:
            self.suspects.discard(i)
            self.culprits.pop(i, None)
