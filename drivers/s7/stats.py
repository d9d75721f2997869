"""The counters of one S7 driver, for status and metrics.

Counted on the connection's worker thread into a tally per read, and added to the
driver's ``stats`` on the event loop when the read returns: the loop's copy of the
stats (the status snapshot) never races with the worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["S7Stats"]


@dataclass(slots=True)
class S7Stats:
    """The names Modbus's ``LinkStats`` uses where they mean the same."""

    requests: int = 0
    """Read requests (PDUs) sent."""
    timeouts: int = 0
    """Requests without an answer within timeout_ms (the link is then closed)."""
    link_errors: int = 0
    """Requests that lost the connection or got an answer out of step."""
    exceptions: dict[str, int] = field(default_factory=dict)
    """Refusals by the PLC, by return code: an item's (``0x05`` address out of range,
    ``0x0a`` object does not exist, ...) or a whole request's (``0x8104``, ...)."""
    decode_errors: int = 0
    """Items answered with another size than asked."""
    last_ok_ns: int | None = None
    """When the PLC last answered a read request."""
    last_exception: str | None = None
    """The last refusal, with the address it was about."""

    def refused(self, code: str, why: str) -> None:
        self.exceptions[code] = self.exceptions.get(code, 0) + 1
        self.last_exception = why

    def add(self, other: S7Stats) -> None:
        """Count ``other`` in (a read's tally), keeping the latest times and texts."""
        self.requests += other.requests
        self.timeouts += other.timeouts
        self.link_errors += other.link_errors
        self.decode_errors += other.decode_errors
        for code, n in other.exceptions.items():
            self.exceptions[code] = self.exceptions.get(code, 0) + n
        self.last_ok_ns = other.last_ok_ns or self.last_ok_ns
        self.last_exception = other.last_exception or self.last_exception

    def carry_from(self, old: S7Stats) -> None:
        """Go on counting from ``old`` (the driver a reload replaced)."""
        last_ok, last_exception = self.last_ok_ns, self.last_exception
        self.add(old)
        self.last_ok_ns = last_ok or old.last_ok_ns
        self.last_exception = last_exception or old.last_exception
