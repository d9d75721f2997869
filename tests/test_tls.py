"""The broker link over TLS, against a real mosquitto with certificates from tests/tlscerts.py:
CA verification, host names, mutual TLS, the minimum version, and no plaintext fallback.

Everything listens on loopback only ([::1] and 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import TlsConfig, UplinkConfig
from gateway.forwarder import Forwarder
from gateway.mosquitto import Mosquitto
from gateway.outbox_thread import OutboxThread
from gateway.receiver import MqttReceiver, Receiver
from gateway.wire import encode_payload
from security import DeviceKey, sign1
from security.csr import TLS_KEY_FILE, make_csr
from security.tls import client_context
from tests.tlscerts import Pki, make_pki, sign_csr


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), client_cn="gw1")


def tls_broker(
    workdir: Path,
    pki: Pki,
    *,
    host: str = "::1",
    cert: Path | None = None,
    key: Path | None = None,
    require_certificate: bool = False,
    tls_version: str | None = None,
) -> Mosquitto:
    """A mosquitto whose only listener speaks TLS."""
    conf = f"cafile {pki.ca}\ncertfile {cert or pki.server_cert}\nkeyfile {key or pki.server_key}\n"
    if require_certificate:
        conf += "require_certificate true\n"
    if tls_version:
        conf += f"tls_version {tls_version}\n"
    return Mosquitto(host=host, workdir=workdir, extra_conf=conf).start()


@pytest.fixture
def broker(tmp_path: Path, pki: Pki) -> Iterator[Mosquitto]:
    b = tls_broker(tmp_path / "broker", pki)
    yield b
    b.stop()


class Client:
    """paho with a given SSLContext: connect, then subscribe-publish-receive one message."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.tls_set_context(ctx)
        self.connected = threading.Event()
        self.received = threading.Event()
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda c, *a: c.publish("t/x", b"hello", qos=1)
        self.c.on_message = lambda *a: self.received.set()
        self.tls_version: str | None = None

    def _on_connect(self, c: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
        if not getattr(rc, "is_failure", True):
            self.connected.set()
            c.subscribe("t/#", qos=1)

    def roundtrip(self, host: str, port: int, timeout: float = 10.0) -> bool:
        self.c.connect(host, port, 30)  # the TLS handshake happens here
        sock = self.c.socket()
        if sock is None:  # the peer closed the connection right after the handshake
            return False
        assert isinstance(sock, ssl.SSLSocket)
        self.tls_version = sock.version()
        self.c.loop_start()
        try:
            return self.received.wait(timeout)
        finally:
            self.c.disconnect()
            self.c.loop_stop()


def refused(ctx: ssl.SSLContext, host: str, port: int) -> str:
    """How a connection attempt failed; fails the test if a session got through."""
    cl = Client(ctx)
    try:
        ok = cl.roundtrip(host, port, timeout=3.0)
    except (ssl.SSLError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    assert not ok and not cl.connected.is_set(), "an MQTT session was established"
    # With TLS 1.3 a rejected client certificate is reported after the client's side of the
    # handshake, so the failure shows as a closed connection with no CONNACK.
    return "no CONNACK"


@pytest.mark.parametrize(
    ("listen", "connect"), [("::1", "::1"), ("127.0.0.1", "127.0.0.1"), ("127.0.0.1", "localhost")]
)
def test_connects_verifying_the_broker_with_a_ca_file(
    tmp_path: Path, pki: Pki, listen: str, connect: str
) -> None:
    b = tls_broker(tmp_path / "b", pki, host=listen)
    try:
        cl = Client(client_context(pki.ca))
        assert cl.roundtrip(connect, b.port)
        assert cl.tls_version in ("TLSv1.2", "TLSv1.3")
    finally:
        b.stop()


def test_host_name_is_verified(tmp_path: Path, pki: Pki) -> None:
    """A certificate from the right CA for another name is refused."""
    b = tls_broker(tmp_path / "b", pki, cert=pki.other_cert, key=pki.other_key)
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            Client(client_context(pki.ca)).roundtrip("::1", b.port)
    finally:
        b.stop()


def test_broker_from_another_ca_is_refused(broker: Mosquitto, pki: Pki) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        Client(client_context(pki.rogue_ca)).roundtrip("::1", broker.port)


def test_system_store_does_not_trust_a_private_ca(broker: Mosquitto) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        Client(client_context()).roundtrip("::1", broker.port)


def test_mutual_tls(tmp_path: Path, pki: Pki) -> None:
    b = tls_broker(tmp_path / "b", pki, require_certificate=True)
    try:
        with_cert = client_context(pki.ca, pki.client_cert, pki.client_key)
        assert Client(with_cert).roundtrip("::1", b.port)
        assert refused(client_context(pki.ca), "::1", b.port)
        rogue = client_context(pki.ca, pki.rogue_client_cert, pki.rogue_client_key)
        assert refused(rogue, "::1", b.port)
    finally:
        b.stop()


def test_enrolment_csr_signed_by_the_ca_authenticates(tmp_path: Path, pki: Pki) -> None:
    """`edgegw keys csr` -> the platform CA signs it -> mutual TLS with the device's key."""
    state = tmp_path / "state"
    cert = sign_csr(pki, make_csr(state, "gw1"), tmp_path / "gw1.crt")
    b = tls_broker(tmp_path / "b", pki, require_certificate=True)
    try:
        assert Client(client_context(pki.ca, cert, state / TLS_KEY_FILE)).roundtrip("::1", b.port)
    finally:
        b.stop()


def test_tls13_only_listener_works(tmp_path: Path, pki: Pki) -> None:
    b = tls_broker(tmp_path / "b", pki, tls_version="tlsv1.3")
    try:
        cl = Client(client_context(pki.ca))
        assert cl.roundtrip("::1", b.port) and cl.tls_version == "TLSv1.3"
    finally:
        b.stop()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls11_only_server_is_refused(pki: Pki) -> None:
    """mosquitto's tls_version is a minimum, so a TLS 1.1-only server is made with Python's
    ssl; a permissive client proves it really speaks TLS 1.1 before ours is refused."""
    srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv.load_cert_chain(pki.server_cert, pki.server_key)
    srv.minimum_version = ssl.TLSVersion.TLSv1
    srv.maximum_version = ssl.TLSVersion.TLSv1_1
    srv.set_ciphers("DEFAULT:@SECLEVEL=0")
    with socket.socket(socket.AF_INET6) as ls:
        ls.bind(("::1", 0))
        ls.listen(4)
        port = ls.getsockname()[1]

        def serve() -> None:
            for _ in range(2):
                conn, _ = ls.accept()
                try:
                    with srv.wrap_socket(conn, server_side=True) as s:
                        s.recv(1)
                except (ssl.SSLError, OSError):
                    pass
                finally:
                    conn.close()

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        permissive = ssl.create_default_context(cafile=pki.ca)
        permissive.minimum_version = ssl.TLSVersion.TLSv1
        permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
        try:
            with permissive.wrap_socket(
                socket.create_connection(("::1", port)), server_hostname="::1"
            ) as s:
                assert s.version() == "TLSv1.1"
        except ssl.SSLError as exc:
            pytest.skip(f"this OpenSSL cannot speak TLS 1.1 at all: {exc}")
        with pytest.raises(ssl.SSLError, match=r"PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL"):
            Client(client_context(pki.ca)).roundtrip("::1", port)
        t.join(5)


# -- the forwarder over TLS -----------------------------------------------------------------

TOPIC = "edgegw/gw1/telemetry"


def seal(key: DeviceKey, seq: int) -> bytes:
    payload = encode_payload(
        gw="gw1", seq=seq, boot=1, kind="telemetry", t_ns=seq, readings=[("plc/t", 1, 1.5, 0)]
    )
    return sign1(payload, key, TOPIC.encode())


def uplink(port: int, pki: Pki, mutual: bool = True) -> UplinkConfig:
    tls = TlsConfig(
        ca_file=pki.ca,
        cert_file=pki.client_cert if mutual else None,
        key_file=pki.client_key if mutual else None,
    )
    return UplinkConfig(host="::1", port=port, max_inflight=8, tls=tls)


def tls_context_for(up: UplinkConfig) -> ssl.SSLContext:
    t = up.tls
    assert t is not None
    return client_context(t.ca_file, t.cert_file, t.key_file)


def test_forwarder_delivers_over_mutual_tls(tmp_path: Path, pki: Pki) -> None:
    key, _ = DeviceKey.load_or_create(tmp_path)
    b = tls_broker(tmp_path / "b", pki, require_certificate=True)
    rx = Receiver({"gw1": key.public_key}, "edgegw")
    mr = MqttReceiver(
        rx, "::1", b.port, tls_context=client_context(pki.ca, pki.client_cert, pki.client_key)
    ).start()

    async def main() -> None:
        ot = OutboxThread(tmp_path / "outbox.db")
        ob = await ot.open()
        for _ in range(50):
            await ot.run(ob.append, TOPIC, lambda seq: seal(key, seq))
        up = uplink(b.port, pki)
        fwd = Forwarder(up, "gw1", ot, tls_context_for(up))
        task = asyncio.create_task(fwd.run())
        try:
            assert await fwd.drain(20), fwd.stats
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await ot.close()

    try:
        asyncio.run(main())
        deadline = time.monotonic() + 10
        while rx.stats.messages_verified < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        mr.stop()
        b.stop()
    assert rx.stats.messages_verified == 50 and rx.stats.signature_failures == 0


class Capture:
    """A TCP listener that records what each connection sends, and answers badly."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.socket(socket.AF_INET6)
        self.sock.bind(("::1", 0))
        self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]
        self.received: list[bytearray] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        self.received.append(buf)
        conn.settimeout(1.0)
        try:
            if self.mode == "http":  # answer before the client says anything
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            first = conn.recv(65536)
            buf += first
            if self.mode == "close":
                return
            # "garbage": reply to the ClientHello with bytes that are not a TLS record
            conn.sendall(b"\x00\x00\x00\x00garbage\r\n" * 4)
            while chunk := conn.recv(65536):  # anything the client sends after that
                buf += chunk
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self.closed = True
        self.sock.close()


@pytest.mark.parametrize("mode", ["close", "garbage", "http"])
def test_forwarder_never_falls_back_to_plaintext(tmp_path: Path, pki: Pki, mode: str) -> None:
    """Whatever the listener does to the handshake, the forwarder only ever sends TLS
    records (first byte 0x16, handshake), never an MQTT CONNECT (0x10, "MQTT")."""
    key, _ = DeviceKey.load_or_create(tmp_path)
    cap = Capture(mode)

    async def main() -> Forwarder:
        ot = OutboxThread(tmp_path / "outbox.db")
        ob = await ot.open()
        await ot.run(ob.append, TOPIC, lambda seq: seal(key, seq))
        up = uplink(cap.port, pki)
        fwd = Forwarder(up, "gw1", ot, tls_context_for(up))
        task = asyncio.create_task(fwd.run())
        deadline = time.monotonic() + 10
        while len(cap.received) < 3 and time.monotonic() < deadline:  # several attempts
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ot.close()
        return fwd

    try:
        fwd = asyncio.run(main())
    finally:
        cap.stop()
    assert len(cap.received) >= 3, "the forwarder did not retry"
    assert fwd.stats.acked == 0 and not fwd.stats.link_up
    for data in cap.received:
        assert data, "connection closed before the client sent anything"
        assert data[0] == 0x16, f"not a TLS handshake record: {bytes(data[:16])!r}"
        assert data[0] != 0x10 and b"MQTT" not in data
