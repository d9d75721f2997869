"""The daemon's key must be justified from the enrolled root (``open_identity``): a key is
made only in a pristine state directory; a missing key where an identity exists, a key
the chain does not reach and a chain that does not verify are refused, naming the files.
The daemon-level behaviour (exit 2, outbox untouched) is in tests/gateway."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from security.audit import AUDIT_FILE, AuditLog
from security.keyring import (
    CHAIN_DIR,
    PUBLIC_DIR,
    ROOT_FILE,
    IdentityRefused,
    init_keys,
    open_certificate,
    open_identity,
    rotate,
)
from security.keys import DeviceKey


def test_a_pristine_state_directory_gets_a_key(tmp_path: Path) -> None:
    ident = open_identity(tmp_path)
    assert ident.created and ident.keychain == []
    assert ident.keyring == {ident.key.kid: ident.key.public_key}
    assert (tmp_path / ROOT_FILE).read_bytes() == ident.key.public_pem()
    again = open_identity(tmp_path)
    assert not again.created and again.key.kid == ident.key.kid


def test_a_key_made_before_root_files_existed_is_its_own_root(tmp_path: Path) -> None:
    key, _ = DeviceKey.load_or_create(tmp_path)  # keys/device.* only, as older releases
    ident = open_identity(tmp_path)
    assert ident.key.kid == key.kid and not ident.created and ident.keychain == []
    assert (tmp_path / ROOT_FILE).read_bytes() == key.public_pem()


@pytest.mark.parametrize(
    "trace", [ROOT_FILE, DeviceKey.PUBLIC_KEY_FILE, PUBLIC_DIR, CHAIN_DIR, AUDIT_FILE]
)
def test_a_missing_key_where_an_identity_exists_is_refused(tmp_path: Path, trace: str) -> None:
    """Any one trace of an identity is enough, alone."""
    key, _ = init_keys(tmp_path)
    with AuditLog(tmp_path / AUDIT_FILE, key, boot=1):
        pass
    kept = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    shutil.rmtree(tmp_path / "keys")
    (tmp_path / AUDIT_FILE).unlink()
    (tmp_path / trace).parent.mkdir(parents=True, exist_ok=True)
    if trace in (PUBLIC_DIR, CHAIN_DIR):
        (tmp_path / trace).mkdir()
    else:
        (tmp_path / trace).write_bytes(kept[tmp_path / trace])
    with pytest.raises(IdentityRefused) as exc:
        open_identity(tmp_path)
    msg = str(exc.value)
    assert str(tmp_path / DeviceKey.PRIVATE_KEY_FILE) in msg and "missing" in msg
    assert "behind your back" in msg and "Restore" in msg and "keys init" in msg
    assert not (tmp_path / DeviceKey.PRIVATE_KEY_FILE).exists()  # no new identity


def test_a_foreign_key_is_refused(tmp_path: Path) -> None:
    root, _ = init_keys(tmp_path)
    (tmp_path / DeviceKey.PRIVATE_KEY_FILE).unlink()
    foreign, _ = DeviceKey.load_or_create(tmp_path)  # a key put there by hand
    with pytest.raises(IdentityRefused) as exc:
        open_identity(tmp_path)
    msg = str(exc.value)
    assert foreign.kid.hex() in msg and root.kid.hex() in msg
    assert str(tmp_path / ROOT_FILE) in msg and "not reached" in msg


def test_a_foreign_key_in_a_state_without_root_file_is_refused(tmp_path: Path) -> None:
    DeviceKey.load_or_create(tmp_path)
    (tmp_path / DeviceKey.PRIVATE_KEY_FILE).unlink()
    (tmp_path / "other").mkdir()
    DeviceKey.load_or_create(tmp_path / "other")
    priv = tmp_path / DeviceKey.PRIVATE_KEY_FILE
    priv.write_bytes((tmp_path / "other" / DeviceKey.PRIVATE_KEY_FILE).read_bytes())
    priv.chmod(0o600)
    with pytest.raises(IdentityRefused, match=str(tmp_path / DeviceKey.PUBLIC_KEY_FILE)):
        open_identity(tmp_path)


def test_a_rotated_key_comes_with_its_chain(tmp_path: Path) -> None:
    root, _ = init_keys(tmp_path)
    r1, r2 = rotate(tmp_path), rotate(tmp_path)
    ident = open_identity(tmp_path)
    assert ident.key.kid == r2.new_kid
    assert ident.keychain == [r1.certificate, r2.certificate]
    keys = {root.kid: root.public_key}
    for cert in ident.keychain:  # each certificate verifies from the one before
        c = open_certificate(cert, keys)
        keys[c.kid] = c.public_key
    assert ident.key.kid in keys and set(ident.keyring) == {root.kid, r1.new_kid, r2.new_kid}


def test_an_altered_certificate_is_refused_and_named(tmp_path: Path) -> None:
    init_keys(tmp_path)
    rot = rotate(tmp_path)
    raw = bytearray(rot.certificate_file.read_bytes())
    raw[-5] ^= 1  # in the signature
    rot.certificate_file.write_bytes(bytes(raw))
    with pytest.raises(IdentityRefused, match=str(rot.certificate_file)):
        open_identity(tmp_path)


def test_a_missing_root_with_a_chain_is_refused(tmp_path: Path) -> None:
    init_keys(tmp_path)
    rotate(tmp_path)
    (tmp_path / ROOT_FILE).unlink()
    with pytest.raises(IdentityRefused, match="root public key"):
        open_identity(tmp_path)
    assert not (tmp_path / ROOT_FILE).exists()  # not re-made from the current key


def test_keys_init_refuses_to_replace_a_lost_key(tmp_path: Path) -> None:
    from tests.security.test_keyring import run_cli

    sd = ("--state-dir", str(tmp_path))
    code, out, _ = run_cli("keys", "init", *sd)
    assert code == 0 and out.startswith("created: ")
    (tmp_path / DeviceKey.PRIVATE_KEY_FILE).unlink()
    code, _, err = run_cli("keys", "init", *sd)
    assert code == 2 and "missing" in err and "behind your back" in err
    assert not (tmp_path / DeviceKey.PRIVATE_KEY_FILE).exists()
