"""`edgegw receive`: the platform side. Verify every message, drop duplicates by
(gateway, seq), notice gaps, witness the audit logs, and store what is verified.

One module per job: ``trust`` (enrolments), ``schema`` (the signed payload), ``core``
(find the key, verify, parse, classify), ``witness`` (audit log consistency), ``state``
and ``store`` (what survives a restart), ``mqtt`` (the thin shell), ``sinks`` (outputs).
"""

from .core import DEFAULT_MAX_MESSAGE_BYTES, Receiver, Sink, summary
from .intervals import Intervals
from .mqtt import Health, MqttReceiver
from .outcome import Alert, AlertClass, Outcome, ReceiverStats
from .schema import Payload, PayloadError
from .sinks import JsonLinesSink
from .state import GatewayState
from .store import EnrolmentChanged, SqliteStore, Store, StoreError
from .trust import Enrolment, EnrolmentError, Enrolments

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "Alert",
    "AlertClass",
    "Enrolment",
    "EnrolmentChanged",
    "EnrolmentError",
    "Enrolments",
    "GatewayState",
    "Health",
    "Intervals",
    "JsonLinesSink",
    "MqttReceiver",
    "Outcome",
    "Payload",
    "PayloadError",
    "Receiver",
    "ReceiverStats",
    "Sink",
    "SqliteStore",
    "Store",
    "StoreError",
    "summary",
]
