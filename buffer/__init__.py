"""The SQLite outbox: every signed message is committed here before it is published."""

from .outbox import Outbox, OutboxCorrupt, OutboxError, OutboxRow, OutboxStats

__all__ = ["Outbox", "OutboxCorrupt", "OutboxError", "OutboxRow", "OutboxStats"]
