"""A minimal HTTP/1.0 server for a few GET endpoints on a plain socket (no http.server).

The stdlib's ``http.server`` pulls in ``http.client``, ``email``, ``urllib`` and more:
about 2.4 MiB of RSS for the daemon's four read-only endpoints (issue 18). What they
need is small: read the request line (headers are read to their end and ignored), answer
``HTTP/1.0`` with ``Content-Type`` and ``Content-Length``, close. ``GET`` and ``HEAD``
only (else 405); the path is the handler's to judge (404 for unknown ones).

One thread sleeps in ``select`` with no timeout until a client connects or ``stop()``
writes to a wake-up pipe: nothing wakes while nobody asks. Each connection gets a thread
of its own (as ``ThreadingHTTPServer`` did), at most ``MAX_CLIENTS`` at a time (more are
answered 503 at once), so a client that hangs delays nobody else; it is dropped after
``CLIENT_TIMEOUT_S`` in all, and a request bigger than ``MAX_REQUEST_BYTES`` is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger("edgegw.metrics")

Handler = Callable[[str], tuple[int, str, bytes]]
"""Path (without the query) -> (status code, content type, body)."""

MAX_REQUEST_BYTES = 8192  # request line and headers: a scraper sends a few hundred
CLIENT_TIMEOUT_S = 10.0  # to send the request, and for each send of the answer
MAX_CLIENTS = 16  # connections served at once; more are answered 503 at once

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_TEXT = "text/plain; charset=utf-8"


def http_date(when: float | None = None) -> str:
    """RFC 9110's IMF-fixdate (``Sun, 06 Dec 2026 11:05:55 GMT``), locale-independent."""
    t = time.gmtime(when)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def response(code: int, ctype: str, body: bytes, *, head: bool = False, extra: str = "") -> bytes:
    """A whole HTTP/1.0 answer; ``head``: the headers only (a HEAD request)."""
    headers = (
        f"HTTP/1.0 {code} {_REASONS.get(code, 'Unknown')}\r\n"
        "Server: edgegw\r\n"
        f"Date: {http_date()}\r\n"
        f"Content-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        f"{extra}"
        "Connection: close\r\n\r\n"
    )
    return headers.encode("latin-1") + (b"" if head else body)


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 when ``host`` has a colon; ``::``
    then takes IPv4 too). Raises OSError when the address cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # "::" alone would also take IPv4 on most systems; that is what a user means by it.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(16)
        sock.setblocking(False)  # accept() after select: a client gone meanwhile
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """Serves ``handler`` on its own thread named ``name``; ``port=0`` picks a free port."""

    def __init__(self, host: str, port: int, handler: Handler, *, name: str = "http") -> None:
        self.host = host.strip("[]")
        self._sock = listen(self.host, port)
        self.port = int(self._sock.getsockname()[1])
        self._handler = handler
        self._name = name
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = False
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self.wakeups = 0
        """Times the server's thread woke (a client, or stop): a test counts them."""
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and join the thread (clients being answered finish on theirs)."""
        self._stopping = True
        if self._thread.is_alive():
            with contextlib.suppress(OSError):  # a full pipe: the thread is awake already
                os.write(self._wake_w, b"x")
            self._thread.join(5)
            if self._thread.is_alive():
                log.error("%s: the server's thread did not end within 5 s", self._name)
        self._sock.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _serve(self) -> None:
        """Accept and hand each connection to a thread of its own, sleeping until a
        client or ``stop()`` comes: no timeout, no poll."""
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(self._sock, selectors.EVENT_READ)
                sel.register(self._wake_r, selectors.EVENT_READ)
                while not self._stopping:
                    ready = sel.select()
                    self.wakeups += 1
                    if self._stopping or any(key.fd == self._wake_r for key, _ in ready):
                        break  # only stop() writes to the pipe
                    self._accept()
        except Exception:  # nothing dies silently: the endpoints are gone, say so
            log.exception("%s: the server stopped on an error; its endpoints are gone", self._name)

    def _accept(self) -> None:
        try:
            conn, addr = self._sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # the client left before we took it
        except OSError as exc:  # out of file descriptors: say so, keep serving
            log.warning("%s: cannot accept a connection: %s", self._name, exc)
            return
        if not self._slots.acquire(blocking=False):
            log.warning("%s: %d clients at once; answering 503", self._name, MAX_CLIENTS)
            with contextlib.suppress(OSError):
                # without waiting: take what came of the request (unread data would make
                # close() reset the connection, and the client might lose the answer)
                conn.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    conn.recv(MAX_REQUEST_BYTES)
                conn.send(response(503, _TEXT, b"busy: too many clients at once\n"))
                conn.shutdown(socket.SHUT_WR)
            conn.close()
            return
        try:
            threading.Thread(
                target=self._client, args=(conn, addr), name=f"{self._name}-client", daemon=True
            ).start()
        except RuntimeError as exc:  # cannot start a thread (limits): this client only
            self._slots.release()
            conn.close()
            log.warning("%s: cannot start a thread for a client: %s", self._name, exc)

    def _client(self, conn: socket.socket, addr: object) -> None:
        try:
            with conn:
                self._answer(conn, addr)
        except (TimeoutError, OSError) as exc:  # the client is slow or gone: its loss only
            log.debug("%s: client %s: %s", self._name, addr, exc)
        except Exception:
            log.exception("%s: error answering client %s", self._name, addr)
        finally:
            self._slots.release()

    def _answer(self, conn: socket.socket, addr: object) -> None:
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        data = b""
        while b"\r\n\r\n" not in data and b"\n\n" not in data:
            if len(data) >= MAX_REQUEST_BYTES:
                conn.sendall(response(431, _TEXT, b"request too large\n"))
                return
            left = deadline - time.monotonic()
            if left <= 0:
                conn.sendall(response(408, _TEXT, b"request timeout\n"))
                return
            conn.settimeout(left)
            try:
                chunk = conn.recv(MAX_REQUEST_BYTES - len(data))
            except TimeoutError:
                conn.sendall(response(408, _TEXT, b"request timeout\n"))
                return
            if not chunk:
                if not data:
                    return  # connected and left (a port check)
                break  # an HTTP/1.0 client may end its request by closing its side
            data += chunk
        conn.settimeout(CLIENT_TIMEOUT_S)
        line = data.split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1")
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            conn.sendall(response(400, _TEXT, b"bad request line\n"))
            log.debug("%s: %s %r 400", self._name, addr, line)
            return
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            conn.sendall(
                response(
                    405, _TEXT, b"method not allowed: GET or HEAD\n", extra="Allow: GET, HEAD\r\n"
                )
            )
            log.debug("%s: %s %r 405", self._name, addr, line)
            return
        try:
            code, ctype, body = self._handler(target.split("?", 1)[0])
        except Exception as exc:  # a bug in an endpoint: say so, answer, keep serving
            log.exception("%s: cannot answer %r", self._name, line)
            code, ctype, body = 500, _TEXT, f"error: {exc}\n".encode()
        conn.sendall(response(code, ctype, body, head=method == "HEAD"))
        log.debug("%s: %s %r %d", self._name, addr, line, code)
