"""Key rotation: the signed chain from the enrolled key, crash recovery, the audit record,
what a receiver trusts, and the `edgegw keys` command."""

from __future__ import annotations

import argparse
import contextlib
import io
import stat
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from security import BadSignature, DeviceKey, UnknownKid, load_public_key, sign1, verify1
from security.audit import AUDIT_FILE, AuditLog, Outcome, verify
from security.keyring import (
    CHAIN_DIR,
    KEYCERT_AAD,
    NEXT_FILE,
    PUBLIC_DIR,
    ROOT_FILE,
    KeyChainError,
    certify,
    describe,
    init_keys,
    learn_keys,
    load_keyring,
    open_certificate,
    read_chain,
    recover,
    rotate,
    verify_chain,
)

TOPIC = b"edgegw/gw1/telemetry"


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_records_the_root_and_is_idempotent(tmp_path: Path) -> None:
    key, created = init_keys(tmp_path)
    assert created
    assert (tmp_path / ROOT_FILE).read_bytes() == key.public_pem()
    assert (tmp_path / PUBLIC_DIR / f"{key.kid.hex()}.pub.pem").read_bytes() == key.public_pem()
    again, created = init_keys(tmp_path)
    assert not created and again.kid == key.kid
    assert load_keyring(tmp_path) == {key.kid: key.public_key}


def test_rotation_chain_lets_the_enrolled_key_verify_every_later_key(tmp_path: Path) -> None:
    first, _ = init_keys(tmp_path)
    kids = [first.kid]
    messages = [sign1(b"before", first, TOPIC)]
    for n in range(1, 4):
        rot = rotate(tmp_path)
        assert rot.n == n and rot.old_kid == kids[-1] and rot.new_kid not in kids
        kids.append(rot.new_kid)
        messages.append(sign1(f"after {n}".encode(), rot.key, TOPIC))
    current = DeviceKey.load(tmp_path / DeviceKey.PRIVATE_KEY_FILE)
    assert current.kid == kids[-1]
    assert load_public_key(tmp_path / DeviceKey.PUBLIC_KEY_FILE).public_bytes_raw() == (
        current.public_key.public_bytes_raw()
    )
    # A receiver holding only the enrolled key, and the certificates in any order:
    keys = verify_chain(first.public_key, list(reversed(read_chain(tmp_path))))
    assert set(keys) == set(kids)
    for m in messages:  # everything signed before and after each rotation verifies
        verify1(m, keys, TOPIC)
    assert load_keyring(tmp_path, root=first.public_key) == keys
    assert len(list((tmp_path / PUBLIC_DIR).glob("*.pub.pem"))) == 4


def test_old_private_key_is_gone_after_rotation(tmp_path: Path) -> None:
    init_keys(tmp_path)
    before = (tmp_path / DeviceKey.PRIVATE_KEY_FILE).read_bytes()
    rotate(tmp_path)
    after = tmp_path / DeviceKey.PRIVATE_KEY_FILE
    assert after.read_bytes() != before and mode(after) == 0o600
    leftovers = [p.name for p in (tmp_path / "keys").iterdir() if p.suffix == ".tmp"]
    assert leftovers == [] and not (tmp_path / NEXT_FILE).exists()
    assert all(before not in p.read_bytes() for p in (tmp_path / "keys").rglob("*") if p.is_file())


def test_certificate_format(tmp_path: Path) -> None:
    old, _ = init_keys(tmp_path)
    rot = rotate(tmp_path)
    tag = cbor2.loads(rot.certificate)
    protected, _, payload, signature = tag.value
    assert tag.tag == 18 and cbor2.loads(protected) == {1: -8, 4: old.kid}
    body = cbor2.loads(payload)
    assert body["v"] == 1 and body["n"] == 1 and body["kid"] == rot.new_kid
    assert body["key"] == rot.key.public_key.public_bytes_raw()
    old.public_key.verify(signature, cbor2.dumps(["Signature1", protected, KEYCERT_AAD, payload]))
    assert rot.certificate_file.name == f"0001-{rot.new_kid.hex()}.cose"
    c = open_certificate(rot.certificate, {old.kid: old.public_key})
    assert (c.n, c.kid, c.signer_kid) == (1, rot.new_kid, old.kid)


def test_chain_from_the_wrong_root_is_refused(tmp_path: Path) -> None:
    init_keys(tmp_path)
    rotate(tmp_path)
    stranger = DeviceKey(Ed25519PrivateKey.generate())
    with pytest.raises(KeyChainError, match="not signed by a trusted key"):
        verify_chain(stranger.public_key, read_chain(tmp_path))


def test_altered_certificate_is_refused(tmp_path: Path) -> None:
    first, _ = init_keys(tmp_path)
    cert = bytearray(rotate(tmp_path).certificate)
    cert[-70] ^= 1  # inside the payload
    with pytest.raises(KeyChainError, match="does not verify"):
        verify_chain(first.public_key, [bytes(cert)])
    assert learn_keys({first.kid: first.public_key}, [bytes(cert)], strict=False) == {
        first.kid: first.public_key
    }


def test_a_certificate_cannot_stand_in_for_a_message(tmp_path: Path) -> None:
    """Distinct external AADs: a key certificate is not a valid telemetry message."""
    first, _ = init_keys(tmp_path)
    cert = rotate(tmp_path).certificate
    with pytest.raises(BadSignature):
        verify1(cert, {first.kid: first.public_key}, TOPIC)


def test_thief_of_the_state_directory_cannot_extend_a_verified_chain(tmp_path: Path) -> None:
    first, _ = init_keys(tmp_path)
    thief = DeviceKey(Ed25519PrivateKey.generate())
    mallory = DeviceKey(Ed25519PrivateKey.generate())
    forged = certify(thief, mallory.public_key, 1)
    with pytest.raises(KeyChainError):
        verify_chain(first.public_key, [forged])
    msg = sign1(b"lies", mallory, TOPIC)
    with pytest.raises(UnknownKid):
        verify1(msg, learn_keys({first.kid: first.public_key}, [forged], strict=False), TOPIC)


def test_rotation_is_audited_and_the_log_verifies_with_the_enrolled_key(tmp_path: Path) -> None:
    first, _ = init_keys(tmp_path)
    log_path = tmp_path / AUDIT_FILE
    with AuditLog(log_path, first, boot=1) as log:
        log.record("start", version="0.1.0")
        rot = rotate(tmp_path, audit=log)
        assert log.signer is rot.key
        log.record("stop", reason="test")
    rep = verify(log_path, [first.public_key])
    assert rep.ok and set(rep.kids) == {first.kid, rot.new_kid}
    rec = next(r for r in _records(log_path) if r.event == "key_rotated")
    assert rec.detail["cert"] == rot.certificate and rec.detail["new_kid"] == rot.new_kid.hex()


def _records(path: Path) -> list:  # type: ignore[type-arg]
    from security.checkpoint import parse_entries

    return [e.record for e in parse_entries(path.read_bytes()).entries if e.record]


def test_crash_after_the_certificate_is_completed(tmp_path: Path) -> None:
    old, _ = init_keys(tmp_path)
    new = DeviceKey(Ed25519PrivateKey.generate())
    _pending(tmp_path, new)
    cert = certify(old, new.public_key, 1)
    (tmp_path / CHAIN_DIR).mkdir(parents=True)
    (tmp_path / CHAIN_DIR / f"0001-{new.kid.hex()}.cose").write_bytes(cert)
    done = recover(tmp_path)
    assert done is not None and done.new_kid == new.kid and done.n == 1
    assert DeviceKey.load(tmp_path / DeviceKey.PRIVATE_KEY_FILE).kid == new.kid
    assert not (tmp_path / NEXT_FILE).exists()
    assert load_keyring(tmp_path, root=old.public_key).keys() == {old.kid, new.kid}


def test_crash_before_the_certificate_discards_the_pending_key(tmp_path: Path) -> None:
    old, _ = init_keys(tmp_path)
    _pending(tmp_path, DeviceKey(Ed25519PrivateKey.generate()))
    assert recover(tmp_path) is None
    assert not (tmp_path / NEXT_FILE).exists()
    assert DeviceKey.load(tmp_path / DeviceKey.PRIVATE_KEY_FILE).kid == old.kid
    assert rotate(tmp_path).n == 1  # and rotation goes on from there


def _pending(state: Path, key: DeviceKey) -> None:
    from cryptography.hazmat.primitives import serialization

    p = state / NEXT_FILE
    p.write_bytes(
        key._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    p.chmod(0o600)


def test_rotation_refuses_a_device_key_outside_the_chain(tmp_path: Path) -> None:
    init_keys(tmp_path)
    rotate(tmp_path)
    (tmp_path / DeviceKey.PRIVATE_KEY_FILE).unlink()
    DeviceKey.load_or_create(tmp_path)  # someone replaced the key by hand
    with pytest.raises(KeyChainError, match="not reached by the chain"):
        rotate(tmp_path)
    assert describe(tmp_path).problem is not None


def test_describe(tmp_path: Path) -> None:
    first, _ = init_keys(tmp_path)
    rot = rotate(tmp_path)
    k = describe(tmp_path)
    assert k.current is not None and k.current.kid == rot.new_kid
    assert k.root_kid == first.kid and [c.kid for c in k.chain] == [rot.new_kid]
    assert set(k.public_kids) == {first.kid, rot.new_kid} and k.problem is None


def test_key_certificate_verifies_with_pycose(tmp_path: Path) -> None:
    """Interop: needs `pycose>=1.1,<2` in the test extra (see docs/security.md)."""
    pytest.importorskip("pycose")
    from pycose.headers import KID
    from pycose.keys import OKPKey
    from pycose.keys.curves import Ed25519
    from pycose.messages import Sign1Message

    first, _ = init_keys(tmp_path)
    cert = rotate(tmp_path).certificate
    msg = Sign1Message.from_cose_obj(cbor2.loads(cert[1:]), True)  # see test_audit.py
    msg.key = OKPKey(crv=Ed25519, x=first.public_key.public_bytes_raw())
    msg.external_aad = KEYCERT_AAD
    assert msg.get_attr(KID) == first.kid and msg.verify_signature()


# -- the command ----------------------------------------------------------------------------


def run_cli(*argv: str) -> tuple[int, str, str]:
    from gateway.commands import keys as keys_cmd

    p = argparse.ArgumentParser(prog="edgegw")
    sub = p.add_subparsers(dest="command", required=True)
    keys_cmd.register(sub)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args = p.parse_args(list(argv))
            code = args.func(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return int(code or 0), out.getvalue(), err.getvalue()


def test_cli_init_rotate_show_export(tmp_path: Path) -> None:
    sd = ("--state-dir", str(tmp_path / "state"))
    code, out, _ = run_cli("keys", "init", *sd)
    assert code == 0 and out.startswith("created: device key ")
    root_kid = out.split()[3]
    code, out, _ = run_cli("keys", "init", *sd)
    assert code == 0 and out.startswith(f"exists: device key {root_kid}")
    code, out, _ = run_cli("keys", "rotate", *sd)
    assert code == 0 and out.startswith(f"rotated: {root_kid} -> ")
    code, out, _ = run_cli("keys", "show", *sd)
    assert code == 0 and f"root key:        {root_kid}" in out and "certified by" in out
    code, root_pem, _ = run_cli("keys", "export-public", "--root", *sd)
    assert code == 0 and root_pem == (tmp_path / "state" / ROOT_FILE).read_text()
    code, all_pem, _ = run_cli("keys", "export-public", "--all", *sd)
    assert all_pem.count("BEGIN PUBLIC KEY") == 2
    out_file = tmp_path / "gw.pub.pem"
    assert run_cli("keys", "export-public", *sd, "-o", str(out_file))[0] == 0
    current = DeviceKey.load(tmp_path / "state" / DeviceKey.PRIVATE_KEY_FILE)
    assert out_file.read_bytes() == current.public_pem()
    # The audit log holds key_created and key_rotated and verifies with the root key alone.
    rep = verify(tmp_path / "state" / AUDIT_FILE, [load_public_key(tmp_path / "state" / ROOT_FILE)])
    assert rep.ok and [r.event for r in _records(tmp_path / "state" / AUDIT_FILE)] == [
        "key_created",
        "key_rotated",
    ]


def test_cli_rotate_refuses_while_the_daemon_holds_the_audit_log(tmp_path: Path) -> None:
    key, _ = init_keys(tmp_path)
    with AuditLog(tmp_path / AUDIT_FILE, key, boot=1):
        code, _, err = run_cli("keys", "rotate", "--state-dir", str(tmp_path))
    assert code == 1 and "running edgegw" in err
    assert DeviceKey.load(tmp_path / DeviceKey.PRIVATE_KEY_FILE).kid == key.kid  # unchanged
    assert verify(tmp_path / AUDIT_FILE, [key.public_key]).outcome is Outcome.OK


def test_cli_rotate_without_a_key_says_to_init(tmp_path: Path) -> None:
    code, _, err = run_cli("keys", "rotate", "--state-dir", str(tmp_path))
    assert code == 1 and "keys init" in err


def test_cli_takes_the_state_dir_from_a_config(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "gateway:\n  id: press-3\n  state_dir: st\n"
        "devices:\n  - name: plc\n    protocol: modbus_tcp\n    host: 127.0.0.1\n"
        "    tags:\n      - {name: t, address: 0, type: uint16}\n"
    )
    code, _, err = run_cli("keys", "init", "-c", str(cfg))
    assert code == 0, err
    assert (tmp_path / "st" / DeviceKey.PRIVATE_KEY_FILE).exists()
    code, pem, err = run_cli("keys", "csr", "-c", str(cfg))
    assert code == 0 and pem.startswith("-----BEGIN CERTIFICATE REQUEST-----"), err
