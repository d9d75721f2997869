"""gateway.httpserve: the metrics endpoints' own small HTTP server, spoken to by the
stdlib's http.client (an independent implementation) and by raw sockets for what a
well-behaved client never sends."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest

import gateway.httpserve as httpserve
from gateway.exposition import CONTENT_TYPE
from gateway.httpserve import HttpServer, http_date
from gateway.metrics import MetricsServer

from ..appliance.conftest import make_snapshot


@pytest.fixture
def srv() -> Iterator[MetricsServer]:
    with MetricsServer(lambda: make_snapshot(), port=0) as s:
        yield s


def request(s: MetricsServer, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(s.host, s.port, timeout=10)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def raw(port: int, data: bytes, host: str = "127.0.0.1", shut: bool = False) -> bytes:
    """Send ``data`` as is and read the answer to its end (the server closes)."""
    with socket.create_connection((host, port), timeout=10) as c:
        c.sendall(data)
        if shut:
            c.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := c.recv(65536):
            out += chunk
        return out


def test_get_answers_with_type_length_and_closes(srv: MetricsServer) -> None:
    status, headers, body = request(srv, "GET", "/metrics?x=1")  # the query is ignored
    assert status == 200 and headers["content-type"] == CONTENT_TYPE
    assert int(headers["content-length"]) == len(body) and b"edgegw_healthy 1.0" in body
    assert headers["connection"] == "close" and headers["cache-control"] == "no-store"
    status, headers, body = request(srv, "GET", "/livez")
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body)["live"] is True


def test_head_gives_the_headers_only(srv: MetricsServer) -> None:
    _, get_headers, get_body = request(srv, "GET", "/healthz")
    status, headers, body = request(srv, "HEAD", "/healthz")
    assert status == 429 and body == b""  # make_snapshot has a device down: degraded
    assert headers["content-length"] == get_headers["content-length"] == str(len(get_body))
    assert raw(srv.port, b"HEAD /livez HTTP/1.1\r\nHost: x\r\n\r\n").endswith(b"\r\n\r\n")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "get"])
def test_other_methods_are_405(srv: MetricsServer, method: str) -> None:
    status, headers, _ = request(srv, method, "/metrics")
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_unknown_path_404_and_a_bad_request_line_400(srv: MetricsServer) -> None:
    assert request(srv, "GET", "/nope")[0] == 404
    for line in (b"GET /metrics\r\n\r\n", b"\r\n\r\n", b"GET / FTP/1.0\r\n\r\n"):
        assert raw(srv.port, line).startswith(b"HTTP/1.0 400 "), line


def test_an_http10_client_may_end_its_request_by_closing(srv: MetricsServer) -> None:
    answer = raw(srv.port, b"GET /readyz HTTP/1.0\r\n", shut=True)
    assert answer.startswith(b"HTTP/1.0 200 OK\r\n") and answer.endswith(b"}\n")


def test_a_request_too_large_is_refused(srv: MetricsServer) -> None:
    big = b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 20_000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as c:
        c.sendall(big[: httpserve.MAX_REQUEST_BYTES + 100])  # what the server reads
        answer = c.recv(65536)
    assert answer.startswith(b"HTTP/1.0 431 ")
    assert request(srv, "GET", "/livez")[0] == 200  # and it goes on


def test_a_hung_client_does_not_delay_others_and_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(httpserve, "CLIENT_TIMEOUT_S", 3.0)
    with MetricsServer(lambda: make_snapshot(), port=0) as srv:
        hung = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(3)]
        hung[0].sendall(b"GET /metrics HT")  # half a request line, then nothing
        try:
            assert request(srv, "GET", "/livez")[0] == 200
            for c in hung:  # answered while every hung client still waits for its answer
                c.setblocking(False)
                with pytest.raises(BlockingIOError):
                    c.recv(4096)
                c.settimeout(10)
            for c in hung:  # each is answered 408 and closed at its deadline
                assert c.recv(4096).startswith(b"HTTP/1.0 408 ")
                assert c.recv(4096) == b""
        finally:
            for c in hung:
                c.close()


def client_threads() -> int:
    return sum(t.name == "metrics-client" for t in threading.enumerate())


def test_clients_beyond_the_limit_get_503_at_once_and_serving_resumes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(httpserve, "MAX_CLIENTS", 4)
    with MetricsServer(lambda: make_snapshot(), port=0) as srv:
        hung = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(4)]
        try:
            deadline = time.monotonic() + 10  # a bound: until the 4 hold their threads
            while client_threads() < 4:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            with caplog.at_level(logging.WARNING, "edgegw.metrics"):
                # it sends nothing: the answer cannot race the request (see _accept)
                assert raw(srv.port, b"").startswith(b"HTTP/1.0 503 ")
            assert "4 clients at once" in caplog.text
        finally:
            for c in hung:
                c.close()
        deadline = time.monotonic() + 10
        while request(srv, "GET", "/livez")[0] != 200:  # the slots come back
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_many_concurrent_scrapes_all_answered(srv: MetricsServer) -> None:
    results: list[int] = []

    def scrape() -> None:
        for _ in range(10):
            results.append(request(srv, "GET", "/metrics")[0])

    threads = [threading.Thread(target=scrape) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [200] * 80


def test_a_failing_handler_is_500_logged_and_the_server_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = []

    def handler(path: str) -> tuple[int, str, bytes]:
        calls.append(path)
        if path == "/boom":
            raise RuntimeError("kaputt")
        return 200, "text/plain", b"fine\n"

    server = HttpServer("127.0.0.1", 0, handler, name="t")
    server.start()
    try:
        with caplog.at_level(logging.ERROR, "edgegw.metrics"):
            assert raw(server.port, b"GET /boom HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.0 500 ")
        assert "kaputt" in caplog.text and "/boom" in caplog.text
        assert raw(server.port, b"GET /ok HTTP/1.1\r\n\r\n").endswith(b"\r\n\r\nfine\n")
    finally:
        server.stop()
    assert calls == ["/boom", "/ok"]


def test_ipv6_and_a_taken_port() -> None:
    with MetricsServer(lambda: None, host="[::1]", port=0) as srv:
        assert raw(srv.port, b"GET /livez HTTP/1.0\r\n\r\n", host="::1").startswith(
            b"HTTP/1.0 503 "
        )
        with pytest.raises(OSError):
            MetricsServer(lambda: None, host="::1", port=srv.port)


def test_the_date_header_is_imf_fixdate() -> None:
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert http_date(1_796_555_555) == "Sun, 06 Dec 2026 11:12:35 GMT"
