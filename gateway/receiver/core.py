"""The receiver's pipeline for one message: route → find the key → verify → parse →
classify → store, each step a small function, the I/O at the ends (the store, the sinks).

Nothing of a message is interpreted before its signature verified, beyond what finding the
key needs (the topic, the COSE headers, a keychain of certificates that must each verify).
Every step is linear in the message's size, and nothing raised while handling a message
escapes: it becomes an outcome, is counted, and is logged (at most once per interval for
what anyone on the broker can send).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from security.cose import BadSignature, CoseError, Envelope, parse1

from . import schema
from .outcome import SECURITY, Alert, AlertClass, Outcome, ReceiverStats
from .schema import Payload, PayloadError
from .store import Batch, GatewayTxn, SqliteStore, Store, StoreError
from .trust import Enrolments
from .witness import compare, learn_from_keychain, witness

log = logging.getLogger("edgegw.receiver")

# Sized to the gateway's largest message: a gateway seals at most uplink.max_message_bytes
# (default 256 KiB; an audit message is at most 64 KiB of entries plus its base and
# keychain). 8x that, for gateways configured above the default. Larger is rejected
# before anything is parsed.
DEFAULT_MAX_MESSAGE_BYTES = 2 * 2**20
# Topic kinds under the prefix that are not a gateway's messages (the platform's downlink).
IGNORED_KINDS = frozenset({"command"})
LOG_EVERY_S = 10.0  # rejections anyone can cause: one log line per class and gateway
# Gateways with a rejection log bucket of their own; past them (anyone can name a new
# gateway in a topic) one shared bucket per class: memory and log lines stay bounded.
LOG_BUCKETS_MAX = 1024


class Sink(Protocol):
    """Gets every verified, new message after its transaction committed."""

    def write(self, p: Payload, kid: bytes, received_ns: int) -> None: ...
    def close(self) -> None: ...


class _Rejected(Exception):
    def __init__(
        self, outcome: Outcome, why: str, alert: Alert | None = None, more: Sequence[Alert] = ()
    ) -> None:
        super().__init__(why)
        self.outcome, self.why, self.alert = outcome, why, alert
        self.alerts = ([alert] if alert is not None else []) + list(more)


@dataclass(slots=True)
class Prepared:
    """A message checked as far as it can be without its gateway's state (no store, no
    lock): size, topic, envelope, and, when this process already trusts the signing key
    for that gateway, the signature and the payload. The MQTT shell prepares a message in
    its network thread while the previous group is being stored; classification and
    storing happen in the store transaction."""

    topic: str
    body: bytes
    received_ns: int
    rejected: _Rejected | None = None
    gw: str = ""
    kind: str = ""
    env: Envelope | None = None
    payload: Payload | None = None  # verified and decoded here
    digest: bytes = b""  # of the signed content, when verified here


class Receiver:
    """Classifies messages for the enrolled gateways; thread-safe (one lock).

    ``trust``: the enrolment registry, or a mapping gateway id -> root public key.
    ``store``: where state and data live (default: an in-memory SQLite store that keeps the
    state and message index but no readings, for tests and tools that use a ``sink``).
    """

    def __init__(
        self,
        trust: Enrolments | Mapping[str, Ed25519PublicKey],
        prefix: str,
        sink: Sink | None = None,
        *,
        store: Store | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        track_latency: bool = False,
    ) -> None:
        self.trust = trust if isinstance(trust, Enrolments) else Enrolments.of(trust)
        self.prefix = prefix.rstrip("/") + "/"
        self.sink = sink
        self.store: Store = store if store is not None else SqliteStore(":memory:", readings=False)
        for e in self.trust.values():
            self.store.check_enrolment(e)
        self.max_message_bytes = max_message_bytes
        self.stats = ReceiverStats()
        self.latencies_ms = array("d") if track_latency else None
        self.lock = threading.Lock()
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}
        self._valid: list[tuple[Payload, bytes, int]] = []  # committed: outputs to run
        # Keys each gateway is known to have (only ever grows): what prepare() verifies with.
        self._trusted: dict[str, dict[bytes, Ed25519PublicKey]] = {}
        self._seq: int | None = None
        self._missing = {gw: st.seen.missing() for gw, st in self.store.states().items()}
        self.stats.gaps = sum(self._missing.values())

    # -- entry point -------------------------------------------------------------------

    def handle(self, topic: str, body: bytes, received_ns: int | None = None) -> Outcome:
        """Classify (and store) one message; returns its outcome. Never raises."""
        return self.handle_many([(topic, body, received_ns)])[0]

    def prepare(self, topic: str, body: bytes, received_ns: int | None = None) -> Prepared:
        """The checks that need no store (any thread, no lock; never raises)."""
        pr = Prepared(topic, body, received_ns or time.time_ns())
        try:
            if len(body) > self.max_message_bytes:
                why = f"{len(body)} bytes > --max-message-bytes {self.max_message_bytes}"
                raise _Rejected(Outcome.OVERSIZE, why)
            pr.gw, pr.kind = self._route(topic)
            try:
                pr.env = env = parse1(body)
            except CoseError as exc:
                raise _Rejected(Outcome.MALFORMED, str(exc)) from None
            if pr.gw not in self.trust:
                raise _Rejected(Outcome.UNKNOWN_GATEWAY, f"gateway {pr.gw} is not enrolled")
            key = self._trusted.get(pr.gw, {}).get(env.kid)
            if key is not None:
                try:
                    pr.digest = env.verify_digest(key, topic.encode())
                except BadSignature as exc:
                    raise _Rejected(Outcome.BAD_SIGNATURE, str(exc)) from None
                pr.payload = self._parse(pr.gw, pr.kind, env)
        except _Rejected as r:
            pr.rejected = r
        except Exception:  # left to the store path, which reports it with its context
            pr.env = pr.payload = None
        return pr

    def handle_many(
        self, items: Sequence[tuple[str, bytes, int | None] | Prepared]
    ) -> list[Outcome]:
        """Classify and store several messages in ONE store transaction (group commit: one
        commit, one fsync), outcomes in the order given. Each message's rows still commit
        together or not at all. If the transaction fails, nothing of it counted: each
        message is handled again in a transaction of its own, so one bad message never
        costs the others. Never raises."""
        with self.lock:
            todo = [i if isinstance(i, Prepared) else self.prepare(*i) for i in items]
            if len(todo) > 1:
                saved = copy.copy(self.stats), dict(self._missing), self._logged.copy()
                try:
                    return self._many(todo)
                except Exception as exc:  # rolled back: undo what was counted, go one by one
                    self.stats, self._missing, self._logged = saved
                    log.warning(
                        "a group of %d messages was rolled back (%s); storing them one by one",
                        len(todo),
                        exc,
                    )
            return [self._one(pr) for pr in todo]

    def _many(self, todo: list[Prepared]) -> list[Outcome]:
        # Gateways in a fixed order: receivers sharing a database lock rows in the same
        # order, so they never deadlock. A stable sort keeps each gateway's own order.
        order = sorted(range(len(todo)), key=lambda i: todo[i].gw)
        outcomes: list[Outcome] = [Outcome.ERROR] * len(todo)
        rejected: list[tuple[str, _Rejected]] = []
        self._valid: list[tuple[Payload, bytes, int]] = []
        with self.store.batch() as b:
            b.open_all([self.trust[pr.gw] for pr in todo if pr.gw in self.trust])
            for i in order:
                pr = todo[i]
                self._seq = None
                try:
                    outcomes[i] = self._handle(b, pr)
                except _Rejected as r:
                    outcomes[i] = r.outcome
                    rejected.append((pr.topic, r))
        self._committed(outcomes, rejected)
        return outcomes

    def _one(self, pr: Prepared) -> Outcome:
        self._seq: int | None = None  # for the log line of an unexpected error
        self._valid = []
        rejected: list[tuple[str, _Rejected]] = []
        topic = pr.topic
        try:
            with self.store.batch() as b:
                try:
                    outcome = self._handle(b, pr)
                except _Rejected as r:  # committed: its alerts and any key it taught
                    outcome = r.outcome
                    rejected.append((topic, r))
        except StoreError as exc:
            outcome = Outcome.STORE_ERROR
            log.error("cannot store a message on %s: %s (not acknowledged)", topic, exc)
        except Exception:
            outcome = Outcome.ERROR
            log.exception(
                "receiver: unexpected error on a message on %s (seq %s); counted as "
                "'error', reception goes on",
                topic[:200],
                self._seq,
            )
        if outcome in (Outcome.STORE_ERROR, Outcome.ERROR):
            self._valid, rejected = [], []
        self._committed([outcome], rejected)
        return outcome

    def _committed(self, outcomes: list[Outcome], rejected: list[tuple[str, _Rejected]]) -> None:
        """What a committed transaction's messages do to outputs, counters and logs."""
        for topic, r in rejected:
            self._log_rejection(topic, r)
        for p, kid, now in self._valid:
            self._after_commit(p, kid, now)
        self._valid = []
        for o in outcomes:
            self.stats.count(o)

    def _handle(self, b: Batch, pr: Prepared) -> Outcome:
        """One message in an open store transaction; raises _Rejected (its alerts and any
        keys it taught already written to the transaction)."""
        r = pr.rejected
        if r is not None and r.alert is None:
            raise r  # rejected before its gateway's state matters: nothing to write
        if pr.env is None:  # prepare() could not finish: do it all here, to report it
            pr = self.prepare(pr.topic, pr.body, pr.received_ns)
            if pr.rejected is not None and pr.rejected.alert is None:
                raise pr.rejected
            if pr.env is None:
                pr.env = parse1(pr.body)  # raises: an 'error' with its traceback
        gw, env, now = pr.gw, pr.env, pr.received_ns
        aad = pr.topic.encode()
        txn = b.gateway(self.trust[gw])
        try:
            if pr.rejected is not None:
                raise pr.rejected  # signed, but off the schema or the topic: alerted
            p = pr.payload
            if p is None:  # a key prepare() did not know yet: find (or learn) it here
                self._verify(txn, gw, env, aad)
                self._trusted[gw] = dict(txn.keys)
                p = self._parse(gw, pr.kind, env)
            self._seq = p.seq
            digest = pr.digest or env.signed_digest(aad)
            outcome = self._classify(txn, p, digest, env.kid, now)
        except _Rejected as rj:
            for a in rj.alerts:
                txn.alert(a, now)
                self.stats.alerts += 1
            for a in rj.alerts[1:]:
                log.error("SECURITY: gateway %s, seq %s: %s: %s", gw, a.seq, a.cls, a.detail)
            raise
        if outcome is Outcome.VALID:
            self._valid.append((p, env.kid, now))
        return outcome

    def _route(self, topic: str) -> tuple[str, str]:
        parts = topic[len(self.prefix) :].split("/") if topic.startswith(self.prefix) else []
        if len(parts) != 2:
            raise _Rejected(Outcome.MALFORMED, "not a <prefix>/<gateway>/<kind> topic")
        gw, kind = parts
        if kind in IGNORED_KINDS:
            raise _Rejected(Outcome.IGNORED, f"{kind} messages are not a gateway's")
        if kind not in schema.KINDS or not schema.GATEWAY_ID.fullmatch(gw):
            raise _Rejected(Outcome.MALFORMED, "not a gateway id and message kind")
        return gw, kind

    # -- steps --------------------------------------------------------------------------

    def _verify(self, txn: GatewayTxn, gw: str, env: Envelope, aad: bytes) -> None:
        """Find the key among this gateway's (following a keychain it offers), verify."""
        key = txn.keys.get(env.kid)
        if key is None and env.unprotected:
            try:
                chain = env.keychain
            except CoseError as exc:
                raise _Rejected(Outcome.MALFORMED, str(exc)) from None
            before = len(txn.keys)
            key = learn_from_keychain(txn, chain, env.kid)
            self.stats.keys_learned += len(txn.keys) - before
        if key is None:
            root = self.trust.owner_of_root(env.kid)
            owner = (root.gw, root.root) if root is not None else txn.key_owner(env.kid)
            if owner is not None and owner[0] != gw:
                try:
                    env.verify(owner[1], aad)
                except BadSignature:
                    raise _Rejected(Outcome.BAD_SIGNATURE, "bad signature") from None
                why = f"message on {gw}'s topic signed by {owner[0]}'s key {env.kid.hex()}"
                raise _Rejected(
                    Outcome.WRONG_GATEWAY, why, Alert(AlertClass.WRONG_GATEWAY, gw, None, why)
                )
            raise _Rejected(Outcome.UNKNOWN_KID, f"kid {env.kid.hex()} is not a key of {gw}")
        try:
            env.verify(key, aad)
        except BadSignature as exc:
            raise _Rejected(Outcome.BAD_SIGNATURE, str(exc)) from None

    def _parse(self, gw: str, kind: str, env: Envelope) -> Payload:
        try:
            p = schema.decode(env.payload)
        except PayloadError as exc:
            why = f"validly signed payload off the schema: {exc}"
            raise _Rejected(
                Outcome.MALFORMED, why, Alert(AlertClass.SIGNED_MALFORMED, gw, None, why)
            ) from None
        if p.gw != gw or p.kind != kind:
            why = f"payload says {p.gw}/{p.kind}, the topic {gw}/{kind}"
            raise _Rejected(
                Outcome.TOPIC_MISMATCH, why, Alert(AlertClass.TOPIC_MISMATCH, gw, p.seq, why)
            )
        return p

    def _classify(
        self, txn: GatewayTxn, p: Payload, digest: bytes, kid: bytes, now: int
    ) -> Outcome:
        st = txn.state
        # A seq outside the seen set has no stored message (every stored message's seq is
        # in it, in the same transaction): no lookup for the common case, a new message.
        prior = txn.stored_digest(p.seq) if p.seq in st.seen else None
        if prior is not None:
            if prior == digest or not prior:  # b"": stored before digests were kept
                return Outcome.DUPLICATE
            why = f"two different messages with seq {p.seq}"
            raise _Rejected(
                Outcome.CONFLICT,
                why,
                Alert(AlertClass.CONFLICT, p.gw, p.seq, why),
                self._compare(txn, p),
            )
        if p.seq in st.seen and p.seq not in st.explained:
            return Outcome.DUPLICATE  # seen, its row gone (e.g. a store without an index)
        problem = st.order_problem(p.boot, p.seq)
        if problem is not None:
            alert = Alert(AlertClass.REPLAY, p.gw, p.seq, problem)
            raise _Rejected(Outcome.REPLAY, problem, alert, self._compare(txn, p))
        # Valid: a new message (or a late one whose seq a notice had given up on).
        st.seen.add(p.seq, p.seq)
        st.note_boot(p.boot, p.seq)
        alerts: list[Alert] = []
        if p.kind == "notice":
            self._apply_notice(txn, p)
        elif p.kind == "event":
            self.stats.events += 1
        elif p.kind == "audit":
            assert p.audit is not None
            alerts, learned = witness(txn, p.gw, p.seq, p.audit)
            self.stats.keys_learned += learned
            self.stats.audit_entries += len(p.audit.entries)
        txn.put_message(p, kid, digest, now)
        for a in alerts:
            txn.alert(a, now)
            self.stats.alerts += 1
            (log.error if a.security else log.warning)(
                "%s: gateway %s, seq %s: %s: %s",
                "SECURITY" if a.security else "notice",
                a.gw,
                a.seq,
                a.cls.value,
                a.detail,
            )
        self._missing[p.gw] = st.seen.missing()
        return Outcome.VALID

    @staticmethod
    def _compare(txn: GatewayTxn, p: Payload) -> list[Alert]:
        """A refused audit message still shows the witness whether the log was rewritten."""
        return compare(txn, p.gw, p.seq, p.audit) if p.audit is not None else []

    def _apply_notice(self, txn: GatewayTxn, p: Payload) -> None:
        """A signed drop notice explains holes: those seqs will never come."""
        st = txn.state
        self.stats.notices += 1
        for d in p.drops:
            self.stats.dropped_points += d.points
            if d.first_seq is not None and d.last_seq is not None:
                lo, hi = d.first_seq, d.last_seq
                self.stats.dropped_seqs += hi - lo + 1 - st.seen.covered(lo, hi)
                st.seen.add(lo, hi)
                st.explained.add(lo, hi)
            log.warning(
                "gateway %s dropped %d points (%s, seq %s..%s)",
                p.gw,
                d.points,
                d.reason,
                d.first_seq,
                d.last_seq,
            )

    def _after_commit(self, p: Payload, kid: bytes, now: int) -> None:
        self.stats.points_verified += p.points
        self.stats.gaps = sum(self._missing.values())
        if self.latencies_ms is not None:
            self.latencies_ms.extend((now - r[1]) / 1e6 for r in p.readings)
        if self.sink is not None:
            try:
                self.sink.write(p, kid, now)
            except Exception as exc:  # the message is stored; an output must not stop us
                log.error("output of seq %d of %s failed: %s", p.seq, p.gw, exc)

    def _log_rejection(self, topic: str, r: _Rejected) -> None:
        inside = topic.startswith(self.prefix)
        gw = topic[len(self.prefix) :].split("/", 1)[0][:64] if inside else "?"
        if r.outcome in SECURITY or r.alert is not None:
            log.error("SECURITY: gateway %s: %s: %s", gw, r.outcome.value, r.why)
            return
        key = (r.outcome.value, gw)
        if key not in self._logged and len(self._logged) >= LOG_BUCKETS_MAX:
            key = (r.outcome.value, "*")  # any gateway past the first buckets
        t = time.monotonic()
        last, suppressed = self._logged.get(key, (0.0, 0))
        if t - last < LOG_EVERY_S:
            self._logged[key] = (last, suppressed + 1)
            return
        more = f" (and {suppressed} more like it)" if suppressed else ""
        log.warning("rejected a message on %s: %s: %s%s", topic[:200], r.outcome.value, r.why, more)
        self._logged[key] = (t, 0)

    # -- reports ------------------------------------------------------------------------

    def missing(self) -> dict[str, list[tuple[int, int]]]:
        """Per gateway, the holes between the first and the last seq seen (at most 20)."""
        with self.lock:
            return {
                gw: st.seen.holes(20) for gw, st in self.store.states().items() if len(st.seen) > 1
            }

    def received(self, gw: str) -> list[tuple[int, int]]:
        """The seqs of a gateway received or explained, as intervals."""
        with self.lock:
            st = self.store.states().get(gw)
            return st.seen.pairs() if st is not None else []


def summary(rx: Receiver) -> dict[str, Any]:
    with rx.lock:
        return asdict(rx.stats)
