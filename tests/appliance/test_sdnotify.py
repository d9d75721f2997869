"""gateway.sdnotify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sdnotify import Notifier, parse_watchdog_usec


@pytest.fixture
def systemd_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound where NOTIFY_SOCKET will point, as systemd's would be."""
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    yield s, path
    s.close()


def fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().split("\n"))


def test_without_notify_socket_every_call_is_a_noop() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.watchdog_usec is None and n.watchdog_interval_s is None
    assert n.ready("up") is False
    assert n.status("x") is False
    assert n.watchdog() is False
    assert n.stopping() is False


def test_ready_and_status_reach_the_socket(systemd_socket: tuple[socket.socket, str]) -> None:
    sock, path = systemd_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("polling 3 devices") is True
    assert fields(sock.recv(4096)) == {"READY": "1", "STATUS": "polling 3 devices"}
    assert n.status("link down\nretrying") is True  # a newline would end the field
    assert fields(sock.recv(4096)) == {"STATUS": "link down retrying"}


def test_repeated_status_is_sent_once(systemd_socket: tuple[socket.socket, str]) -> None:
    sock, path = systemd_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.status("same") is True
    assert n.status("same") is False
    assert n.status("other") is True
    assert fields(sock.recv(4096)) == {"STATUS": "same"}
    assert fields(sock.recv(4096)) == {"STATUS": "other"}


def test_watchdog_pings_only_when_systemd_asked_for_them(
    systemd_socket: tuple[socket.socket, str],
) -> None:
    sock, path = systemd_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
    assert n.watchdog_usec == 30_000_000
    assert n.watchdog_interval_s == 15.0
    assert n.watchdog() is True
    assert fields(sock.recv(4096)) == {"WATCHDOG": "1"}
    silent = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert silent.watchdog() is False


def test_stopping_reloading_and_extend_timeout(systemd_socket: tuple[socket.socket, str]) -> None:
    sock, path = systemd_socket
    n = Notifier(path)
    n.reloading()
    got = fields(sock.recv(4096))
    assert got["RELOADING"] == "1" and int(got["MONOTONIC_USEC"]) > 0
    n.stopping("draining outbox")
    assert fields(sock.recv(4096)) == {"STOPPING": "1", "STATUS": "draining outbox"}
    n.extend_timeout(12.5)
    assert fields(sock.recv(4096)) == {"EXTEND_TIMEOUT_USEC": "12500000"}


def test_abstract_namespace_socket() -> None:
    name = f"edgegw-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(b"\0" + name.encode())
    s.settimeout(2)
    try:
        assert Notifier.from_env({"NOTIFY_SOCKET": "@" + name}).ready() is True
        assert fields(s.recv(4096)) == {"READY": "1"}
    finally:
        s.close()


def test_a_vanished_socket_is_reported_not_raised(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "gone.sock"))
    assert n.ready() is False
    assert n.ready() is False  # and it keeps working (no exception) on every later call


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "5000000"}, 5_000_000),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-1"}, None),
        ({"WATCHDOG_USEC": "abc"}, None),
        ({}, None),
        ({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1234"}, 5_000_000),
        ({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "999"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_usec_parsing(env: dict[str, str], expected: int | None) -> None:
    assert parse_watchdog_usec(env, pid=1234) == expected
