"""The SQLite outbox: every signed message is committed here before it is published."""

from .outbox import (
    NORMAL,
    URGENT,
    Drop,
    Outbox,
    OutboxCorrupt,
    OutboxError,
    OutboxFull,
    OutboxRow,
    OutboxStats,
    Policy,
)

__all__ = [
    "NORMAL",
    "URGENT",
    "Drop",
    "Outbox",
    "OutboxCorrupt",
    "OutboxError",
    "OutboxFull",
    "OutboxRow",
    "OutboxStats",
    "Policy",
]
