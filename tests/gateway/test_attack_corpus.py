"""The attack corpus through the receiver, in process: every message lands in its class,
nothing an attacker sent is stored, genuine traffic arrives complete, no message costs more
than a bounded time, and a restart in the middle changes no classification."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.receiver import Outcome, Receiver, SqliteStore
from tests.gateway.attack_corpus import GW, GW2, Case, Keys, corpus
from tests.security.strictcbor_paths import strict_cbor_path  # noqa: F401  (fixture)

# Every test here runs with both strict-CBOR decoders (tests/security/strictcbor_paths.py).
pytestmark = pytest.mark.usefixtures("strict_cbor_path")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys.make(tmp_path_factory.mktemp("keys"))


def make_rx(keys: Keys, db: Path) -> Receiver:
    return Receiver(
        {GW: keys.gw.public_key, GW2: keys.gw2.public_key}, "edgegw", store=SqliteStore(db)
    )


def run(cases: list[Case], rx_for: list[Receiver]) -> list[Outcome]:
    """Feed the cases, switching to the next receiver at each boundary of ``rx_for``."""
    out = []
    per = -(-len(cases) // len(rx_for))
    for i, c in enumerate(cases):
        out.append(rx_for[i // per].handle(c.topic, c.body))
    return out


def test_every_attack_lands_in_its_class_and_genuine_data_is_complete(
    keys: Keys, tmp_path: Path
) -> None:
    cases = corpus(keys)
    rx = make_rx(keys, tmp_path / "rx.db")
    worst = 0.0
    wrong = []
    for c in cases:
        t0 = time.process_time()
        got = rx.handle(c.topic, c.body)
        spent = time.process_time() - t0
        worst = max(worst, spent / max(len(c.body) / 2**20, 1.0))
        if got is not c.expect:
            wrong.append((c.name, got.value, c.expect.value))
    assert wrong == []
    # Far above what it costs (a few ms per MiB): catches a parser that is not linear.
    assert worst < 0.25, f"a message cost {worst * 1000:.0f} ms of CPU per MiB"
    genuine = [c for c in cases if c.genuine]
    store = rx.store
    assert isinstance(store, SqliteStore)
    assert rx.received(GW) == [(1, len(genuine))]
    assert rx.stats.gaps == 0
    n = store.db.execute("SELECT count(*) FROM readings").fetchone()[0]
    assert n == sum(c.points for c in genuine) == rx.stats.points_verified
    assert store.db.execute("SELECT count(*) FROM messages").fetchone()[0] == len(genuine)
    assert rx.received(GW2) == []  # the stolen key stored nothing for anyone
    stored = {a["class"] for a in store.alerts()}
    assert stored == {
        "conflict",
        "replay",
        "wrong_gateway",
        "topic_mismatch",
        "signed_malformed",
    }


def test_a_restart_in_the_middle_changes_no_classification(keys: Keys, tmp_path: Path) -> None:
    cases = corpus(keys)
    straight = run(cases, [make_rx(keys, tmp_path / "one.db")])
    first = make_rx(keys, tmp_path / "two.db")
    before = run(cases[: len(cases) // 2], [first])
    first.store.close()
    after = run(cases[len(cases) // 2 :], [make_rx(keys, tmp_path / "two.db")])
    assert before + after == straight
    # and the whole corpus again, after another restart: the genuine messages are now
    # duplicates, every attack is what it was
    again = run(cases, [make_rx(keys, tmp_path / "two.db")])
    for c, got in zip(cases, again, strict=True):
        assert got is (Outcome.DUPLICATE if c.genuine else c.expect), c.name
