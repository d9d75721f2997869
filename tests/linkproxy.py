"""A TCP proxy on loopback whose link a test can cut and restore.

``cut()`` resets every open connection and refuses new ones (the port stays bound,
so nothing else can take it); ``stall()`` makes it a black hole: connections stay open
and everything sent either way is swallowed, as on a link whose far end hangs;
``restore()`` lets connections and data through again.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class LinkProxy:
    def __init__(self, target: tuple[str, int], listen_host: str = "::1") -> None:
        self.target = target
        fam = socket.AF_INET6 if ":" in listen_host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((listen_host, 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.up = True
        self.stalled = False
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.closed = False
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True, name="linkproxy").start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            if not self.up:
                _reset(c)
                continue
            try:
                u = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(c)
                continue
            self.accepted += 1
            with self.lock:
                self.conns |= {c, u}
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not self.stalled:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        with self.lock:
            conns, self.conns = self.conns, set()
        for s in conns:
            _reset(s)

    def stall(self) -> None:
        self.stalled = True

    def restore(self) -> None:
        self.up = True
        self.stalled = False

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.sock.close()


def _reset(s: socket.socket) -> None:
    # SO_LINGER 0: close with RST, like a link that died, not a polite FIN.
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        s.close()
