"""The outbox file's schema and the few SQL statements that read it."""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 1
# Written to the SQLite header (PRAGMA application_id) so our files are recognisable by
# tools such as `file(1)` and foreign SQLite files are never mistaken for an outbox.
APPLICATION_ID = 0x45475742  # "EGWB": edgegw buffer

SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_NOTADB = 26

# Priority 0 is urgent (anomaly events, audit records, drop notices): sent before any
# telemetry backlog and never evicted to make room.
URGENT = 0
NORMAL = 1  # telemetry

SCHEMA = f"""
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES
    ('schema_version', {SCHEMA_VERSION}), ('boot', 0), ('rows', 0), ('bytes', 0),
    ('seq_reserved', 0), ('dropped_rows', 0), ('dropped_points', 0);
-- The INTEGER PRIMARY KEY is the table's own B-tree key, so `seq > ? ORDER BY seq LIMIT ?`
-- is a range search on it: no second index (which would cost every insert and delete).
-- crc is zlib.crc32(body): SQLite has no page checksums, and a message damaged at rest
-- must be quarantined, never sent.
CREATE TABLE outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    topic      TEXT    NOT NULL,
    body       BLOB    NOT NULL,
    priority   INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    points     INTEGER NOT NULL DEFAULT 0,
    crc        INTEGER NOT NULL
);
-- Urgent rows are few: a partial index finds them without scanning a large backlog.
CREATE INDEX outbox_urgent ON outbox (seq) WHERE priority = {URGENT};
-- What was lost and why; a row stays "unnotified" until a signed notice about it is
-- committed (in the same transaction), so a crash cannot lose the notice either.
CREATE TABLE drops (
    id        INTEGER PRIMARY KEY,
    first_seq INTEGER,
    last_seq  INTEGER,
    rows      INTEGER NOT NULL,
    points    INTEGER NOT NULL,
    bytes     INTEGER NOT NULL,
    reason    TEXT    NOT NULL,
    at_ns     INTEGER NOT NULL,
    notified  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE quarantine (
    seq      INTEGER PRIMARY KEY,
    topic    TEXT    NOT NULL,
    body     BLOB    NOT NULL,
    found_ns INTEGER NOT NULL
);
-- Totals for stats(): kept in the same transaction as the change, whoever makes it
-- (ack, eviction, or an operator's sqlite3 shell).
CREATE TRIGGER outbox_totals_insert AFTER INSERT ON outbox BEGIN
    UPDATE meta SET value = value + CASE key WHEN 'rows' THEN 1 ELSE length(NEW.body) END
    WHERE key IN ('rows', 'bytes');
END;
CREATE TRIGGER outbox_totals_delete AFTER DELETE ON outbox BEGIN
    UPDATE meta SET value = value - CASE key WHEN 'rows' THEN 1 ELSE length(OLD.body) END
    WHERE key IN ('rows', 'bytes');
END;
CREATE TRIGGER outbox_totals_update AFTER UPDATE OF body ON outbox BEGIN
    UPDATE meta SET value = value + length(NEW.body) - length(OLD.body) WHERE key = 'bytes';
END;
PRAGMA application_id = {APPLICATION_ID};
"""

OBJECTS = {
    "meta": "table",
    "outbox": "table",
    "drops": "table",
    "quarantine": "table",
    "outbox_urgent": "index",
    "outbox_totals_insert": "trigger",
    "outbox_totals_delete": "trigger",
    "outbox_totals_update": "trigger",
}

NEXT_SEQ = """
SELECT max(
    coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0),
    coalesce((SELECT max(seq) FROM outbox), 0)
) + 1
"""

# With the bytes held, for the byte cap: one statement instead of two per append.
NEXT_SEQ_AND_BYTES = NEXT_SEQ.rstrip() + ", (SELECT value FROM meta WHERE key = 'bytes')"

LAST_SEQ = "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0)"

# One statement, so one snapshot even if another process writes meanwhile.
STATS = """
SELECT
    (SELECT value FROM meta WHERE key = 'rows'),
    (SELECT value FROM meta WHERE key = 'bytes'),
    (SELECT min(seq) FROM outbox),
    coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0),
    (SELECT created_ns FROM outbox ORDER BY seq LIMIT 1),
    (SELECT value FROM meta WHERE key = 'dropped_rows'),
    (SELECT value FROM meta WHERE key = 'dropped_points')
"""

ROW_COLUMNS = "seq, topic, body, priority, created_ns, points, crc"


def split_script(script: str) -> list[str]:
    """Split a SQL script into complete statements (triggers contain inner semicolons)."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
