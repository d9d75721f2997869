"""The log's state at an offset (``base`` of an audit message): what a witness that starts
in the middle of a log needs. Checked against the writer's own signed checkpoints, which
state size, head, root and prev at their offsets, and against the Merkle tree's
definition."""

from __future__ import annotations

import pytest

from security.audit import AUDIT_FILE, AuditLog
from security.checkpoint import (
    ZERO_HASH,
    FormatError,
    LogState,
    genesis_head,
    iter_entries,
    leaf_hash,
    merkle_root,
    node_hash,
    parse_entries,
    peek_checkpoint,
    state_at,
)
from security.keys import DeviceKey


@pytest.fixture(scope="module")
def log_bytes(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    d = tmp_path_factory.mktemp("log")
    key = DeviceKey.load_or_create(d)[0]
    for boot in (1, 2):
        with AuditLog(d / AUDIT_FILE, key, boot=boot, checkpoint_every=7) as log:
            for i in range(23):
                log.record("link_up", host=f"h{i}", port=i)
            log_id = log.log_id
    return (d / AUDIT_FILE).read_bytes(), log_id


def test_iter_entries_splits_like_the_full_parser(log_bytes: tuple[bytes, bytes]) -> None:
    data, _ = log_bytes
    parsed = parse_entries(data)
    assert [(e.offset, e.raw) for e in parsed.entries] == list(iter_entries(data))
    second = parsed.entries[5].offset
    assert list(iter_entries(data, second)) == [(e.offset, e.raw) for e in parsed.entries[5:]]


def test_iter_entries_refuses_a_cut_entry(log_bytes: tuple[bytes, bytes]) -> None:
    data, _ = log_bytes
    with pytest.raises(FormatError, match="no complete entry at byte"):
        list(iter_entries(data[:-3]))


def test_state_before_each_checkpoint_is_what_the_checkpoint_says(
    log_bytes: tuple[bytes, bytes],
) -> None:
    data, log_id = log_bytes
    entries = parse_entries(data).entries
    leaves: list[bytes] = []
    checked = 0
    for e in entries:
        st = state_at(data, log_id, e.offset)
        assert st.offset == e.offset and st.size == len(leaves)
        assert st.head == (leaves[-1] if leaves else genesis_head(log_id))
        assert st.frontier.root() == merkle_root(leaves)
        if e.record is None:
            cp = peek_checkpoint(e.raw)
            assert (cp.size, cp.head, cp.root, cp.prev) == (
                st.size,
                st.head,
                st.frontier.root(),
                st.cp_prev,
            )
            checked += 1
        else:
            leaves.append(leaf_hash(e.raw))
    assert checked >= 8  # opens, counts and closes of two boots


def test_base_at_the_start_and_a_compact_range_that_rebuilds_the_root(
    log_bytes: tuple[bytes, bytes],
) -> None:
    data, log_id = log_bytes
    assert state_at(data, log_id, 0).base() == [0, genesis_head(log_id), ZERO_HASH, []]
    entries = parse_entries(data).entries
    st = state_at(data, log_id, entries[-1].offset)
    size, _head, _cp_prev, frontier = st.base()
    assert len(frontier) == bin(size).count("1")  # one perfect subtree per set bit
    root = frontier[-1]
    for left in reversed(frontier[:-1]):
        root = node_hash(left, root)
    assert root == merkle_root([leaf_hash(e.raw) for e in entries if e.record is not None])


def test_an_offset_inside_an_entry_gives_the_state_at_its_start(
    log_bytes: tuple[bytes, bytes],
) -> None:
    data, log_id = log_bytes
    e = parse_entries(data).entries[9]
    st = state_at(data, log_id, e.offset + 3)
    assert st.offset == e.offset
    assert state_at(data, log_id, len(data) + 100).offset == len(data)


def test_feeding_entries_one_by_one_matches_state_at(log_bytes: tuple[bytes, bytes]) -> None:
    data, log_id = log_bytes
    st = LogState.genesis(log_id)
    for off, raw in iter_entries(data):
        assert st.base() == state_at(data, log_id, off).base()
        snapshot = st.copy()
        st.feed(raw)
        assert snapshot.offset == off  # copies do not move with the original
    assert st.offset == len(data)
