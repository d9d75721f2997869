"""Device key files: creation, modes, reloading, and refusals that name the file and the fix."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from security import DeviceKey, KeyFileError, kid_for, load_public_key


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def priv_file(state: Path) -> Path:
    return state / DeviceKey.PRIVATE_KEY_FILE


def pub_file(state: Path) -> Path:
    return state / DeviceKey.PUBLIC_KEY_FILE


@pytest.fixture
def restore_umask() -> Iterator[None]:
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_first_start_creates_key_files_with_exact_modes_whatever_the_umask(
    tmp_path: Path, restore_umask: None, mask: int
) -> None:
    os.umask(mask)
    key, created = DeviceKey.load_or_create(tmp_path)

    assert created
    assert mode(tmp_path / "keys") == 0o700
    assert mode(priv_file(tmp_path)) == 0o600
    assert mode(pub_file(tmp_path)) == 0o644
    assert priv_file(tmp_path).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert pub_file(tmp_path).read_bytes() == key.public_pem()
    # Nothing but the two key files: no temp file left behind.
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [
        "device.ed25519.pem",
        "device.pub.pem",
    ]


def test_state_dir_is_created_when_missing(tmp_path: Path) -> None:
    _, created = DeviceKey.load_or_create(tmp_path / "new" / "state")
    assert created
    assert priv_file(tmp_path / "new" / "state").is_file()


def test_second_start_loads_the_same_key(tmp_path: Path) -> None:
    first, _ = DeviceKey.load_or_create(tmp_path)
    second, created = DeviceKey.load_or_create(tmp_path)
    third = DeviceKey.load(priv_file(tmp_path))

    assert not created
    assert second.kid == first.kid == third.kid
    first.public_key.verify(second.sign(b"data"), b"data")


def test_kid_is_first_16_bytes_of_sha256_of_raw_public_key(tmp_path: Path) -> None:
    key, _ = DeviceKey.load_or_create(tmp_path)
    raw = key.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    assert len(raw) == 32
    assert key.kid == hashlib.sha256(raw).digest()[:16]
    assert len(key.kid) == 16
    assert kid_for(load_public_key(pub_file(tmp_path))) == key.kid


def test_repr_shows_kid_not_key_material(tmp_path: Path) -> None:
    key, _ = DeviceKey.load_or_create(tmp_path)
    assert repr(key) == f"DeviceKey(kid={key.kid.hex()})"


@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604, 0o660, 0o610, 0o601])
def test_private_key_accessible_by_group_or_others_is_refused_with_chmod_hint(
    tmp_path: Path, bad_mode: int
) -> None:
    DeviceKey.load_or_create(tmp_path)
    path = priv_file(tmp_path)
    path.chmod(bad_mode)

    for load in (lambda: DeviceKey.load_or_create(tmp_path), lambda: DeviceKey.load(path)):
        with pytest.raises(KeyFileError) as err:
            load()
        assert str(path) in str(err.value)
        assert f"chmod 600 {path}" in str(err.value)
        assert f"{bad_mode:04o}" in str(err.value)
    assert mode(path) == bad_mode  # reported, not silently "fixed"


@pytest.mark.parametrize("ok_mode", [0o600, 0o400])
def test_owner_only_private_key_is_accepted(tmp_path: Path, ok_mode: int) -> None:
    key, _ = DeviceKey.load_or_create(tmp_path)
    priv_file(tmp_path).chmod(ok_mode)
    assert DeviceKey.load_or_create(tmp_path)[0].kid == key.kid


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not a key\n",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        b"\x00\xff" * 100,
    ],
    ids=["empty", "text", "bad-base64-body", "binary"],
)
def test_garbage_private_key_is_refused_naming_the_file_and_never_replaced(
    tmp_path: Path, content: bytes
) -> None:
    path = priv_file(tmp_path)
    path.parent.mkdir(mode=0o700)
    path.write_bytes(content)
    path.chmod(0o600)

    with pytest.raises(KeyFileError) as err:
        DeviceKey.load_or_create(tmp_path)
    assert str(path) in str(err.value)
    assert "not a PEM private key" in str(err.value)
    # A damaged identity is for a person to look at, not replaced by a fresh one.
    assert path.read_bytes() == content
    assert not pub_file(tmp_path).exists()


def _write_private(path: Path, pem: bytes) -> None:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_bytes(pem)
    path.chmod(0o600)


@pytest.mark.parametrize("kind", ["rsa", "p256"])
def test_private_key_of_another_type_is_refused(tmp_path: Path, kind: str) -> None:
    other_key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    pem = other_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = priv_file(tmp_path)
    _write_private(path, pem)

    with pytest.raises(KeyFileError, match="device keys are Ed25519") as err:
        DeviceKey.load(path)
    assert str(path) in str(err.value)


def test_encrypted_private_key_is_refused_with_how_to_decrypt(tmp_path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    path = priv_file(tmp_path)
    _write_private(path, pem)

    with pytest.raises(KeyFileError, match="encrypted with a passphrase") as err:
        DeviceKey.load(path)
    assert f"openssl pkey -in {path}" in str(err.value)


def test_key_written_by_openssl_style_pkcs8_is_loaded(tmp_path: Path) -> None:
    """A key provisioned from outside (PKCS#8 PEM, 0600) is used as is."""
    private = Ed25519PrivateKey.generate()
    _write_private(
        priv_file(tmp_path),
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    key, created = DeviceKey.load_or_create(tmp_path)

    assert not created
    assert key.kid == kid_for(private.public_key())
    assert pub_file(tmp_path).read_bytes() == key.public_pem()  # written, since it was missing


def test_missing_private_key_for_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pem"
    with pytest.raises(KeyFileError, match="does not exist") as err:
        DeviceKey.load(path)
    assert str(path) in str(err.value)


def test_directory_in_place_of_private_key_is_refused(tmp_path: Path) -> None:
    path = priv_file(tmp_path)
    path.mkdir(parents=True)
    with pytest.raises(KeyFileError, match="not a regular file") as err:
        DeviceKey.load_or_create(tmp_path)
    assert str(path) in str(err.value)


def test_missing_public_key_file_is_recreated(tmp_path: Path) -> None:
    key, _ = DeviceKey.load_or_create(tmp_path)
    pub_file(tmp_path).unlink()

    again, created = DeviceKey.load_or_create(tmp_path)

    assert not created
    assert again.kid == key.kid
    assert pub_file(tmp_path).read_bytes() == key.public_pem()
    assert mode(pub_file(tmp_path)) == 0o644


def test_public_key_file_that_does_not_match_is_rewritten(tmp_path: Path) -> None:
    key, _ = DeviceKey.load_or_create(tmp_path)
    other, _ = DeviceKey.load_or_create(tmp_path / "other")
    pub_file(tmp_path).write_bytes(other.public_pem())

    DeviceKey.load_or_create(tmp_path)

    assert pub_file(tmp_path).read_bytes() == key.public_pem()


def _start_together(state: Path, n: int) -> list[tuple[DeviceKey, bool]]:
    barrier = threading.Barrier(n)
    results: list[tuple[DeviceKey, bool]] = []

    def start() -> None:
        barrier.wait()
        results.append(DeviceKey.load_or_create(state))

    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_first_starts_agree_on_one_key(tmp_path: Path) -> None:
    """Two processes starting at once must not end up with different identities."""
    for round_ in range(10):
        state = tmp_path / str(round_)
        results = _start_together(state, 6)

        assert len(results) == 6
        assert len({key.kid for key, _ in results}) == 1
        assert sum(created for _, created in results) == 1
        assert DeviceKey.load(priv_file(state)).kid == results[0][0].kid
        assert kid_for(load_public_key(pub_file(state))) == results[0][0].kid


# --- load_public_key -------------------------------------------------------------------


def test_load_public_key_reads_the_gateway_pub_file(tmp_path: Path) -> None:
    key, _ = DeviceKey.load_or_create(tmp_path)
    assert kid_for(load_public_key(str(pub_file(tmp_path)))) == key.kid


def test_load_public_key_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "device.pub.pem"
    with pytest.raises(KeyFileError, match="does not exist") as err:
        load_public_key(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "content", [b"", b"garbage", b"-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----\n"]
)
def test_load_public_key_garbage_names_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "device.pub.pem"
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match="not a PEM public key") as err:
        load_public_key(path)
    assert str(path) in str(err.value)


def test_load_public_key_given_the_private_key_file_is_refused(tmp_path: Path) -> None:
    DeviceKey.load_or_create(tmp_path)
    with pytest.raises(KeyFileError, match="not a PEM public key") as err:
        load_public_key(priv_file(tmp_path))
    assert str(priv_file(tmp_path)) in str(err.value)


def test_load_public_key_of_another_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p256.pub.pem"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyFileError, match="not an Ed25519 public key") as err:
        load_public_key(path)
    assert str(path) in str(err.value)


def test_load_public_key_on_a_directory_names_it(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read") as err:
        load_public_key(tmp_path)
    assert str(tmp_path) in str(err.value)
