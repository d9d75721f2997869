"""Enrolment: which root key speaks for which gateway id, from a directory or a YAML file;
every mistake named with its file and the fix; a store never re-used for another key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.receiver import (
    EnrolmentChanged,
    EnrolmentError,
    Enrolments,
    Outcome,
    Receiver,
    SqliteStore,
)
from security import DeviceKey
from tests.conftest import REPO


def key(tmp_path: Path, name: str) -> DeviceKey:
    return DeviceKey.load_or_create(tmp_path / "keys" / name)[0]


def pem(k: DeviceKey) -> str:
    return k.public_pem().decode()


def test_a_directory_of_pem_files(tmp_path: Path) -> None:
    d = tmp_path / "enrolled"
    d.mkdir()
    a, b = key(tmp_path, "a"), key(tmp_path, "b")
    (d / "gw-a.pub.pem").write_text(pem(a))
    (d / "gw.b_2.pub.pem").write_text(pem(b))
    (d / "README").write_text("not a key")
    e = Enrolments()
    e.load(d)
    assert sorted(e) == ["gw-a", "gw.b_2"]
    assert e["gw-a"].root_kid == a.kid and e.owner_of_root(b.kid).gw == "gw.b_2"  # type: ignore[union-attr]


def test_a_yaml_file_with_paths_and_inline_pem(tmp_path: Path) -> None:
    a, b = key(tmp_path, "a"), key(tmp_path, "b")
    (tmp_path / "a.pem").write_text(pem(a))
    f = tmp_path / "fleet.yaml"
    inline = "\n".join("  " + line for line in pem(b).splitlines())
    f.write_text(f"gw-a: a.pem\ngw-b: |\n{inline}\n")
    e = Enrolments()
    e.load(f)
    assert {g: e[g].root_kid for g in e} == {"gw-a": a.kid, "gw-b": b.kid}


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("empty-dir", "holds no <gateway id>.pub.pem file"),
        ("missing", "no such enrolment directory or file"),
        ("same-key", "also enrolled for"),
        ("bad-id", "is not a gateway id"),
        ("not-a-key", "not a PEM public key"),
        ("yaml-list", "must map gateway ids"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, setup: str, message: str) -> None:
    a = key(tmp_path, "a")
    d = tmp_path / "enrolled"
    d.mkdir()
    target: Path = d
    if setup == "missing":
        target = tmp_path / "nope"
    elif setup == "same-key":
        (d / "gw-a.pub.pem").write_text(pem(a))
        (d / "gw-b.pub.pem").write_text(pem(a))
    elif setup == "bad-id":
        (d / "-bad.pub.pem").write_text(pem(a))
    elif setup == "not-a-key":
        (d / "gw-a.pub.pem").write_text("hello")
    elif setup == "yaml-list":
        target = tmp_path / "f.yaml"
        target.write_text("- gw-a\n")
    with pytest.raises(EnrolmentError, match=message) as err:
        Enrolments().load(target)
    assert str(tmp_path) in str(err.value)


def test_pubkey_shorthand_needs_the_gateway_id(tmp_path: Path) -> None:
    a = key(tmp_path, "a")
    f = tmp_path / "a.pem"
    f.write_text(pem(a))
    e = Enrolments()
    e.add_pubkey(f"gw-a={f}")
    assert e["gw-a"].root_kid == a.kid
    with pytest.raises(EnrolmentError, match="GATEWAY_ID=FILE"):
        Enrolments().add_pubkey(str(f))


def test_a_store_refuses_another_key_for_a_known_gateway(tmp_path: Path) -> None:
    a, b = key(tmp_path, "a"), key(tmp_path, "b")
    db = tmp_path / "rx.db"
    rx = Receiver({"gw-a": a.public_key}, "edgegw", store=SqliteStore(db))
    from tests.gateway.test_receiver import msg

    m = msg(a, 1, gw="gw-a", topic="edgegw/gw-a/telemetry")
    assert rx.handle("edgegw/gw-a/telemetry", m) is Outcome.VALID
    rx.store.close()
    with pytest.raises(EnrolmentChanged, match="re-enrolled gateway is a new identity"):
        Receiver({"gw-a": b.public_key}, "edgegw", store=SqliteStore(db))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def test_receive_refuses_bad_enrolment_with_exit_2(tmp_path: Path) -> None:
    r = cli("receive", "--db", str(tmp_path / "x.db"))
    assert r.returncode == 2 and "no gateway is enrolled" in r.stderr
    r = cli("receive", "--pubkey", "nokey.pem", "--db", str(tmp_path / "x.db"))
    assert r.returncode == 2 and "GATEWAY_ID=FILE" in r.stderr
    r = cli("receive", "--enrol", str(tmp_path / "none"), "--db", str(tmp_path / "x.db"))
    assert r.returncode == 2 and "no such enrolment" in r.stderr
