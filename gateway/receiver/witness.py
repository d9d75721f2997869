"""The platform's witness of each gateway's audit log.

Offline verification cannot tell a log cut exactly at a checkpoint, or rolled back to an
older copy, from a log that simply ended there (docs/security.md). The witness can: it
keeps every entry it received, by byte offset, and checks them in file order as a verifier
would, remembering what it saw. So:

* an entry that arrives for an offset already witnessed with other bytes means the log
  was rewritten or rolled back (a checkpoint there that states fewer records: it shrank);
* records must chain, and each checkpoint must verify with the gateway's keys and state
  exactly the size, Merkle root, head and previous checkpoint the witness computed;
* a new log id is news: announced by the gateway's signed reset notice it is recorded, and
  without one it is a security alert.

Every audit message carries the log's state before its first entry (``base``), so a witness
can start at any message (a receiver enrolled late) and check everything after it.
Messages that arrive ahead of a hole wait in the store until the hole fills.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from security.checkpoint import (
    CHECKPOINT_AAD,
    FormatError,
    checkpoint_hash,
    decode_checkpoint_payload,
    decode_record,
)
from security.cose import CoseError, parse1
from security.keyring import KeyChainError, open_certificate
from security.keys import kid_for

from .outcome import Alert, AlertClass
from .schema import AuditBatch
from .state import GatewayState, LogWitness
from .store import GatewayTxn, LearnedKey

_COSE_TAG18 = 0xD2


def witness(txn: GatewayTxn, gw: str, seq: int, batch: AuditBatch) -> tuple[list[Alert], int]:
    """Store a verified audit message's entries and check every entry that is now in
    order. Returns the alerts (at most a few per message) and the keys learned."""
    st = txn.state
    alerts: list[Alert] = []

    def alert(cls: AlertClass, detail: str) -> None:
        if len(alerts) < 8:  # one message cannot flood the alert table
            alerts.append(Alert(cls, gw, seq, detail))

    offsets, off = [], batch.offset
    for e in batch.entries:
        offsets.append((off, e))
        off += len(e)
    w = st.logs.get(batch.log)
    for offset, stored, offered in txn.put_audit_entries(batch.log, offsets, seq):
        alert(*_rewrite(txn, batch.log, offset, stored, offered, w))

    if w is None:
        w = _start(st, batch, alert)
    elif batch.offset == w.next_offset and _base(batch) != _here(w):
        alert(
            AlertClass.AUDIT_INCONSISTENT,
            f"log {batch.log.hex()}: the gateway states another log state at byte "
            f"{batch.offset} than the witness computed (size {batch.base_size} vs {w.size})",
        )
    learned = 0
    for offset, entry in txn.audit_entries(batch.log, w.next_offset):
        if offset != w.next_offset:
            break  # a hole: later entries wait for it
        problem, new_key = _check(txn, batch.log, w, entry)
        if problem is not None:
            alert(*problem)
        learned += new_key
        w.next_offset = offset + len(entry)
    return alerts, learned


def compare(txn: GatewayTxn, gw: str, seq: int, batch: AuditBatch) -> list[Alert]:
    """For an audit message the classification refused (a conflict or a replay: the
    gateway reuses seqs, e.g. after its state was rolled back): compare its entries with
    what the witness holds, without storing them. A rollback shows here too."""
    offsets, off = [], batch.offset
    for e in batch.entries:
        offsets.append((off, e))
        off += len(e)
    w = txn.state.logs.get(batch.log)
    found = txn.put_audit_entries(batch.log, offsets, seq, insert=False)
    alerts = []
    for o, stored, offered in found[:1]:  # one is enough to say it
        cls, detail = _rewrite(txn, batch.log, o, stored, offered, w)
        alerts.append(Alert(cls, gw, seq, detail))
    return alerts


def _base(b: AuditBatch) -> tuple[int, bytes, bytes, list[bytes]]:
    return b.base_size, b.base_head, b.base_cp_prev, list(b.base_frontier)


def _here(w: LogWitness) -> tuple[int, bytes, bytes, list[bytes]]:
    return w.size, w.head, w.cp_prev, list(w.frontier)


def _start(st: GatewayState, b: AuditBatch, alert: object) -> LogWitness:
    """A log the witness has not seen: the gateway's first, a reset, or unannounced."""
    assert callable(alert)
    log = b.log.hex()
    if st.current_log is not None:
        old = st.current_log.hex()
        if b.is_reset:
            alert(
                AlertClass.AUDIT_RESET,
                f"new audit log {log} replaces {old} (the gateway says: {b.reset_reason})",
            )
        else:
            alert(
                AlertClass.AUDIT_NEW_LOG,
                f"audit log {log} appeared without a reset notice while {old} was witnessed: "
                "the gateway's log was deleted or replaced",
            )
    w = LogWitness(
        b.offset, b.base_size, b.base_head, b.base_cp_prev, list(b.base_frontier), b.offset
    )
    st.logs[b.log] = w
    st.current_log = b.log
    return w


def _rewrite(
    txn: GatewayTxn,
    log_id: bytes,
    offset: int,
    stored: bytes,
    offered: bytes,
    w: LogWitness | None,
) -> tuple[AlertClass, str]:
    where = f"log {log_id.hex()} at byte {offset}"
    if offered[:1] == bytes((_COSE_TAG18,)):
        try:
            env = parse1(offered)
            key = txn.keys.get(env.kid)
            if key is not None:
                env.verify(key, CHECKPOINT_AAD)
                cp = decode_checkpoint_payload(env.payload, env.kid, offered)
                seen = w.max_cp_size if w is not None else 0
                if cp.size < seen:
                    return (
                        AlertClass.AUDIT_SHRANK,
                        f"{where}: a checkpoint of {cp.size} records where the witness already "
                        f"saw {seen}: the log was rolled back or cut",
                    )
        except (CoseError, FormatError):
            pass
    return (
        AlertClass.AUDIT_REWRITTEN,
        f"{where}: an entry differs from the one witnessed there: the log was rolled back "
        "or rewritten",
    )


def _check(
    txn: GatewayTxn, log_id: bytes, w: LogWitness, entry: bytes
) -> tuple[tuple[AlertClass, str] | None, int]:
    """Check one entry in file order and advance ``w``; (problem or None, keys learned)."""
    where = f"log {log_id.hex()} at byte {w.next_offset}"
    if entry[0] != _COSE_TAG18:
        try:
            rec = decode_record(entry)
        except FormatError as exc:
            return (AlertClass.AUDIT_INCONSISTENT, f"{where}: not a record: {exc}"), 0
        m = w.merkle()
        m.append(rec.hash)
        problem = None
        if rec.seq != w.size or rec.prev != w.head:
            problem = (
                AlertClass.AUDIT_INCONSISTENT,
                f"{where}: record seq {rec.seq} does not extend the chain (expected seq {w.size})",
            )
        w.size, w.head, w.frontier = m.size, rec.hash, list(m._stack)
        learned = 0
        cert = rec.detail.get("cert") if rec.event == "key_rotated" else None
        if type(cert) is bytes:
            learned = _learn(txn, cert)
        return problem, learned
    try:
        env = parse1(entry)
        key = txn.keys.get(env.kid)
        if key is None:
            return (
                AlertClass.AUDIT_BAD_CHECKPOINT,
                f"{where}: a checkpoint signed by kid {env.kid.hex()}, not a key of this gateway",
            ), 0
        env.verify(key, CHECKPOINT_AAD)
        cp = decode_checkpoint_payload(env.payload, env.kid, entry)
    except (CoseError, FormatError) as exc:
        return (AlertClass.AUDIT_BAD_CHECKPOINT, f"{where}: {exc}"), 0
    problems = []
    if cp.log_id != log_id:
        problems.append(f"belongs to log {cp.log_id.hex()}")
    if cp.size != w.size:
        problems.append(f"states {cp.size} records, the witness counted {w.size}")
    elif cp.root != w.merkle().root():
        problems.append("its Merkle root does not match the records")
    if cp.head != w.head:
        problems.append("its head is not the last record")
    if cp.prev != w.cp_prev:
        problems.append("it does not chain to the previous checkpoint")
    shrank = cp.size < w.max_cp_size
    w.cp_prev = checkpoint_hash(entry)
    w.checkpoints += 1
    w.max_cp_size = max(w.max_cp_size, cp.size)
    w.last_cp_ts = cp.ts_ns
    if shrank:
        return (AlertClass.AUDIT_SHRANK, f"{where}: checkpoint of {cp.size} records"), 0
    if problems:
        return (AlertClass.AUDIT_INCONSISTENT, f"{where}: checkpoint " + "; ".join(problems)), 0
    return None, 0


def _learn(txn: GatewayTxn, cert: bytes) -> int:
    """A key_rotated record's certificate: trusted if a key of this gateway signed it."""
    try:
        c = open_certificate(cert, txn.keys)
    except (CoseError, KeyChainError, ValueError):
        return 0
    if c.kid in txn.keys:
        return 0
    txn.learn_key(LearnedKey(c.kid, c.public_key, c.n, c.signer_kid))
    return 1


def learn_from_keychain(
    txn: GatewayTxn, chain: list[bytes], wanted: bytes
) -> Ed25519PublicKey | None:
    """Follow the certificates a message offers until ``wanted`` is trusted (each one must
    verify with a key this gateway already has). At most len(chain) signature checks."""
    pending = list(chain)
    while wanted not in txn.keys and pending:
        progress = False
        for cert in list(pending):
            try:
                signer = parse1(cert).kid
            except CoseError:
                pending.remove(cert)
                continue
            if signer not in txn.keys:
                continue
            pending.remove(cert)
            progress = True
            try:
                c = open_certificate(cert, txn.keys)
            except (CoseError, KeyChainError, ValueError):
                continue
            if c.kid not in txn.keys and kid_for(c.public_key) == c.kid:
                txn.learn_key(LearnedKey(c.kid, c.public_key, c.n, c.signer_kid))
        if not progress:
            break
    return txn.keys.get(wanted)
