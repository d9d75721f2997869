"""End to end: a real ``edgegw run`` with a tiny ``audit.segment_mib`` and
``archive: move``, a real mosquitto behind a link the test cuts, a plain paho subscriber
as the platform. While the link is down the log rolls over into several segments and none
is archived (no PUBACK); once the link is up, every closed segment is moved to the archive
directory, each with a ``segment_archived`` record whose SHA-256 is the file's, and the
platform's copy of the log is byte for byte the archived + live segments, which
``edgegw audit verify`` passes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.audit_archive import CHECK_S
from gateway.mosquitto import Mosquitto, free_port
from security import AUDIT_FILE
from security.checkpoint import parse_entries
from security.keyring import ROOT_FILE
from security.keys import load_public_key
from security.segments import log_dir_files
from security.segverify import read_files

from ..linkproxy import LinkProxy
from .upstream import REPO, Collector, Gateway, verify_all, wait_for

GW = "gw-arch"


@pytest.fixture
def proxy(broker: Mosquitto) -> Iterator[LinkProxy]:
    p = LinkProxy(("::1", broker.port))
    try:
        yield p
    finally:
        p.close()


def test_segments_are_archived_once_the_platform_acknowledged_them(
    tmp_path: Path, broker: Mosquitto, proxy: LinkProxy
) -> None:
    state = tmp_path / "state"
    config = tmp_path / "gw.yaml"
    dead = free_port("127.0.0.1")
    config.write_text(
        f"gateway: {{id: {GW}, state_dir: state, flush_window_ms: 100}}\n"
        f"uplink: {{host: '::1', port: {proxy.port}, reconnect_max_s: 1}}\n"
        "audit: {checkpoint_every: 1, segment_mib: 0.002, archive: move}\n"
        "devices:\n"
        f"  - {{name: plc, protocol: modbus_tcp, host: 127.0.0.1, port: {dead},\n"
        "      poll_interval_ms: 500, tags: [{name: t, address: 0, type: uint16}]}\n"
    )
    log = state / AUDIT_FILE
    archive = state / "audit-archive"
    rx = Collector(broker.port, f"edgegw/{GW}/#")
    gw = Gateway(config, state, tmp_path / "gw.log")
    proxy.cut()
    try:
        gw.start()

        def size() -> int:  # of the whole log, wherever its segments are
            files = [f for _, f in log_dir_files(log)] + list(archive.rglob("*.cborseq"))
            return sum(f.stat().st_size for f in files)

        for _ in range(12):  # each reload: a config_change record and its checkpoint
            before = size()
            assert gw.proc is not None
            gw.proc.send_signal(signal.SIGHUP)
            wait_for(lambda before=before: size() > before, "the reload's audit record")
        live_before = log_dir_files(log)
        assert len(live_before) >= 3, live_before
        time.sleep(CHECK_S + 1)  # the archiver looked (at each roll-over and every 5 s)
        assert not archive.exists()  # no PUBACK: nothing acknowledged, nothing moved
        assert log_dir_files(log)[: len(live_before) - 1] == live_before[:-1]

        proxy.restore()
        wait_for(lambda: len(log_dir_files(log)) == 1, "every closed segment archived", 60)
        gw.stop()
    finally:
        gw.cleanup()
        rx_messages = rx.snapshot
    files = [f for _, f in log_dir_files(log)] + sorted(archive.rglob("*.cborseq"))
    infos = read_files(files)
    assert [i.seg for i in infos] == list(range(len(infos))) and len(infos) >= 4
    data = b"".join(i.data for i in infos)
    # every archived file is named in a record with its SHA-256 (moved, not copied twice)
    recs = [
        e.record.detail
        for e in parse_entries(data).entries
        if e.record is not None and e.record.event == "segment_archived"
    ]
    by_seg = {r["segment"]: r for r in recs}
    moved = [i for i in infos if archive in i.path.parents]
    assert len(moved) >= 3
    for i in moved:
        r = by_seg[i.seg]
        assert r["sha256"] == hashlib.sha256(i.data).hexdigest() and r["action"] == "move"
        assert Path(r["to"]) == i.path and i.path.stat().st_mode & 0o777 == 0o600
    # the platform holds exactly these bytes
    root = load_public_key(state / ROOT_FILE)
    wait_for(lambda: data in verify_all(rx_messages(), root).logs.values(), "the copy upstream")
    rx.close()
    # and the offline verifier passes the live + archived segments
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "audit",
            "verify",
            str(log),
            "--archive",
            str(archive),
            "--pubkey",
            str(state / ROOT_FILE),
        ],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"segments 0..{len(infos) - 1} in {len(infos)} files" in r.stdout
