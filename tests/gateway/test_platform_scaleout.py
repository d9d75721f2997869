"""Receivers that scale out, with real processes: several `edgegw receive` in one MQTT 5
shared subscription group (a real mosquitto) against one real PostgreSQL give exactly the
result of one receiver. Every message is stored once, duplicates and conflicts are
classified once, gaps come from the shared store; a receiver SIGKILLed mid-stream, or the
database restarted mid-stream, loses nothing and acknowledges nothing it did not commit."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.mosquitto import Mosquitto
from gateway.pgserver import PgServer
from gateway.receiver import open_store
from tests.gateway.fleet_rig import Fleet, Publisher, ReceiverProc, start_receiver, wait_for

POINTS = 20


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path / "fleet", 6)


def stored(db: str) -> tuple[int, int]:
    s = open_store(db)
    try:
        r = s.report()
        return r.messages, r.points
    finally:
        s.close()


def readings_rows(db: str) -> int:
    s = open_store(db)
    try:
        return int(s._query("SELECT count(*) FROM readings")[0][0])  # type: ignore[attr-defined]
    finally:
        s.close()


@pytest.fixture
def receivers() -> Iterator[list[ReceiverProc]]:
    procs: list[ReceiverProc] = []
    yield procs
    for p in procs:
        p.kill()


def test_three_receivers_in_one_group_behave_as_one(
    fleet: Fleet, broker: Mosquitto, pg_url: str, tmp_path: Path, receivers: list[ReceiverProc]
) -> None:
    for i in range(3):
        receivers.append(start_receiver(tmp_path, f"rx{i}", broker.port, pg_url, fleet.enrol_dir))
    per_gw = 60
    items = [
        (f"edgegw/{gw}/telemetry", fleet.message(gw, seq, POINTS))
        for seq in range(1, per_gw + 1)
        for gw in fleet.keys
        if seq != 30  # one gap per gateway
    ]
    rng = random.Random(7)
    dups = rng.sample(items, 25)  # re-deliveries (the gateway re-sends after a reconnect)
    gw0 = "gw00"
    conflict = (f"edgegw/{gw0}/telemetry", fleet.message(gw0, 5, POINTS + 1))
    pub = Publisher(broker.port)
    try:
        pub.publish(items)
        pub.publish(dups)
        pub.publish([conflict])
    finally:
        pub.close()
    unique = len(items)
    wait_for(lambda: stored(pg_url)[0] == unique, 120, "every message stored")
    for p in receivers:
        assert p.term() == 0, p.log.read_text()[-2000:]

    store = open_store(pg_url)
    try:
        rep = store.report()
    finally:
        store.close()
    assert (rep.messages, rep.points) == (unique, unique * POINTS)
    assert readings_rows(pg_url) == unique * POINTS  # no reading stored twice
    assert rep.gaps == len(fleet.keys)  # seq 30 of each gateway, seen from the shared store
    assert rep.missing == {gw: [(30, 30)] for gw in fleet.keys}
    assert (rep.alerts, rep.security_alerts) == (1, 1)  # the conflict, once
    counters = rep.receivers
    assert set(counters) == {"rx0", "rx1", "rx2"}
    assert sum(c["messages_verified"] for c in counters.values()) == unique
    assert sum(c["duplicates"] for c in counters.values()) == len(dups) == rep.duplicates
    assert sum(c["conflicts"] for c in counters.values()) == 1
    # the group shared the work
    assert all(c["messages_verified"] > 0 for c in counters.values()), counters
    # each receiver's own exit report shows the store's totals, not its own share
    for p in receivers:
        final = p.last_json()
        assert final["store"]["gaps"] == len(fleet.keys)
        assert final["store"]["messages"] == unique


def _stream(
    pub_port: int, fleet: Fleet, per_gw: int, stop_at: threading.Event | None = None
) -> tuple[threading.Thread, list[BaseException]]:
    """Publish per_gw messages of every gateway in small bursts, from a thread."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            pub = Publisher(pub_port)
            try:
                for seq in range(1, per_gw + 1):
                    pub.publish(
                        [
                            (f"edgegw/{gw}/telemetry", fleet.message(gw, seq, POINTS))
                            for gw in fleet.keys
                        ]
                    )
                    time.sleep(0.01)
            finally:
                pub.close()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    return t, errors


def test_a_receiver_killed_mid_stream_loses_nothing(
    fleet: Fleet, broker: Mosquitto, pg_url: str, tmp_path: Path, receivers: list[ReceiverProc]
) -> None:
    """SIGKILL one of two receivers while messages flow; what it held unacknowledged stays
    in its broker session, and comes back when it restarts with its client id (as systemd
    restarts it). Nothing lost, nothing stored twice."""
    for i in range(2):
        receivers.append(start_receiver(tmp_path, f"rx{i}", broker.port, pg_url, fleet.enrol_dir))
    per_gw = 150
    t, errors = _stream(broker.port, fleet, per_gw)
    wait_for(lambda: stored(pg_url)[0] > 150, 60, "the stream to start")
    receivers[1].kill()
    killed_at = stored(pg_url)[0]
    time.sleep(1.0)
    receivers.append(start_receiver(tmp_path, "rx1", broker.port, pg_url, fleet.enrol_dir))
    t.join(120)
    assert not t.is_alive() and errors == []
    total = per_gw * len(fleet.keys)
    assert killed_at < total, "the kill came after the stream had ended: no test"
    wait_for(lambda: stored(pg_url)[0] == total, 120, "every message stored")
    assert stored(pg_url) == (total, total * POINTS)
    assert readings_rows(pg_url) == total * POINTS
    store = open_store(pg_url)
    try:
        assert store.report().gaps == 0
    finally:
        store.close()


def test_postgres_restarted_mid_stream_loses_nothing(
    fleet: Fleet, broker: Mosquitto, tmp_path: Path, receivers: list[ReceiverProc]
) -> None:
    """The database stops while messages flow: the receivers store nothing and acknowledge
    nothing meanwhile (the broker keeps it), reconnect when it is back, and every message
    is then stored exactly once."""
    pg = PgServer().start()
    try:
        db = pg.url
        for i in range(2):
            receivers.append(start_receiver(tmp_path, f"rx{i}", broker.port, db, fleet.enrol_dir))
        per_gw = 120
        t, errors = _stream(broker.port, fleet, per_gw)
        wait_for(lambda: stored(db)[0] > 100, 60, "the stream to start")
        pg.stop("fast")
        time.sleep(3.0)
        pg.start()
        t.join(120)
        assert not t.is_alive() and errors == []
        total = per_gw * len(fleet.keys)
        wait_for(lambda: stored(db)[0] == total, 180, "every message stored after the restart")
        assert stored(db) == (total, total * POINTS)
        assert readings_rows(db) == total * POINTS
        logs = "".join(p.log.read_text() for p in receivers)
        assert "not acknowledged" in logs  # the outage was seen, not slept through
        for p in receivers:
            assert p.term() == 0
        store = open_store(db)
        try:
            rep = store.report()
        finally:
            store.close()
        assert rep.gaps == 0
        assert sum(c["store_errors"] for c in rep.receivers.values()) > 0
    finally:
        for p in receivers:
            p.kill()
        pg.remove()
