"""Survivors of session 6's receiver mutation run (gateway/receiver core, intervals, trust,
state, rows, store, outcome) that mattered: how ``edgegw receive`` builds its receiver
(an ``Enrolments`` registry, no latency list growing forever), what the default store
keeps, topic prefixes, a message prepare() could not finish (redone in the store path,
never an acknowledged ERROR), prepare()'s fast path, keychains beside known and unknown
keys, the size limit, enrolment sources, which store a --db opens and --no-readings, a
command result's row, and the report's JSON."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.pgserver import PgServer
from gateway.receiver import Outcome, Receiver, SqliteStore
from gateway.receiver.core import Prepared, summary
from gateway.receiver.trust import Enrolment, Enrolments
from gateway.wire import encode_payload
from security import DeviceKey, sign1
from security.cose import KEYCHAIN, encode_unprotected, parse1
from security.keyring import init_keys, open_identity, rotate
from tests.gateway.test_receiver import TOPIC, msg, notice
from tests.gateway.test_receiver_mutants import EVENT, RESULT, Recorder


@pytest.fixture
def key(tmp_path: Path) -> DeviceKey:
    return DeviceKey.load_or_create(tmp_path / "gw")[0]


# -- the receiver as `edgegw receive` builds it ------------------------------------------


def test_an_enrolment_registry_is_used_as_given(key: DeviceKey) -> None:
    """`edgegw receive` passes the Enrolments it loaded: kept as they are (with where each
    key came from), not re-read as a mapping of keys."""
    trust = Enrolments([Enrolment("gw1", key.public_key, "enrol/gw1.pub.pem")])
    rx = Receiver(trust, "edgegw")
    assert rx.trust is trust and rx.trust["gw1"].source == "enrol/gw1.pub.pem"
    assert rx.handle(TOPIC, msg(key, 1)) is Outcome.VALID


def test_a_receiver_keeps_no_latencies_unless_asked(key: DeviceKey) -> None:
    """Latencies are one float per reading, never dropped: only a bounded run (the demo,
    the benchmark) asks for them; `edgegw receive` runs for months without."""
    rx = Receiver({"gw1": key.public_key}, "edgegw")
    assert rx.handle(TOPIC, msg(key, 1)) is Outcome.VALID
    assert rx.latencies_ms is None


def test_the_default_store_keeps_no_readings(key: DeviceKey) -> None:
    """Without a store: an in-memory one with state and message index only (the readings
    go to the sink), so a long run does not grow by every reading."""
    rx = Receiver({"gw1": key.public_key}, "edgegw")
    assert rx.handle(TOPIC, msg(key, 1)) is Outcome.VALID
    assert rx.handle(TOPIC, msg(key, 1)) is Outcome.DUPLICATE  # the index is kept
    assert rx.store.readings("gw1") == []


@pytest.mark.parametrize("prefix", ["edgegw/", "plantX", "site/X/"])
def test_a_prefix_is_taken_as_written_with_or_without_a_slash(key: DeviceKey, prefix: str) -> None:
    base = prefix.rstrip("/")
    topic = f"{base}/gw1/telemetry"
    rx = Receiver({"gw1": key.public_key}, prefix)
    assert rx.handle(topic, msg(key, 1, topic=topic)) is Outcome.VALID
    assert rx.handle(f"{base}x/gw1/telemetry", msg(key, 2, topic=topic)) is Outcome.MALFORMED


# -- a message prepare() could not finish is done again in the store transaction ----------


def test_a_message_prepare_could_not_finish_is_handled_in_full(key: DeviceKey) -> None:
    """prepare() runs in paho's thread; if it fails unexpectedly it leaves no envelope
    (env None, as here) and the store path does it all again. A transient failure there
    must not cost the message: an ERROR is acknowledged, so it would be lost."""
    sink = Recorder()
    rx = Receiver({"gw1": key.public_key}, "edgegw", sink)
    unfinished = Prepared(TOPIC, msg(key, 1), 123_456_789, gw="gw1", kind="telemetry")
    assert rx.handle_many([unfinished]) == [Outcome.VALID]
    assert sink.got == [(1, key.kid, 123_456_789)]  # the time it was received, kept
    # and one that is garbage is still classified as such, not as the receiver's error
    garbage = Prepared(TOPIC, b"\x00garbage", 1, gw="gw1", kind="telemetry")
    assert rx.handle_many([garbage]) == [Outcome.MALFORMED]
    assert (rx.stats.messages_verified, rx.stats.malformed, rx.stats.errors) == (1, 1, 0)


class _BrokenCache(dict):  # type: ignore[type-arg]
    def get(self, *_: object) -> None:  # type: ignore[override]
        raise RuntimeError("the fast path's key cache is broken")


def test_a_fault_only_prepare_hits_costs_no_message(key: DeviceKey) -> None:
    """prepare() failing where the store path does not (its cache of trusted keys, here):
    the store path parses the envelope itself and stores the message."""
    sink = Recorder()
    rx = Receiver({"gw1": key.public_key}, "edgegw", sink)
    rx._trusted["gw1"] = _BrokenCache()
    assert rx.handle(TOPIC, msg(key, 1), 5) is Outcome.VALID
    assert rx.handle(TOPIC, msg(key, 2), 6) is Outcome.VALID  # the cache was replaced
    assert sink.got == [(1, key.kid, 5), (2, key.kid, 6)] and rx.stats.errors == 0


# -- topics and groups ---------------------------------------------------------------------


def test_a_topic_outside_the_prefix_is_refused_even_when_signed_for_it(key: DeviceKey) -> None:
    """Another fleet's prefix of the same length: its gateway signed its own topic, so the
    signature would verify; only the prefix keeps it out."""
    rx = Receiver({"gw1": key.public_key}, "edgegw")
    other = "plant1/gw1/telemetry"
    assert rx.handle(other, msg(key, 1, topic=other)) is Outcome.MALFORMED
    assert rx.stats.messages_verified == 0 and rx.received("gw1") == []


def test_garbage_in_a_group_does_not_roll_the_group_back(
    key: DeviceKey, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone on the broker can send garbage: it must not cost the group its single commit
    (a rollback stores each message in its own transaction, one fsync each)."""
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=SqliteStore(tmp_path / "g.db"))
    items = [
        (TOPIC, msg(key, 1), None),
        ("edgegw/gw9/telemetry", msg(key, 2), None),  # not enrolled
        ("nowhere", b"\x00garbage", None),
        (TOPIC, msg(key, 2), None),
    ]
    with caplog.at_level(logging.WARNING, logger="edgegw.receiver"):
        got = rx.handle_many(items)
    assert got == [Outcome.VALID, Outcome.UNKNOWN_GATEWAY, Outcome.MALFORMED, Outcome.VALID]
    assert "rolled back" not in caplog.text
    assert rx.received("gw1") == [(1, 2)]


# -- keys: learned from keychains, counted; a keychain is not read when the key is known ----


def test_a_junk_keychain_beside_a_known_key_is_not_read(key: DeviceKey, tmp_path: Path) -> None:
    """The unprotected header is anyone's to rewrite: when the signing key is already the
    gateway's, a junk keychain there must not get a genuine message refused (as the first
    message after a restart, it is verified in the store path)."""
    junk = encode_unprotected({KEYCHAIN: "junk"})
    p = encode_payload(gw="gw1", seq=1, boot=1, kind="telemetry", t_ns=1, readings=[])
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=SqliteStore(tmp_path / "rx.db"))
    assert rx.handle(TOPIC, sign1(p, key, TOPIC.encode(), junk)) is Outcome.VALID
    assert rx.received("gw1") == [(1, 1)]


def test_keys_learned_from_keychains_add_up(tmp_path: Path) -> None:
    state = tmp_path / "gw1"
    root, _ = init_keys(state)
    rx = Receiver({"gw1": root.public_key}, "edgegw", store=SqliteStore(tmp_path / "rx.db"))
    for seq in (1, 2):  # two rotations, each key first seen in its own message
        rotate(state)
        ident = open_identity(state, record=False)
        chain = encode_unprotected({KEYCHAIN: ident.keychain})
        p = encode_payload(gw="gw1", seq=seq, boot=1, kind="telemetry", t_ns=1, readings=[])
        assert rx.handle(TOPIC, sign1(p, ident.key, TOPIC.encode(), chain)) is Outcome.VALID
    assert rx.stats.keys_learned == 2


def test_a_junk_keychain_beside_an_unknown_key_is_malformed(key: DeviceKey, tmp_path: Path) -> None:
    """Anyone can send it: classified and counted as malformed (rate-limited logs), never
    the receiver's own error, and handle() does not raise."""
    stranger = DeviceKey.load_or_create(tmp_path / "stranger")[0]
    junk = encode_unprotected({KEYCHAIN: "junk"})
    p = encode_payload(gw="gw1", seq=1, boot=1, kind="telemetry", t_ns=1, readings=[])
    rx = Receiver({"gw1": key.public_key}, "edgegw")
    for _ in range(2):
        assert rx.handle(TOPIC, sign1(p, stranger, TOPIC.encode(), junk)) is Outcome.MALFORMED
    assert (rx.stats.malformed, rx.stats.errors) == (2, 0) and rx.received("gw1") == []


# -- prepare(): the checks paho's thread does while the previous group is stored -----------


def test_prepare_verifies_and_decodes_with_a_key_it_already_trusts(key: DeviceKey) -> None:
    """The receiver's throughput rests on this: with a key this process trusts for the
    gateway, the signature and the payload are checked in prepare(), not under the lock."""
    rx = Receiver({"gw1": key.public_key}, "edgegw")
    m1, m2 = msg(key, 1), msg(key, 2)
    first = rx.prepare(TOPIC, m1, 5)  # no key trusted yet: parsed, the rest left to the store
    assert first.rejected is None and first.env is not None and first.payload is None
    assert (first.gw, first.kind, first.received_ns) == ("gw1", "telemetry", 5)
    assert rx.handle_many([first]) == [Outcome.VALID]
    second = rx.prepare(TOPIC, m2, 6)
    assert second.rejected is None and second.payload is not None
    assert (second.payload.gw, second.payload.seq) == ("gw1", 2)
    assert second.digest == parse1(m2).signed_digest(TOPIC.encode())
    bad = bytearray(msg(key, 3))
    bad[-1] ^= 1
    forged = rx.prepare(TOPIC, bytes(bad))
    assert forged.rejected is not None and forged.rejected.outcome is Outcome.BAD_SIGNATURE
    moved_p = encode_payload(gw="gw1", seq=4, boot=1, kind="event", t_ns=1, event=EVENT)
    moved = rx.prepare(TOPIC, sign1(moved_p, key, TOPIC.encode()))  # an event's payload
    assert moved.rejected is not None and moved.rejected.outcome is Outcome.TOPIC_MISMATCH
    assert rx.handle_many([second, forged, moved]) == [
        Outcome.VALID,
        Outcome.BAD_SIGNATURE,
        Outcome.TOPIC_MISMATCH,
    ]
    assert rx.received("gw1") == [(1, 2)]


def test_a_message_of_exactly_the_size_limit_is_accepted(key: DeviceKey) -> None:
    m = msg(key, 1)
    assert (
        Receiver({"gw1": key.public_key}, "edgegw", max_message_bytes=len(m)).handle(TOPIC, m)
        is Outcome.VALID
    )
    small = Receiver({"gw1": key.public_key}, "edgegw", max_message_bytes=len(m) - 1)
    assert small.handle(TOPIC, m) is Outcome.OVERSIZE


# -- enrolment sources ---------------------------------------------------------------------


def test_an_enrolment_file_may_name_a_key_by_its_absolute_path(
    key: DeviceKey, tmp_path: Path
) -> None:
    pem = tmp_path / "keys" / "press.pub.pem"
    pem.parent.mkdir()
    pem.write_bytes(key.public_pem())
    (tmp_path / "conf").mkdir()
    enrol = tmp_path / "conf" / "fleet.yaml"
    enrol.write_text(f"gw1: {pem}\n")  # absolute: not under the YAML file's directory
    trust = Enrolments()
    trust.load(enrol)
    assert trust["gw1"].root_kid == key.kid and trust["gw1"].source == f"{enrol}: gw1"


def test_a_pubkey_file_name_may_hold_an_equals_sign(key: DeviceKey, tmp_path: Path) -> None:
    """GATEWAY_ID=FILE splits at the first '=': a gateway id has none, a file name may."""
    pem = tmp_path / "gw1=2026.pub.pem"
    pem.write_bytes(key.public_pem())
    trust = Enrolments()
    trust.add_pubkey(f"gw1={pem}")
    assert list(trust) == ["gw1"] and trust["gw1"].root_kid == key.kid


# -- stores: which one a --db opens, and --no-readings -------------------------------------


@pytest.mark.parametrize("form", ["postgresql", "postgres", "conninfo"])
def test_every_postgresql_url_form_opens_a_pg_store_that_honours_no_readings(
    key: DeviceKey, pg_server: PgServer, pg_url: str, form: str
) -> None:
    from gateway.receiver.pg_store import PgStore
    from gateway.receiver.store import open_store

    name = pg_url.rsplit("/", 1)[1]
    url = {
        "postgresql": pg_url,
        "postgres": "postgres://" + pg_url.split("://", 1)[1],
        "conninfo": f"host={pg_server.host} port={pg_server.port} user={pg_server.user} "
        f"dbname={name}",
    }[form]
    for seq, readings in ((1, False), (2, True)):
        store = open_store(url, readings=readings)
        try:
            assert isinstance(store, PgStore) and store.keep_readings is readings
            rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
            assert rx.handle(TOPIC, msg(key, seq)) is Outcome.VALID
            assert [r.seq for r in store.readings("gw1")] == ([2] if readings else [])
        finally:
            store.close()


def test_no_readings_is_kept_by_a_sqlite_store(key: DeviceKey, tmp_path: Path) -> None:
    from gateway.receiver.store import open_store

    store = open_store(str(tmp_path / "rx.db"), readings=False)
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    assert rx.handle(TOPIC, msg(key, 1)) is Outcome.VALID
    assert store.readings("gw1") == [] and store.report().points == 1
    store.close()


# -- a command result's row ----------------------------------------------------------------


def test_a_command_result_row_keeps_every_field_and_time_exactly(
    key: DeviceKey, tmp_path: Path
) -> None:
    store = SqliteStore(tmp_path / "rx.db")
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    received, done = 1_733_475_600_123_456_789, 1_733_475_600_987_654_321
    result = {**RESULT, "received": received, "done": done, "again": True}
    t = "edgegw/gw1/command_result"
    p = encode_payload(gw="gw1", seq=3, boot=1, kind="command_result", t_ns=1, result=result)
    assert rx.handle(t, sign1(p, key, t.encode())) is Outcome.VALID
    row = store.db.execute(
        "SELECT id, op, outcome, tag, value, before, after, version, received, "
        "received_nanos, done, done_nanos, again FROM command_results"
    ).fetchall()
    assert row == [
        ("c1", "write", "done", "plc/t", "1", "0", "1", 3,
         1_733_475_600_123_456, 789, 1_733_475_600_987_654, 321, 1),
    ]  # fmt: skip
    store.close()


# -- the store's report, as `edgegw receive --report` prints it ----------------------------


def test_the_report_json_names_every_total(key: DeviceKey, tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "rx.db")
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    for seq in range(1, 46, 2):  # 23 messages, 22 holes: 2, 4, ..., 44
        assert rx.handle(TOPIC, msg(key, seq)) is Outcome.VALID
    te = "edgegw/gw1/event"
    ev = encode_payload(gw="gw1", seq=46, boot=1, kind="event", t_ns=1, event=EVENT)
    assert rx.handle(te, sign1(ev, key, te.encode())) is Outcome.VALID
    assert rx.handle("edgegw/gw1/notice", notice(key, 48, 47, 47)) is Outcome.VALID
    assert rx.handle(TOPIC, msg(key, 1)) is Outcome.DUPLICATE
    assert rx.handle(TOPIC, msg(key, 3, [["plc/t", 1, 9.0, 0]])) is Outcome.CONFLICT
    store.record_stats("rx-a", summary(rx))
    assert store.report().to_json() == {
        "gateways": 1,
        "messages": 25,
        "points": 23,
        "events": 1,
        "notices": 1,
        "alerts": 1,
        "security_alerts": 1,
        "gaps": 22,
        "duplicates": 1,
        "receivers": 1,
        "missing": {"gw1": [[s, s] for s in range(2, 42, 2)]},  # the first 20 holes
    }
    store.close()
