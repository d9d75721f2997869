"""The security side of connecting: pick the endpoint, trust (or refuse) the server's
certificate before anything is sent to it, and turn connect failures into messages
that say what to fix."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING

from asyncua import Client, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import security_policies
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from drivers.contract import ConnectError

from .decode import status_name
from .pki import ClientIdentity, TrustList, describe_certificate
from .types import SecurityMode, SecurityPolicy

if TYPE_CHECKING:
    from .connection import Connection

__all__ = [
    "POLICIES",
    "EndpointNotOffered",
    "LoginRefused",
    "ServerNotTrusted",
    "ServerTrust",
    "explain",
    "security_mode",
]

log = logging.getLogger("edgegw.opcua")

POLICIES: dict[SecurityPolicy, type[security_policies.SecurityPolicy]] = {
    SecurityPolicy.BASIC256SHA256: security_policies.SecurityPolicyBasic256Sha256,
    SecurityPolicy.AES128SHA256RSAOAEP: security_policies.SecurityPolicyAes128Sha256RsaOaep,
}
_S = ua.StatusCodes
_MODES = {
    SecurityMode.NONE: ua.MessageSecurityMode.None_,
    SecurityMode.SIGN: ua.MessageSecurityMode.Sign,
    SecurityMode.SIGN_AND_ENCRYPT: ua.MessageSecurityMode.SignAndEncrypt,
}


class ServerNotTrusted(ConnectError):
    """The server's certificate is not in the trust list; nothing was sent to it."""


class LoginRefused(ConnectError):
    """The server refused the user name and password (or anonymous login)."""


class EndpointNotOffered(ConnectError):
    """The server offers no endpoint with the configured security policy and mode."""


def security_mode(conn: Connection) -> ua.MessageSecurityMode:
    return _MODES[conn.security_mode or SecurityMode.NONE]


def _first_certificate(der: bytes) -> bytes:
    """Servers may send a chain; the first DER item is their own certificate."""
    if len(der) < 4:
        return der
    return der[: int.from_bytes(der[2:4], "big") + 4]


class ServerTrust:
    """Checks one server's certificate against a device's trust list."""

    def __init__(self, conn: Connection, trust: TrustList, name: str, trust_new: bool) -> None:
        self.conn, self.trust, self.name, self.trust_new = conn, trust, name, trust_new
        self.refused: ServerNotTrusted | None = None
        """Set when the last check refused the server: the error to report."""

    def where(self) -> str:
        return f"cannot connect to {self.conn.endpoint} (device {self.name!r})"

    async def endpoint_certificate(self, timeout_s: float) -> bytes:
        """The certificate of the endpoint with our policy and mode, once trusted."""
        probe = Client(self.conn.endpoint, timeout=timeout_s)
        probe.max_messagesize = 4 * 2**20  # endpoints and certificates: a few KiB
        probe.max_chunkcount = probe.max_messagesize // 8192 + 1
        endpoints = await asyncio.wait_for(probe.connect_and_get_server_endpoints(), timeout_s * 2)
        policy, mode = POLICIES[self.conn.security_policy], security_mode(self.conn)
        for ep in endpoints:
            if ep.SecurityPolicyUri == policy.URI and ep.SecurityMode == mode:
                der = _first_certificate(bytes(ep.ServerCertificate or b""))
                cert = x509.load_der_x509_certificate(der)
                self.check(cert)
                return cert.public_bytes(Encoding.DER)
        names = {cls.URI: p.value for p, cls in POLICIES.items()}
        names[security_policies.SecurityPolicyNone.URI] = "None"
        offered = sorted(
            {
                f"{names.get(e.SecurityPolicyUri, e.SecurityPolicyUri)}/{e.SecurityMode.name}"
                for e in endpoints
            }
        )
        raise EndpointNotOffered(
            f"{self.where()}: the server offers no endpoint with security_policy "
            f"{self.conn.security_policy.value} and security_mode "
            f"{(self.conn.security_mode or SecurityMode.NONE).value}; it offers: "
            + ", ".join(o.replace("None_", "None") for o in offered)
        )

    def check(self, cert: x509.Certificate) -> None:
        """Return if trusted; else keep it in rejected/ and raise ServerNotTrusted."""
        if self.trust.is_trusted(cert):
            return
        if self.trust_new:
            path = self.trust.trust(cert)
            log.warning("opcua %s: trusting %s as %s", self.name, describe_certificate(cert), path)
            return
        saved = self.trust.reject(cert)
        self.refused = ServerNotTrusted(
            f"{self.where()}: the server's certificate {describe_certificate(cert)} is not "
            f"trusted. If this is the server you expect, trust it: mv {saved} "
            f"{self.trust.trusted_dir}/ (or set server_certificate: to a copy of it); no "
            "password or data was sent to it"
        )
        raise self.refused

    async def validate(self, cert: x509.Certificate, _app: ua.ApplicationDescription) -> None:
        """asyncua's hook in CreateSession, before ActivateSession sends any password."""
        if self.conn.security_policy is SecurityPolicy.NONE and not self.conn.username:
            return  # no encryption and no secret to protect: nothing to check
        try:
            self.check(cert)
        except ServerNotTrusted:
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted) from None


def explain(exc: BaseException, trust: ServerTrust, identity: ClientIdentity) -> ConnectError:
    """A ConnectError saying what failed and what to do about it."""
    conn, where = trust.conn, trust.where()
    theirs = (
        f"add {identity.cert_path} (thumbprint {identity.thumbprint}) to the server's trusted "
        "certificates"
    )
    if trust.refused is not None:
        return trust.refused
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return ConnectError(f"{where}: no answer within {conn.timeout_ms} ms")
    if isinstance(exc, socket.gaierror):
        return ConnectError(f"{where}: cannot resolve host name {conn.host!r} ({exc})")
    if isinstance(exc, ua.UaStatusCodeError):
        code, name = exc.code, status_name(exc.code)
        if code == _S.BadUserAccessDenied:
            if conn.username:
                return LoginRefused(
                    f"{where}: the server refused user {conn.username!r} ({name}): wrong user "
                    "name or password"
                )
            return LoginRefused(
                f"{where}: the server refused anonymous login ({name}): set username and password"
            )
        if code in (
            ua.StatusCodes.BadIdentityTokenRejected,
            ua.StatusCodes.BadIdentityTokenInvalid,
        ):
            kind = "user name/password" if conn.username else "anonymous"
            return LoginRefused(f"{where}: the server does not accept {kind} login here ({name})")
        if "Certificate" in name or "Security" in name:
            return ConnectError(f"{where}: the server refused this gateway's certificate "
                                f"({name}); {theirs}")  # fmt: skip
        return ConnectError(f"{where}: the server answered {name}")
    errno = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and errno:
        return ConnectError(f"{where}: {os.strerror(errno)}")
    if isinstance(exc, ConnectionError) and conn.security_policy is not SecurityPolicy.NONE:
        return ConnectError(
            f"{where}: the server closed the connection ({exc}); servers often do that when "
            f"they do not trust the client: {theirs}"
        )
    return ConnectError(f"{where}: {type(exc).__name__}: {exc}")
