"""A tiny sd_notify(3) client: tell systemd we are ready, what we are doing, that we live.

No dependency: one AF_UNIX datagram per message to the socket named by ``NOTIFY_SOCKET``
(a path, or ``@name`` for the abstract namespace). When the variable is unset (not
started by systemd, or ``Type=simple``), every call is a cheap no-op returning False,
so the daemon calls these unconditionally.

Typical use in the daemon::

    notify = Notifier.from_env()
    ...                                 # open outbox, start tasks
    notify.ready("polling 3 devices")   # READY=1 + STATUS=
    while running:                      # every few s, only while all loops are alive:
        notify.watchdog()               # WATCHDOG=1 (systemd restarts us when it stops)
    notify.stopping("draining outbox")  # STOPPING=1

A send that fails (systemd gone, socket full) is logged once and otherwise ignored: the
daemon's work never depends on systemd hearing from it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

log = logging.getLogger("edgegw.sdnotify")


def _address(value: str) -> str | bytes | None:
    """``NOTIFY_SOCKET`` as a socket address: ``@name`` is abstract, ``/path`` a file."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock:... and relative paths are not for us


def parse_watchdog_usec(env: Mapping[str, str], pid: int | None = None) -> int | None:
    """The watchdog timeout systemd expects pings within, in µs; None when there is none.

    Like sd_watchdog_enabled(3): ``WATCHDOG_USEC`` must be a positive integer, and when
    ``WATCHDOG_PID`` is set it must be our pid (the variable may have leaked from a parent).
    """
    raw = env.get("WATCHDOG_USEC", "").strip()
    if not raw.isdigit() or int(raw) <= 0:
        return None
    wpid = env.get("WATCHDOG_PID", "").strip()
    if wpid and (not wpid.isdigit() or int(wpid) != (os.getpid() if pid is None else pid)):
        return None
    return int(raw)


class Notifier:
    """Sends ``KEY=value`` messages to systemd's notify socket; thread-safe."""

    def __init__(self, notify_socket: str | None, watchdog_usec: int | None = None) -> None:
        self.address = _address(notify_socket or "")
        self.watchdog_usec = watchdog_usec if self.address is not None else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False
        self._last_status: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET"), parse_watchdog_usec(env))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half the timeout, as sd_watchdog_enabled(3) advises."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2e6

    def notify(self, **fields: str | int) -> bool:
        """Send one message, e.g. ``notify(READY=1, STATUS="up")``; True when it was sent."""
        if self.address is None or not fields:
            return False
        msg = "\n".join(f"{k}={_one_line(str(v))}" for k, v in fields.items()).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                    self._sock.setblocking(False)  # never stall the event loop on systemd
                self._sock.sendto(msg, self.address)
            except OSError as exc:
                if not self._warned:
                    log.warning("cannot notify systemd at %s: %s", self.address, exc)
                    self._warned = True
                self._close()
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Startup finished (or a reload did): ``READY=1``, with an optional status line."""
        if status is None:
            return self.notify(READY=1)
        self._last_status = status
        return self.notify(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        """A one-line status for `systemctl status`; repeats of the same text are not sent."""
        if text == self._last_status:
            return False
        self._last_status = text
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: we are alive. Send only after checking that we really are."""
        if self.watchdog_usec is None:
            return False
        return self.notify(WATCHDOG=1)

    def reloading(self) -> bool:
        """``RELOADING=1`` at the start of a config reload; send :meth:`ready` after it."""
        return self.notify(
            RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        )

    def stopping(self, status: str | None = None) -> bool:
        if status is None:
            return self.notify(STOPPING=1)
        self._last_status = status
        return self.notify(STOPPING=1, STATUS=status)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before systemd gives up on a start or stop in progress."""
        return self.notify(EXTEND_TIMEOUT_USEC=max(1, int(seconds * 1e6)))

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    """sd_notify fields end at a newline: keep a value on one line."""
    return " ".join(text.splitlines())
