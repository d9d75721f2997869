"""Audit log: the writer (durable, locked, checkpointed, recovering a torn tail), the format
(deterministic records, RFC 9162 Merkle tree, checkpoints any COSE verifier can check),
verification across key rotations, and the `edgegw audit` command.

The exhaustive tampering suite is in test_audit_mutations.py.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from security.audit import (
    AUDIT_FILE,
    AuditEvent,
    AuditLog,
    AuditLogBusy,
    AuditLogCorrupt,
    AuditLogError,
    AuditRecord,
    Checkpoint,
    Outcome,
    Problem,
    last_boot,
    verify,
)
from security.checkpoint import (
    CHECKPOINT_AAD,
    EMPTY_ROOT,
    MerkleFrontier,
    genesis_head,
    leaf_hash,
    merkle_root,
    open_checkpoint,
    parse_entries,
    peek_checkpoint,
)
from security.keyring import certify
from security.keys import DeviceKey

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "security.md"


def new_key() -> DeviceKey:
    return DeviceKey(Ed25519PrivateKey.generate())


KEY = new_key()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / AUDIT_FILE


# -- format ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(0, 70))
def test_merkle_frontier_equals_rfc9162_definition(n: int) -> None:
    leaves = [leaf_hash(i.to_bytes(2, "big")) for i in range(n)]
    f = MerkleFrontier()
    for leaf in leaves:
        f.append(leaf)
    assert f.size == n and f.root() == merkle_root(leaves)


def test_merkle_hashes_follow_rfc9162_domain_separation() -> None:
    # RFC 9162 section 2.1.1: MTH({}) = SHA-256(), leaf = SHA-256(0x00 || d),
    # node = SHA-256(0x01 || left || right).
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert a == hashlib.sha256(b"\x00a").digest()
    assert merkle_root([a, b]) == hashlib.sha256(b"\x01" + a + b).digest()


def test_records_are_deterministic_cbor_linked_by_hash(path: Path) -> None:
    with AuditLog(path, KEY, boot=3) as log:
        r0 = log.record("config_load", path="/etc/edgegw/config.yaml", sha256="ab" * 32)
        r1 = log.record("link_up", host="::1", port=8883)
    assert isinstance(r0, AuditRecord)
    body = cbor2.loads(r0.encoded)
    assert set(body) == {"seq", "boot", "ts_ns", "mono_ns", "event", "detail", "prev"}
    assert (body["seq"], body["boot"], body["event"]) == (0, 3, "config_load")
    assert body["prev"] == genesis_head(log.log_id)
    assert r1.prev == r0.hash == leaf_hash(r0.encoded)
    # Deterministic: re-encoding canonically gives the same bytes, keys in core order.
    assert cbor2.dumps(body, canonical=True) == r0.encoded
    assert r0.encoded in path.read_bytes() and r1.encoded in path.read_bytes()


@given(
    detail=st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-(2**63), 2**64 - 1)
            | st.text(max_size=20)
            | st.binary(max_size=20)
            | st.floats(allow_nan=False),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=5), inner, max_size=3)
            ),
            max_leaves=8,
        ),
        max_size=5,
    )
)
@settings(max_examples=60, deadline=None)
def test_any_plain_detail_round_trips_and_verifies(
    tmp_path_factory: pytest.TempPathFactory, detail: dict[str, Any]
) -> None:
    p = tmp_path_factory.mktemp("h") / AUDIT_FILE
    with AuditLog(p, KEY, boot=1) as log:
        rec = log.record("buffer_drop", **detail)
    stored = next(e.record for e in parse_entries(p.read_bytes()).entries if e.record)
    assert stored is not None and stored.encoded == rec.encoded
    assert cbor2.loads(stored.encoded)["detail"] == cbor2.loads(cbor2.dumps(detail))
    assert verify(p, [KEY.public_key]).ok


@pytest.mark.parametrize(
    "value", [dt.datetime.now(), {1, 2}, object(), {1: "int key"}, [b"ok", {"x": set()}]]
)
def test_detail_that_cbor_cannot_show_plainly_is_refused(path: Path, value: object) -> None:
    with AuditLog(path, KEY, boot=1) as log, pytest.raises(TypeError, match="detail"):
        log.record("config_change", value=value)
    assert verify(path, [KEY.public_key]).ok  # nothing half-written


def test_unknown_event_name_is_refused(path: Path) -> None:
    with AuditLog(path, KEY, boot=1) as log, pytest.raises(ValueError):
        log.record("coffee_break")


def test_event_names_are_the_documented_enum() -> None:
    names = {e.value for e in AuditEvent}
    assert {
        "start",
        "stop",
        "config_load",
        "config_change",
        "key_created",
        "key_rotated",
        "tls_failure",
        "auth_failure",
        "link_up",
        "link_down",
        "buffer_drop",
        "model_loaded",
        "model_refused",
        "clock_jump",
    } <= names
    doc = DOC.read_text(encoding="utf-8")
    for name in names:
        assert f"`{name}`" in doc, f"event {name} is not documented in docs/security.md"


# -- the writer -----------------------------------------------------------------------------


def test_new_log_is_private_and_starts_with_a_genesis_checkpoint(path: Path) -> None:
    with AuditLog(path, KEY, boot=1, origin="edgegw/gw1/audit") as log:
        pass
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entries = parse_entries(path.read_bytes()).entries
    assert [e.record for e in entries] == [None, None]  # open, close
    first = open_checkpoint(entries[0].raw, {KEY.kid: KEY.public_key})
    assert (first.size, first.root, first.head, first.why) == (
        0,
        EMPTY_ROOT,
        genesis_head(log.log_id),
        "open",
    )
    assert first.prev == bytes(32) and first.origin == "edgegw/gw1/audit"
    assert peek_checkpoint(entries[1].raw).why == "close"


def test_everything_appended_is_handed_to_the_publisher_in_file_order(path: Path) -> None:
    got: list[AuditRecord | Checkpoint] = []
    with AuditLog(path, KEY, boot=1, checkpoint_every=3, on_append=got.append) as log:
        for i in range(7):
            log.record("link_down", host="::1", error=f"timeout {i}")
    # The concatenated .encoded bytes ARE the file: what goes upstream is what is stored.
    assert b"".join(x.encoded for x in got) == path.read_bytes()
    kinds = ["R" if isinstance(x, AuditRecord) else x.why[0] for x in got]
    assert "".join(kinds) == "oRRRcRRRcRc"  # open, count x2, close


def test_a_failing_publisher_does_not_lose_the_record(path: Path) -> None:
    def boom(item: object) -> None:
        raise RuntimeError("broker down")

    with AuditLog(path, KEY, boot=1, on_append=boom) as log:
        log.record("link_down", host="::1")
    assert verify(path, [KEY.public_key]).records == 1


def test_checkpoint_every_n_records(path: Path) -> None:
    with AuditLog(path, KEY, boot=1, checkpoint_every=10) as log:
        for _ in range(25):
            log.record("buffer_drop", count=1, reason="full", intentional=True)
        assert log.unsealed == 5
    sizes = [
        peek_checkpoint(e.raw).size
        for e in parse_entries(path.read_bytes()).entries
        if e.record is None
    ]
    assert sizes == [0, 10, 20, 25]


def test_tick_seals_records_after_the_interval(path: Path) -> None:
    with AuditLog(path, KEY, boot=1, checkpoint_interval_s=0.05) as log:
        assert log.tick() is None  # nothing to seal
        log.record("link_up", host="::1")
        assert log.tick() is None  # not yet due
        time.sleep(0.06)
        cp = log.tick()
        assert cp is not None and cp.why == "interval" and cp.size == 1
        assert log.unsealed == 0 and log.tick() is None


def test_manual_checkpoint_and_close_is_idempotent(path: Path) -> None:
    log = AuditLog(path, KEY, boot=1)
    log.record("start", version="0.1.0")
    assert log.checkpoint().why == "manual"
    assert log.close() is not None and log.close() is None
    with pytest.raises(AuditLogError, match="closed"):
        log.record("stop")


def test_second_writer_is_refused_while_the_log_is_open(path: Path) -> None:
    with AuditLog(path, KEY, boot=1), pytest.raises(AuditLogBusy, match="running"):
        AuditLog(path, KEY, boot=2)
    AuditLog(path, KEY, boot=2).close()  # released on close


def test_reopening_continues_the_chain_across_boots(path: Path) -> None:
    for boot in (1, 2, 3):
        with AuditLog(path, KEY, boot=boot) as log:
            log.record("start", version="0.1.0")
            log.record("stop", reason="systemd")
    rep = verify(path, [KEY.public_key])
    assert rep.ok and rep.records == 6 and rep.warnings == []
    assert [r.boot for r in records_of(path)] == [1, 1, 2, 2, 3, 3]
    assert last_boot(path) == 3


def records_of(path: Path) -> list[AuditRecord]:
    return [e.record for e in parse_entries(path.read_bytes()).entries if e.record is not None]


CRASH = """
import os, sys
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from security.audit import AuditLog
from security.keys import DeviceKey
key = DeviceKey(load_pem_private_key(open(sys.argv[2], "rb").read(), None))
log = AuditLog(sys.argv[1], key, boot=int(sys.argv[3]))
log.record("start", version="0.1.0")
log.record("link_up", host="::1")
os.kill(os.getpid(), 9)
"""


def write_key(tmp_path: Path, key: DeviceKey) -> Path:
    from cryptography.hazmat.primitives import serialization

    p = tmp_path / "k.pem"
    p.write_bytes(
        key._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return p


def test_sigkill_loses_no_returned_record_and_shows_as_unclean(tmp_path: Path, path: Path) -> None:
    keyfile = write_key(tmp_path, KEY)
    proc = subprocess.run(
        [sys.executable, "-c", CRASH, str(path), str(keyfile), "1"], cwd=REPO, check=False
    )
    assert proc.returncode == -9
    rep = verify(path, [KEY.public_key])
    assert rep.outcome is Outcome.UNSEALED_TAIL and rep.records == 2 and rep.exit_code == 3
    with AuditLog(path, KEY, boot=2) as log:  # the next start seals what it finds
        log.record("start", version="0.1.0")
    rep = verify(path, [KEY.public_key])
    assert rep.ok and rep.records == 3
    assert any(
        "boot 1 did not end with a clean close" in w and "seq 0..1 unsealed" in w
        for w in rep.warnings
    )


def test_torn_final_entry_is_cut_kept_aside_and_noted(path: Path) -> None:
    with AuditLog(path, KEY, boot=1) as log:
        log.record("start", version="0.1.0")
    rec = log_record_bytes(path)
    with open(path, "ab") as f:  # a power cut in the middle of the next append
        f.write(rec[: len(rec) // 2])
    assert verify(path, [KEY.public_key]).outcome is Outcome.UNSEALED_TAIL
    with AuditLog(path, KEY, boot=2) as log:
        assert log.size == 1
    kept = list(path.parent.glob(f"{AUDIT_FILE}.torn-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == rec[: len(rec) // 2]
    rep = verify(path, [KEY.public_key])
    assert rep.ok and any("torn final entry" in w for w in rep.warnings)


def log_record_bytes(path: Path) -> bytes:
    return records_of(path)[-1].encoded


def test_damaged_log_is_refused_at_open_and_can_be_set_aside(path: Path) -> None:
    with AuditLog(path, KEY, boot=1) as log:
        log.record("start", version="0.1.0")
        log.record("stop")
    data = bytearray(path.read_bytes())
    first = records_of(path)[0]
    data[data.index(first.encoded) + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(AuditLogCorrupt, match="edgegw audit verify"):
        AuditLog(path, KEY, boot=2)
    moved = AuditLog.set_aside(path)
    assert moved.exists() and not path.exists()
    with AuditLog(path, KEY, boot=2) as log:
        log.record("audit_reset", file=moved.name, reason="damaged at open")
    assert verify(path, [KEY.public_key]).ok


def test_edited_log_is_refused_at_open_rather_than_resealed(path: Path) -> None:
    """The next start must not sign over tampering done while the daemon was stopped."""
    with AuditLog(path, KEY, boot=1) as log:
        r = log.record("config_change", sha256="aa" * 32)
        log.record("stop")
    data = path.read_bytes().replace(
        r.encoded,
        cbor2.dumps({**cbor2.loads(r.encoded), "detail": {"sha256": "bb" * 32}}, canonical=True),
    )
    path.write_bytes(data)
    with pytest.raises(AuditLogCorrupt):
        AuditLog(path, KEY, boot=2)


def test_disk_full_leaves_no_partial_entry(tmp_path: Path, path: Path) -> None:
    """A write cut short by the file size limit (as by a full disk) is rolled back."""
    keyfile = write_key(tmp_path, KEY)
    code = """
import resource, signal, sys
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from security.audit import AuditLog, AuditLogError
from security.keys import DeviceKey
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
key = DeviceKey(load_pem_private_key(open(sys.argv[2], "rb").read(), None))
log = AuditLog(sys.argv[1], key, boot=1)
log.record("start", version="0.1.0")
import os
size = os.path.getsize(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 40, size + 40))
try:
    log.record("config_change", sha256="ab" * 64)
except AuditLogError as exc:
    print("refused:", exc)
assert os.path.getsize(sys.argv[1]) == size, "partial entry left"
"""
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), str(keyfile)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "refused:" in out.stdout and "cannot append" in out.stdout
    rep = verify(path, [KEY.public_key])
    assert rep.outcome is Outcome.UNSEALED_TAIL and rep.records == 1  # no damage


# -- verification ---------------------------------------------------------------------------


def test_verified_range_and_signing_keys_are_reported(path: Path) -> None:
    with AuditLog(path, KEY, boot=1, checkpoint_every=4) as log:
        for _ in range(9):
            log.record("link_up", host="::1")
    rep = verify(path, {KEY.kid: KEY.public_key})
    assert rep.ok and rep.exit_code == 0 and rep.sealed == rep.records == 9
    assert rep.kids == [KEY.kid] and rep.log_id == log.log_id
    assert rep.first_ts_ns is not None and rep.last_ts_ns is not None
    assert rep.first_ts_ns <= rep.last_ts_ns
    assert rep.summary().startswith("OK: 9 records")


def test_wrong_key_is_unknown_key(path: Path) -> None:
    with AuditLog(path, KEY, boot=1) as log:
        log.record("start")
    rep = verify(path, [new_key().public_key])
    assert rep.outcome is Outcome.UNKNOWN_KEY and rep.problem is Problem.UNKNOWN_KEY
    assert rep.sealed == 0 and rep.exit_code == 4 and KEY.kid.hex() in rep.message


def test_rotation_inside_the_log_is_followed_from_the_root_key(path: Path) -> None:
    old, new = new_key(), new_key()
    with AuditLog(path, old, boot=1) as log:
        log.record("start")
        cert = certify(old, new.public_key, 1)
        log.record("key_rotated", old_kid=old.kid.hex(), new_kid=new.kid.hex(), n=1, cert=cert)
        log.signer = new
        log.record("stop")
    rep = verify(path, [old.public_key])
    assert rep.ok and set(rep.kids) == {old.kid, new.kid}


def test_rotation_without_its_record_needs_the_certificate(path: Path) -> None:
    old, new = new_key(), new_key()
    with AuditLog(path, old, boot=1) as log:
        log.record("start")
        log.signer = new  # e.g. the key_rotated record was never written
        log.record("stop")
    assert verify(path, [old.public_key]).outcome is Outcome.UNKNOWN_KEY
    cert = certify(old, new.public_key, 1)
    assert verify(path, [old.public_key], certificates=[cert]).ok


def test_certificate_signed_by_an_untrusted_key_does_not_help(path: Path) -> None:
    attacker, other = new_key(), new_key()
    with AuditLog(path, attacker, boot=1) as log:
        log.record("start")
        forged = certify(other, attacker.public_key, 1)
        log.record("key_rotated", cert=forged)
    assert verify(path, [KEY.public_key]).outcome is Outcome.UNKNOWN_KEY


def test_checkpoint_verifies_with_cbor2_and_cryptography_only(path: Path) -> None:
    """An independent reading of RFC 9052 section 4.4, as a platform would write it."""
    with AuditLog(path, KEY, boot=1) as log:
        log.record("start")
    raw = [e.raw for e in parse_entries(path.read_bytes()).entries if e.record is None][-1]
    tag = cbor2.loads(raw)
    assert tag.tag == 18
    protected, unprotected, payload, signature = tag.value
    assert cbor2.loads(protected) == {1: -8, 4: KEY.kid} and dict(unprotected) == {}
    to_sign = cbor2.dumps(["Signature1", protected, CHECKPOINT_AAD, payload])
    KEY.public_key.verify(signature, to_sign)
    body = cbor2.loads(payload)
    assert body["v"] == 1 and body["size"] == 1 and body["why"] == "close"


def test_checkpoint_and_telemetry_verify_with_pycose(path: Path) -> None:
    """Interop with an independent COSE library. pycose is not in the venv by default: add
    `pycose>=1.1,<2` to the test extra (docs/security.md, "Interoperability")."""
    pytest.importorskip("pycose")
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    from pycose.keys import OKPKey
    from pycose.keys.curves import Ed25519
    from pycose.messages import Sign1Message

    from security.cose import sign1

    with AuditLog(path, KEY, boot=1) as log:
        log.record("start")
    raw = [e.raw for e in parse_entries(path.read_bytes()).entries if e.record is None][-1]
    telemetry = sign1(b"\xa1avx", KEY, b"edgegw/gw1/telemetry")
    okp = OKPKey(crv=Ed25519, x=KEY.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw))
    for message, aad in ((raw, CHECKPOINT_AAD), (telemetry, b"edgegw/gw1/telemetry")):
        # pycose 1.1's decode() rejects what cbor2 >= 6 returns inside a tag (an immutable
        # tuple, pycose issue 141), so hand it the untagged array: strip the 1-byte tag 18.
        assert message[0] == 0xD2
        msg = Sign1Message.from_cose_obj(cbor2.loads(message[1:]), True)
        msg.key = okp
        msg.external_aad = aad
        assert msg.verify_signature()
        msg.external_aad = aad + b"x"
        assert not msg.verify_signature()


# -- the command ----------------------------------------------------------------------------


def run_cli(*argv: str) -> tuple[int, str, str]:
    from gateway.commands import audit as audit_cmd

    p = argparse.ArgumentParser(prog="edgegw")
    sub = p.add_subparsers(dest="command", required=True)
    audit_cmd.register(sub)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args = p.parse_args(list(argv))
            code = args.func(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return int(code or 0), out.getvalue(), err.getvalue()


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A closed log of 12 records, and the public key file."""
    p = tmp_path / AUDIT_FILE
    with AuditLog(p, KEY, boot=4, checkpoint_every=5) as log:
        for i in range(12):
            log.record("config_change" if i % 3 == 0 else "link_up", n=i)
    pub = tmp_path / "gw.pub.pem"
    pub.write_bytes(KEY.public_pem())
    yield p, pub


def test_cli_verify_ok(logged: tuple[Path, Path]) -> None:
    p, pub = logged
    code, out, _ = run_cli("audit", "verify", str(p), "--pubkey", str(pub))
    assert code == 0 and "OK — 12 records (seq 0..11)" in out


def test_cli_verify_names_the_first_bad_record_and_exits_1(logged: tuple[Path, Path]) -> None:
    p, pub = logged
    data = p.read_bytes()
    victim = records_of(p)[7].encoded
    p.write_bytes(data.replace(victim, b""))
    code, out, _ = run_cli("audit", "verify", str(p), "--pubkey", str(pub))
    assert code == 1 and "TAMPERED" in out and "first bad record: seq 7 (deleted)" in out
    code, out, _ = run_cli("audit", "verify", str(p), "--pubkey", str(pub), "--json")
    rep = json.loads(out)
    assert code == 1 and rep["outcome"] == "tampered" and rep["first_bad"] == 7


def test_cli_verify_unsealed_tail_exits_3(logged: tuple[Path, Path]) -> None:
    p, pub = logged
    last = records_of(p)[-1]
    data = p.read_bytes()
    p.write_bytes(data[: data.index(last.encoded) + len(last.encoded)])
    code, out, _ = run_cli("audit", "verify", str(p), "--pubkey", str(pub))
    assert code == 3 and "UNSEALED TAIL" in out and "seq 10..11" in out


def test_cli_verify_unknown_key_exits_4_and_bad_key_file_2(
    logged: tuple[Path, Path], tmp_path: Path
) -> None:
    p, _ = logged
    other = tmp_path / "other.pem"
    other.write_bytes(new_key().public_pem())
    code, out, _ = run_cli("audit", "verify", str(p), "--pubkey", str(other))
    assert code == 4 and "UNKNOWN KEY" in out
    (tmp_path / "junk.pem").write_text("not a key")
    code, _, err = run_cli("audit", "verify", str(p), "--pubkey", str(tmp_path / "junk.pem"))
    assert code == 2 and "junk.pem" in err


def test_cli_verify_help_documents_every_exit_code() -> None:
    from gateway.commands.audit import VERIFY_EXITS

    for code, name in (
        (0, "OK"),
        (1, "TAMPERED"),
        (2, "bad input"),
        (3, "UNSEALED TAIL"),
        (4, "UNKNOWN KEY"),
    ):
        assert f"{code}  {name}" in VERIFY_EXITS
    code, out, _ = run_cli("audit", "verify", "--help")
    assert code == 0 and "exit status" in out and "example:" in out


def test_cli_show_filters_by_type_and_time(logged: tuple[Path, Path]) -> None:
    p, _ = logged
    code, out, _ = run_cli("audit", "show", str(p), "--type", "config_change")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 4 and all("config_change" in x for x in lines)
    code, out, _ = run_cli("audit", "show", str(p))
    assert "checkpoint (close)" in out and len(out.splitlines()) == 12 + 4  # open, 5, 10, close
    recs = records_of(p)
    # Midway between records (each append is fsynced, so they are far more than 1 µs apart).
    since = dt.datetime.fromtimestamp((recs[4].ts_ns + recs[5].ts_ns) / 2e9, dt.UTC)
    until = dt.datetime.fromtimestamp((recs[8].ts_ns + recs[9].ts_ns) / 2e9, dt.UTC)
    code, out, _ = run_cli(
        "audit",
        "show",
        str(p),
        "--json",
        "--type",
        "link_up",
        "--type",
        "config_change",
        "--since",
        since.isoformat(),
        "--until",
        until.isoformat(),
    )
    seqs = [json.loads(x)["seq"] for x in out.splitlines()]
    assert code == 0 and seqs == [5, 6, 7, 8]


def test_cli_show_refuses_an_unknown_type_and_a_bad_time(logged: tuple[Path, Path]) -> None:
    p, _ = logged
    code, _, err = run_cli("audit", "show", str(p), "--type", "nope")
    assert code == 2 and "config_change" in err
    code, _, err = run_cli("audit", "show", str(p), "--since", "yesterday")
    assert code == 2 and "ISO 8601" in err


def test_audit_file_mode_survives_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        AuditLog(tmp_path / AUDIT_FILE, KEY, boot=1).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / AUDIT_FILE).stat().st_mode) == 0o600
