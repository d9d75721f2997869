"""What can become of a message, what the receiver counts, and the alerts it stores."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    """The class of one message (docs/wire-format.md, "Receiving")."""

    VALID = "valid"  # verified, new, stored
    DUPLICATE = "duplicate"  # the same signed content under a seen (gateway, seq)
    # Verified, but a security alert (stored, logged as SECURITY):
    CONFLICT = "conflict"  # different signed content under a seen (gateway, seq)
    REPLAY = "replay"  # seq and boot contradict what the gateway sent before
    WRONG_GATEWAY = "wrong_gateway"  # signed by another gateway's key
    TOPIC_MISMATCH = "topic_mismatch"  # gw or kind inside differ from the topic
    # Rejected before or at verification (counted; logged at most once per interval):
    MALFORMED = "malformed"  # not our envelope or topic, or a signed payload off the schema
    OVERSIZE = "oversize"  # larger than --max-message-bytes; not even parsed
    UNKNOWN_GATEWAY = "unknown_gateway"  # no enrolment for the topic's gateway id
    UNKNOWN_KID = "unknown_kid"  # no key of that gateway (or any other) has this kid
    BAD_SIGNATURE = "bad_signature"
    IGNORED = "ignored"  # a topic under the prefix that is not a gateway's (downlink)
    # The receiver's own trouble:
    STORE_ERROR = "store_error"  # the store could not commit: not acknowledged, re-delivered
    ERROR = "error"  # a bug: logged with its traceback, counted, reception goes on


SECURITY = frozenset(
    {Outcome.CONFLICT, Outcome.REPLAY, Outcome.WRONG_GATEWAY, Outcome.TOPIC_MISMATCH}
)


class AlertClass(StrEnum):
    """Stored alerts: every outcome in SECURITY, a signed message off the schema, and what
    the audit witness finds."""

    CONFLICT = "conflict"
    REPLAY = "replay"
    WRONG_GATEWAY = "wrong_gateway"
    TOPIC_MISMATCH = "topic_mismatch"
    SIGNED_MALFORMED = "signed_malformed"  # a valid signature over a payload off the schema
    AUDIT_REWRITTEN = "audit_rewritten"  # a log entry differs from the one witnessed there
    AUDIT_SHRANK = "audit_shrank"  # a checkpoint states fewer records than one before it
    AUDIT_INCONSISTENT = "audit_inconsistent"  # chain, Merkle root, checkpoint chain or base
    AUDIT_BAD_CHECKPOINT = "audit_bad_checkpoint"  # a checkpoint that does not verify
    AUDIT_NEW_LOG = "audit_new_log"  # a new log id without a reset notice
    AUDIT_RESET = "audit_reset"  # a new log id with the gateway's signed reset notice


@dataclass(frozen=True, slots=True)
class Alert:
    cls: AlertClass
    gw: str
    seq: int | None
    detail: str

    @property
    def security(self) -> bool:
        """False only for a reset the gateway announced itself (news, not an attack)."""
        return self.cls is not AlertClass.AUDIT_RESET


@dataclass(slots=True)
class ReceiverStats:
    """Counters of this receiver process (the store keeps what must survive a restart)."""

    messages_verified: int = 0
    points_verified: int = 0
    duplicates: int = 0
    conflicts: int = 0
    gaps: int = 0  # seqs missing between the first and last seen, over all gateways
    signature_failures: int = 0
    unknown_kid: int = 0
    unknown_gateway: int = 0
    wrong_gateway: int = 0
    malformed: int = 0
    oversize: int = 0
    topic_mismatch: int = 0
    replays: int = 0
    ignored: int = 0
    store_errors: int = 0
    errors: int = 0
    notices: int = 0
    events: int = 0  # anomaly events (kind "event")
    audit_entries: int = 0  # audit log entries received (records and checkpoints)
    keys_learned: int = 0  # rotated keys learned (keychain headers, key_rotated records)
    dropped_points: int = 0  # points the gateway reported lost (signed notices)
    dropped_seqs: int = 0  # seqs the gateway reported will never come
    alerts: int = 0  # stored alerts (security events and audit witness findings)

    def count(self, outcome: Outcome) -> None:
        name = _COUNTER.get(outcome)
        if name is not None:
            setattr(self, name, getattr(self, name) + 1)


_COUNTER = {
    Outcome.VALID: "messages_verified",
    Outcome.DUPLICATE: "duplicates",
    Outcome.CONFLICT: "conflicts",
    Outcome.REPLAY: "replays",
    Outcome.WRONG_GATEWAY: "wrong_gateway",
    Outcome.TOPIC_MISMATCH: "topic_mismatch",
    Outcome.MALFORMED: "malformed",
    Outcome.OVERSIZE: "oversize",
    Outcome.UNKNOWN_GATEWAY: "unknown_gateway",
    Outcome.UNKNOWN_KID: "unknown_kid",
    Outcome.BAD_SIGNATURE: "signature_failures",
    Outcome.IGNORED: "ignored",
    Outcome.STORE_ERROR: "store_errors",
    Outcome.ERROR: "errors",
}
