"""The SQLite outbox: every signed message is committed here before it is published."""
