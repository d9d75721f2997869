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
    "TOO_MUCH",
    "OpcuaStats",
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
