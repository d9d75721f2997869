"""Everything the audit log holds reaches the platform, in order, byte for byte.

Real ``edgegw run`` processes, a real mosquitto, a plain paho subscriber. The upstream copy
(the entries of every ``audit`` message, placed by offset) must equal the device's log
file and verify (``security.audit.verify_bytes``) from the enrolled root key alone, across:
``keys init`` before the first start, ``keys rotate`` while stopped, records added by a
tool while stopped (more than one message's worth), the crash window between an audit
append and its outbox commit, a SIGKILL of the daemon, a damaged or vanished log (the new
log's first message carries ``reset``), and a forged tail (quarantined, named, and the
``tail_quarantined`` record published).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest

from gateway.mosquitto import Mosquitto, free_port
from security import AUDIT_FILE, DeviceKey, Outcome, load_public_key
from security.audit import AuditLog, last_boot, verify_bytes
from security.checkpoint import encode_record, parse_entries
from security.keyring import ROOT_FILE, load_keyring

from .upstream import REPO, Collector, Gateway, Upstream, verify_all, wait_for

GW = "gw-audit"


@pytest.fixture
def site(tmp_path: Path, broker: Mosquitto) -> Iterator[Site]:
    s = Site(tmp_path, broker)
    try:
        yield s
    finally:
        s.close()


class Site:
    """One gateway's state directory and config, its process, and the platform's view."""

    def __init__(self, tmp_path: Path, broker: Mosquitto) -> None:
        self.tmp = tmp_path
        self.state = tmp_path / "state"
        self.config = tmp_path / "gw.yaml"
        dead = free_port("127.0.0.1")  # nothing listens: the device reads BAD_COMM
        self.config.write_text(
            f"gateway: {{id: {GW}, state_dir: state, flush_window_ms: 100}}\n"
            f"uplink: {{host: '::1', port: {broker.port}}}\n"
            "audit: {checkpoint_every: 5}\n"
            "devices:\n"
            f"  - {{name: plc, protocol: modbus_tcp, host: 127.0.0.1, port: {dead},\n"
            "      poll_interval_ms: 200, tags: [{name: t, address: 0, type: uint16}]}\n"
        )
        self.gw = Gateway(self.config, self.state, tmp_path / "gw.log")
        self.rx = Collector(broker.port, f"edgegw/{GW}/#")

    @property
    def log_file(self) -> Path:
        return self.state / AUDIT_FILE

    def cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", *argv, "-c", str(self.config)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def run_once(self) -> None:
        self.start()
        self.gw.stop()

    def start(self) -> None:
        """Start the daemon and wait until it has published something."""
        n = len(self.rx.snapshot())
        self.gw.start()
        wait_for(lambda: len(self.rx.snapshot()) > n, "a message from the daemon")

    def upstream(self, *, rewrites: bool = False) -> Upstream:
        root = load_public_key(self.state / ROOT_FILE)
        return verify_all(self.rx.snapshot(), root, rewrites=rewrites)

    def wait_complete(self) -> Upstream:
        """Until the platform holds the whole log file (after a clean stop)."""
        data = self.log_file.read_bytes()
        wait_for(lambda: data in self.upstream().logs.values(), "the whole audit log upstream")
        return self.upstream()

    def close(self) -> None:
        self.gw.cleanup()
        self.rx.close()


def records(data: bytes) -> list[str]:
    return [e.record.event for e in parse_entries(data).entries if e.record is not None]


def assert_same_and_verified(site: Site) -> Upstream:
    up = site.wait_complete()
    data = site.log_file.read_bytes()
    (copy,) = [c for c in up.logs.values() if c == data]
    root = load_public_key(site.state / ROOT_FILE)
    rep = verify_bytes(copy, [root])
    assert rep.outcome is Outcome.OK, rep.summary()
    return up


def test_keys_init_before_the_first_start_is_published(site: Site) -> None:
    r = site.cli("keys", "init")
    assert r.returncode == 0, r.stderr
    site.run_once()
    up = assert_same_and_verified(site)
    assert records(site.log_file.read_bytes())[0] == "key_created"
    first = next(up.audits())
    assert first.body["offset"] == 0 and "reset" not in first.body
    assert not any(m.envelope.keychain for m in up.messages)  # the root signs: no header


def test_keys_rotate_while_stopped_then_restart(site: Site) -> None:
    assert site.cli("keys", "init").returncode == 0
    site.run_once()
    r = site.cli("keys", "rotate")
    assert r.returncode == 0, r.stderr
    site.run_once()
    r = site.cli("keys", "rotate")  # twice: the header carries both certificates
    assert r.returncode == 0, r.stderr
    site.run_once()
    up = assert_same_and_verified(site)
    assert records(site.log_file.read_bytes()).count("key_rotated") == 2
    ring = load_keyring(site.state)
    kids = {m.envelope.kid for m in up.messages}
    assert kids == set(ring) and len(kids) == 3  # root, then each rotated key in turn
    # every kind sealed by a rotated key carried its chain (verify_all checked each one)
    rotated = {m.body["kind"] for m in up.messages if m.envelope.keychain}
    assert {"audit", "telemetry"} <= rotated
    assert max(len(m.envelope.keychain) for m in up.messages) == 2


def test_records_added_while_stopped_go_first_even_beyond_one_message(site: Site) -> None:
    site.run_once()
    key = DeviceKey.load(site.state / DeviceKey.PRIVATE_KEY_FILE)
    before = site.log_file.stat().st_size
    with AuditLog(
        site.log_file, key, boot=last_boot(site.log_file), trusted_keys=load_keyring(site.state)
    ) as log:  # a tool: it opens and closes the log (checkpoints), as edgegw's own do
        for i in range(60):
            log.record("config_change", path=f"/etc/edgegw/{i}.yaml", sha256="ab" * 1500)
    assert site.log_file.stat().st_size - before > 2 * 64 * 1024
    site.run_once()
    up = assert_same_and_verified(site)
    backlog = [m for m in up.audits() if m.body["offset"] >= before]
    assert len(backlog) >= 3  # more than 64 KiB: several messages, each whole entries
    # published before anything this start recorded
    second_boot = [m for m in up.audits() if m.body["boot"] == 2]
    first_of_boot = min(second_boot, key=lambda m: m.seq)
    assert first_of_boot.body["offset"] == before


CRASH_WINDOW = """
import os, sys
from security.audit import AuditLog, last_boot
from security.keys import DeviceKey
key = DeviceKey.load(sys.argv[2])
log = AuditLog(sys.argv[1], key, boot=last_boot(sys.argv[1]))
log.record("link_up", host="::1", port=1883)
log.record("buffer_drop", count=3, reason="outbox_full", intentional=True)
os.kill(os.getpid(), 9)  # after the appends, before any outbox commit
"""


def test_a_crash_between_audit_append_and_outbox_commit_loses_nothing(site: Site) -> None:
    site.run_once()
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            CRASH_WINDOW,
            str(site.log_file),
            str(site.state / DeviceKey.PRIVATE_KEY_FILE),
        ],
        cwd=REPO,
        check=False,
    )
    assert r.returncode == -9
    site.run_once()
    assert_same_and_verified(site)
    assert "buffer_drop" in records(site.log_file.read_bytes())
    assert "tail_quarantined" not in records(site.log_file.read_bytes())  # a crash tail


def test_sigkill_of_the_daemon_then_restart(site: Site) -> None:
    site.start()
    site.gw.kill()
    site.run_once()
    assert_same_and_verified(site)


def test_a_damaged_log_is_set_aside_and_the_new_one_says_reset(site: Site) -> None:
    site.run_once()
    old = site.upstream()
    (old_id,) = old.logs
    published = site.log_file.read_bytes()
    assert old.logs[old_id] == published
    damaged = bytearray(published)
    damaged[len(damaged) // 2] ^= 0xFF
    site.log_file.write_bytes(bytes(damaged))
    site.run_once()
    up = assert_same_and_verified(site)
    (aside,) = site.state.glob(f"{AUDIT_FILE}.bad-*")
    assert aside.read_bytes() == bytes(damaged)
    new_id = next(k for k, v in up.logs.items() if v == site.log_file.read_bytes())
    assert new_id != old_id and up.logs[old_id] == published  # the old copy is intact
    first = min((m for m in up.audits() if m.body["log"] == new_id), key=lambda m: m.seq)
    assert first.body["offset"] == 0
    assert first.body["reset"]["old_log"] == old_id
    assert (
        "damaged" in first.body["reset"]["reason"] and aside.name in first.body["reset"]["reason"]
    )
    assert sum("reset" in m.body for m in up.audits()) == 1
    assert "audit_reset" in records(site.log_file.read_bytes())


def test_a_vanished_log_is_followed_by_a_reset(site: Site) -> None:
    site.run_once()
    (old_id,) = site.upstream().logs
    site.log_file.unlink()
    site.run_once()
    up = assert_same_and_verified(site)
    first = min((m for m in up.audits() if m.body["log"] != old_id), key=lambda m: m.seq)
    assert first.body["offset"] == 0 and first.body["reset"]["old_log"] == old_id
    assert "gone" in first.body["reset"]["reason"]


def test_a_log_cut_below_what_was_published_is_reported(site: Site) -> None:
    site.run_once()
    published = site.log_file.read_bytes()
    entries = parse_entries(published).entries
    cut = next(e.offset + len(e.raw) for e in entries if e.record is None)  # genesis only
    site.log_file.write_bytes(published[:cut])
    site.run_once()
    text = site.gw.text()
    assert f"{site.log_file}: the audit log was cut" in text
    assert f"{len(published)} bytes of it were published" in text and f"only {cut} bytes" in text
    data = site.log_file.read_bytes()
    wait_for(lambda: data in site.upstream(rewrites=True).logs.values(), "the new entries")
    up = site.upstream(rewrites=True)
    after = [m for m in up.audits() if m.body["boot"] == 2]
    first = min(after, key=lambda m: m.seq)
    # what the platform's witness gets: entries at an offset it already holds, and the
    # log's state before them (no record) is smaller than what it had (a rollback)
    assert first.body["offset"] == cut and first.body["base"][0] == 0
    assert up.rewrites == [(first.body["log"], cut)]


def test_a_forged_tail_is_quarantined_named_and_reported_upstream(site: Site) -> None:
    site.run_once()
    data = site.log_file.read_bytes()
    last = [e.record for e in parse_entries(data).entries if e.record is not None][-1]
    forged = encode_record(
        seq=last.seq + 1,
        boot=last.boot,
        ts_ns=last.ts_ns + 1,
        mono_ns=None,
        event="config_change",
        detail={"path": "/etc/edgegw/config.yaml", "sha256": "00" * 32},
        prev=last.hash,
    )
    with open(site.log_file, "ab") as f:
        f.write(forged)
    site.run_once()
    (kept,) = site.state.glob(f"{AUDIT_FILE}.forged-*")
    assert kept.read_bytes() == forged
    warning = [ln for ln in site.gw.text().splitlines() if "WARNING" in ln and str(kept) in ln]
    assert warning and "1 record(s)" in warning[0] and f"{len(forged)} bytes" in warning[0]
    up = assert_same_and_verified(site)
    copy = next(iter(up.logs.values()))
    assert forged not in copy
    details = [
        dict(e.record.detail)
        for e in parse_entries(copy).entries
        if e.record is not None and e.record.event == "tail_quarantined"
    ]
    assert details == [
        {
            "file": kept.name,
            "records": 1,
            "bytes": len(forged),
            "reason": "records after a clean close that no checkpoint seals",
        }
    ]


def test_audit_messages_carry_where_their_entries_sit(site: Site) -> None:
    site.run_once()
    up = assert_same_and_verified(site)
    for m in up.audits():
        assert set(m.body) == {
            "v",
            "gw",
            "seq",
            "boot",
            "kind",
            "t",
            "log",
            "offset",
            "base",
            "entries",
        }
        assert len(m.body["log"]) == 16 and all(type(e) is bytes for e in m.body["entries"])
        size, head, cp_prev, frontier = m.body["base"]
        assert len(head) == len(cp_prev) == 32 and len(frontier) == bin(size).count("1")
    raw = next(p for t, p in site.rx.snapshot() if t.endswith("/audit"))
    assert cbor2.loads(raw).tag == 18


def test_audit_messages_fit_a_broker_with_a_small_packet_limit(tmp_path: Path) -> None:
    """mosquitto max_packet_size 8192 and uplink.max_message_bytes 8000 (as the README
    says to set it, so what is sealed before a connect fits too): a backlog of records
    added while stopped (more than 64 KiB) goes as many audit messages, each within the
    limit; none is set aside, and the platform's copy is the whole log."""
    with Mosquitto(host="::1", workdir=tmp_path / "broker", max_packet_size=8192) as b:
        site = Site(tmp_path, b)
        try:
            text = site.config.read_text()
            site.config.write_text(
                text.replace(f"port: {b.port}}}", f"port: {b.port}, max_message_bytes: 8000}}")
            )
            assert "max_message_bytes: 8000" in site.config.read_text()
            site.run_once()
            key = DeviceKey.load(site.state / DeviceKey.PRIVATE_KEY_FILE)
            before = site.log_file.stat().st_size
            with AuditLog(
                site.log_file,
                key,
                boot=last_boot(site.log_file),
                trusted_keys=load_keyring(site.state),
            ) as log:
                for i in range(300):
                    log.record("config_change", path=f"/etc/edgegw/{i}.yaml", sha256="ab" * 100)
            assert site.log_file.stat().st_size - before > 64 * 1024
            site.run_once()
            up = assert_same_and_verified(site)
            raw = site.rx.snapshot()
        finally:
            site.close()
    assert max(len(payload) for _, payload in raw) <= 8000
    backlog = [m for m in up.audits() if m.body["offset"] >= before]
    assert len(backlog) >= 64 * 1024 // 8000  # split to fit, each whole entries
    assert not any(t.endswith("/notice") for t, _ in raw)  # nothing set aside
    assert "set aside" not in site.gw.text()
