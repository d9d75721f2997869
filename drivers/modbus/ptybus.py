"""A serial line in software: two pseudo-terminals joined back to back (a null-modem
cable), for RTU tests and the demo without hardware. Parity cannot be simulated: Linux
ptys have none, and pyserial's parity E or O fails on them; use parity N.

The client opens ``client_path`` and a pymodbus serial server opens ``server_path``,
both through pyserial with real termios settings; the bridge copies bytes between the
two master sides on the event loop and can record them (``trace``), so a test sees the
RTU frames exactly as they crossed the line. Like ``socat pty,raw pty,raw``, without a
process of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
import tty
from pathlib import Path

__all__ = ["PtyBridge"]


def _pty() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo, no line editing: bytes pass as they are
    # A pty keeps baud rate and stop bits but not parity (Linux forces CS8 and clears
    # PARENB, then refuses a tcsetattr that changed nothing else): simulated lines use
    # parity N. Starting at a speed nobody asks for makes the first open change something.
    attrs = termios.tcgetattr(slave)
    attrs[4] = attrs[5] = termios.B50
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)


class PtyBridge:
    """Two pty pairs joined master to master. ``trace`` (if enabled) holds
    ``(side, loop time, bytes)`` per chunk, side ``"C"`` from the client, ``"S"`` from
    the server."""

    def __init__(self, *, trace: bool = False) -> None:
        self._a = _pty()
        self._b = _pty()
        self.client_path = self._a[2]
        self.server_path = self._b[2]
        self.trace: list[tuple[str, float, bytes]] | None = [] if trace else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, bytearray] = {}
        self._links: list[Path] = []

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        ma, mb = self._a[0], self._b[0]
        loop.add_reader(ma, self._forward, ma, mb, "C")
        loop.add_reader(mb, self._forward, mb, ma, "S")

    def _forward(self, src: int, dst: int, side: str) -> None:
        try:
            data = os.read(src, 4096)
        except OSError:  # EIO: no slave open right now
            return
        if not data:
            return
        if self.trace is not None and self._loop is not None:
            self.trace.append((side, self._loop.time(), data))
        self._write(dst, data)

    def _write(self, fd: int, data: bytes) -> None:
        pending = self._pending.setdefault(fd, bytearray())
        pending += data
        try:
            n = os.write(fd, pending)
        except BlockingIOError:
            n = 0
        del pending[:n]
        if pending and self._loop is not None:
            self._loop.call_later(0.001, self._write, fd, b"")

    def link(self, path: str | Path) -> None:
        """Make ``path`` a symlink to the client side (e.g. ``/tmp/ttyRTU0``); replaces
        only a symlink, never a real file."""
        p = Path(path)
        if p.is_symlink():
            p.unlink()
        elif p.exists():
            raise FileExistsError(f"{p} exists and is not a symlink; choose a free path")
        p.symlink_to(self.client_path)
        self._links.append(p)

    async def stop(self) -> None:
        if self._loop is not None:
            for fd in (self._a[0], self._b[0]):
                self._loop.remove_reader(fd)
        for p in self._links:
            with contextlib.suppress(OSError):
                p.unlink()
        for fd in (*self._a[:2], *self._b[:2]):
            with contextlib.suppress(OSError):
                os.close(fd)

    async def __aenter__(self) -> PtyBridge:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
