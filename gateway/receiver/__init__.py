"""`edgegw receive`: the platform side. Verify every message, drop duplicates by
(gateway, seq), notice gaps, witness the audit logs, and store what is verified.

One module per job: ``trust`` (enrolments), ``schema`` (the signed payload), ``core``
(find the key, verify, parse, classify), ``witness`` (audit log consistency), ``state``
and ``store`` (what survives a restart; ``sqlite_store``, ``pg_store``), ``rows`` (a
reading as a row), ``mqtt`` (the thin shell), ``sinks`` (outputs).
"""

from .core import DEFAULT_MAX_MESSAGE_BYTES, Prepared, Receiver, Sink, summary
from .intervals import Intervals
from .mqtt import Health, MqttReceiver
from .outcome import Alert, AlertClass, Outcome, ReceiverStats
from .schema import Payload, PayloadError
from .sinks import JsonLinesSink
from .state import GatewayState
from .store import (
    EnrolmentChanged,
    Reading,
    SqliteStore,
    Store,
    StoreError,
    StoreReport,
    open_store,
)
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
    "Prepared",
    "Reading",
    "Receiver",
    "ReceiverStats",
    "Sink",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreReport",
    "open_store",
    "summary",
]
