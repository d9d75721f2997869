"""The driver contract: what every protocol driver gives the gateway.

A driver owns one connection to one device and turns a compiled read plan into a
:class:`Batch` of readings. The required contract is three coroutines; anything more
(subscriptions, shared bus locks) is an opt-in capability declared separately, so a
reader of a driver needs only this module.

Readings are plain tuples, not objects, because there are thousands of them per second
and each one is encoded to CBOR as an array as it is::

    (tag, ts_ns, value, quality)            # a good or uncertain reading
    (tag, ts_ns, value, quality, reason)    # a bad one, with why
    (tag, ts_ns, value, quality, reason_or_None, server_ts_ns)
                                            # a protocol with two clocks (OPC UA): ts_ns
                                            # is the source's, server_ts_ns the server's

``tag`` is the full tag name ``"<device>/<tag>"``, computed once when the plan is
compiled. ``ts_ns`` is the UTC time of the response in integer nanoseconds since the
Unix epoch. ``value`` is ``None`` when the quality is bad.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol, TypeAlias, runtime_checkable

Value: TypeAlias = bool | int | float | str | None
Reading: TypeAlias = tuple[Any, ...]
"""``(tag, ts_ns, value, quality[, reason[, server_ts_ns]])``; see the module docstring."""


class Quality(IntEnum):
    """Quality of one reading; the integer is what goes on the wire."""

    GOOD = 0
    BAD_COMM = 1
    """No answer: timeout, connection refused or lost."""
    BAD_DEVICE = 2
    """The device answered with an error (e.g. Modbus exception: illegal address)."""
    BAD_CONFIG = 3
    """The tag cannot be read as configured (e.g. value does not decode)."""
    UNCERTAIN = 4
    """A value is present but may be stale or out of range."""


@dataclass(slots=True)
class Batch:
    """Readings from one read of one device: the unit of work of the pipeline."""

    device: str
    readings: list[Reading] = field(default_factory=list)
    error: str | None = None
    """Why the read failed, if it did; the readings then carry a bad quality."""

    @property
    def ok(self) -> bool:
        return self.error is None


class DriverError(Exception):
    """A driver could not do what was asked; the message says what and why."""


class ConnectError(DriverError):
    """The device could not be reached (refused, timeout, DNS)."""


class ValueRejected(DriverError):
    """A value cannot be written to a tag as configured (it does not fit the tag's type
    or length); nothing was sent to the device."""


@runtime_checkable
class Driver(Protocol):
    """One connection to one device.

    ``read`` never raises for a device or link fault: it returns a batch whose
    readings carry a bad quality and whose ``error`` says why, and sets
    ``connected`` to False when the link is gone so the caller reconnects with
    backoff. Only programming errors escape.
    """

    name: str
    """The device name from the config."""

    @property
    def connected(self) -> bool: ...

    async def connect(self) -> None:
        """Open the link; raises :class:`ConnectError` on failure."""

    async def read(self, plan: Any) -> Batch:
        """Execute one compiled read plan; one batch per call."""

    async def close(self) -> None:
        """Close the link; safe to call twice."""


def bad_readings(tags: list[str], ts_ns: int, quality: Quality, reason: str) -> list[Reading]:
    """Readings for tags that could not be read, each carrying the reason."""
    q = int(quality)
    return [(t, ts_ns, None, q, reason) for t in tags]


@runtime_checkable
class Subscriber(Protocol):
    """Opt-in capability: the device pushes changes (e.g. OPC UA data-change
    subscriptions) instead of, or besides, being polled.

    ``subscribe`` delivers one batch per notification burst to ``sink`` and runs until
    it is cancelled. When the link is lost it raises :class:`ConnectError` (after
    cleaning up its server-side subscription state if it can); the caller then
    reconnects with backoff and calls ``subscribe`` again, which must not leave a
    duplicate subscription behind.
    """

    async def subscribe(self, plan: Any, sink: Callable[[Batch], Awaitable[None]]) -> None: ...


@runtime_checkable
class Writer(Protocol):
    """Opt-in capability: tags can be written (setpoints, commands). Only tags whose
    config has a ``write`` block are ever passed here; the gateway checks the value
    against that block first. Both calls share the connection (and, on a serial bus,
    the bus lock) with ``read``, and the driver serialises them with its reads.

    ``read_tag`` and ``write`` take the tag's short name (as in the config). ``write``
    encodes the engineering value as the tag is read (type, byte and word order, scale
    and offset inverted) and raises :class:`ValueRejected` before sending anything when
    it cannot; :class:`ConnectError` when the link is down or lost; :class:`DriverError`
    when the device refuses (the message carries the device's own error).
    """

    async def read_tag(self, tag: str) -> Value: ...

    async def write(self, tag: str, value: Value) -> None: ...


# Every protocol package ``drivers.<proto>`` exports, for the gateway's registry:
#   PROTOCOL: str                      the config's ``protocol:`` value
#   DeviceConfig                       its pydantic model (importing it must stay cheap:
#                                      no protocol library is imported until a driver is built)
#   compile_plan(device) -> plan       pure; plan.tag_names: tuple[str, ...] full names
#   describe_plan(plan) -> list[str]   human lines, one per request
#   Driver(device)                     satisfies Driver (and maybe Subscriber, Writer)
# and, where it has them (optional):
#   certificate_files(device, pki_dir) -> {name: Path}
#                                      the certificates the device's link uses (their
#                                      expiry becomes a metric); pki_dir as Driver gets it
