"""How to reach and log in to one OPC UA server: endpoint, security, credentials.

Shared by the device model (``config.py``) and `edgegw browse`; no asyncua import.
Also holds the validation helpers every model here uses: errors that quote the bad
value and list what is accepted, located at the precise field.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from .derived import DEFAULT_PORT, ConnectionDerived
from .types import SecurityMode, SecurityPolicy

__all__ = [
    "DEFAULT_PORT",
    "Connection",
    "SecurityMode",
    "SecurityPolicy",
    "config_error",
    "fail_at",
    "parse_enum",
]

_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")

E = TypeVar("E", bound=Enum)


def config_error(message: str) -> PydanticCustomError:
    # The message is passed as context so braces in quoted values are not templates.
    return PydanticCustomError("opcua_config", "{message}", {"message": message})


def fail_at(title: str, loc: tuple[str | int, ...], value: Any, message: str) -> NoReturn:
    """Raise an error located at a nested field (e.g. ``tags[3].name``)."""
    detail = InitErrorDetails(type=config_error(message), loc=loc, input=value)
    raise ValidationError.from_exception_data(title, [detail])


def parse_enum(enum: type[E], value: Any, what: str) -> E:
    """Parse an enum value case-insensitively, with a precise error."""
    if isinstance(value, enum):
        return value
    if isinstance(value, str):
        for member in enum:
            if member.value.lower() == value.strip().lower():
                return member
    accepted = ", ".join(repr(m.value) for m in enum)
    message = f"unknown {what} {value!r}; accepted: {accepted}"
    if isinstance(value, str):
        close = difflib.get_close_matches(value, [m.value for m in enum], n=2, cutoff=0.5)
        if close:
            message += f" (did you mean {' or '.join(map(repr, close))}?)"
    raise config_error(message)


class Model(BaseModel):
    # defer_build: no validator of its own until one is used directly; the gateway's
    # config validator holds this model's checks too (0.6 MiB for every protocol's models)
    model_config = ConfigDict(extra="forbid", use_enum_values=False, defer_build=True)


def _check_endpoint(v: str) -> str:
    accepted = "accepted: opc.tcp://<host>[:<port>][/<path>], e.g. opc.tcp://10.0.0.5:4840"
    text = v.strip()
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() != "opc.tcp":
        raise config_error(f"endpoint {v!r} is not an opc.tcp:// URL; {accepted}")
    if "@" in rest.split("/", 1)[0]:
        raise config_error(
            f"endpoint {v!r} holds credentials; put them in 'username' and 'password' "
            "(or 'password_file'), not in the URL"
        )
    netloc = rest.split("/", 1)[0]
    if netloc.count(":") > 1 and not netloc.startswith("["):
        raise config_error(
            f"endpoint {v!r}: write an IPv6 address in brackets, e.g. opc.tcp://[::1]:4840"
        )
    try:
        parts = urlsplit("opc.tcp://" + rest)
        port = parts.port
    except ValueError as exc:
        raise config_error(f"endpoint {v!r} is not valid ({exc}); {accepted}") from None
    host = parts.hostname or ""
    if parts.query or parts.fragment:
        raise config_error(f"endpoint {v!r} has a query or fragment; {accepted}")
    if port == 0:
        raise config_error(f"endpoint {v!r}: port 0 is not usable; accepted: 1..65535")
    _check_host(v, host)
    shown = f"[{host}]" if ":" in host else host
    path = parts.path if parts.path not in ("", "/") else ""
    return f"opc.tcp://{shown}:{port or DEFAULT_PORT}{path}"


def _check_host(v: str, host: str) -> None:
    if not host:
        raise config_error(f"endpoint {v!r} has no host; accepted: e.g. opc.tcp://10.0.0.5:4840")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise config_error(f"endpoint {v!r}: {host!r} is not an IPv6 address") from None
        return
    labels = host.split(".")
    if all(p.isdigit() for p in labels):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise config_error(f"endpoint {v!r}: {host!r} is not a valid IPv4 address") from None
        return
    if len(host) > 253 or not all(_HOST_LABEL.match(p) for p in labels):
        raise config_error(f"endpoint {v!r}: {host!r} is not a valid host name")


def _readable_file(v: Path | None, what: str) -> Path | None:
    if v is None:
        return None
    if not v.is_file():
        raise config_error(f"{what} {str(v)!r} does not exist or is not a file")
    if not os.access(v, os.R_OK):
        raise config_error(f"{what} {str(v)!r} is not readable by this user")
    return v


class Connection(ConnectionDerived, Model):
    """How to reach and log in to one OPC UA server (shared by devices and `edgegw browse`)."""

    endpoint: str = Field(
        description="opc.tcp://host:port/path; IPv6 literals in brackets; port default 4840"
    )
    timeout_ms: int = Field(
        5000, ge=100, le=600_000, description="per request, and per connect step (100..600000)"
    )
    security_policy: SecurityPolicy = Field(
        SecurityPolicy.NONE, description="None | Basic256Sha256 | Aes128Sha256RsaOaep"
    )
    security_mode: SecurityMode | None = Field(
        None,
        description="None | Sign | SignAndEncrypt; default SignAndEncrypt with a security "
        "policy, None without",
    )
    username: str | None = Field(None, description="user name login; anonymous when unset")
    password: SecretStr | None = Field(None, description="password of username")
    password_file: Path | None = Field(
        None, description="file holding the password (first line), instead of password"
    )
    server_certificate: Path | None = Field(
        None,
        description="the server's certificate (DER or PEM), trusted in addition to the "
        "certificates in <pki dir>/trusted/",
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        return _check_endpoint(v)

    @field_validator("security_policy", mode="before")
    @classmethod
    def _policy(cls, v: Any) -> SecurityPolicy:
        return (
            SecurityPolicy.NONE if v is None else parse_enum(SecurityPolicy, v, "security_policy")
        )

    @field_validator("security_mode", mode="before")
    @classmethod
    def _mode(cls, v: Any) -> SecurityMode | None:
        return None if v is None else parse_enum(SecurityMode, v, "security_mode")

    @field_validator("password_file")
    @classmethod
    def _password_file(cls, v: Path | None) -> Path | None:
        return _readable_file(v, "password_file")

    @field_validator("server_certificate")
    @classmethod
    def _server_certificate(cls, v: Path | None) -> Path | None:
        if _readable_file(v, "server_certificate") is None:
            return None
        from cryptography import x509  # only when a certificate is configured

        data = Path(v).read_bytes()
        try:
            if b"-----BEGIN CERTIFICATE-----" in data:
                x509.load_pem_x509_certificate(data)
            else:
                x509.load_der_x509_certificate(data)
        except ValueError:
            raise config_error(
                f"server_certificate {str(v)!r} is not an X.509 certificate; accepted: DER "
                "(.der, as OPC UA servers export them) or PEM (.pem)"
            ) from None
        return v

    @model_validator(mode="after")
    def _check_security(self) -> Connection:
        title = type(self).__name__
        policy, mode = self.security_policy, self.security_mode
        if mode is None:
            none = policy is SecurityPolicy.NONE
            self.security_mode = SecurityMode.NONE if none else SecurityMode.SIGN_AND_ENCRYPT
        elif policy is SecurityPolicy.NONE and mode is not SecurityMode.NONE:
            fail_at(
                title,
                ("security_mode",),
                mode.value,
                f"security_mode {mode.value!r} needs a security_policy; accepted with it: "
                "'Basic256Sha256' or 'Aes128Sha256RsaOaep' (or set security_mode: None)",
            )
        elif policy is not SecurityPolicy.NONE and mode is SecurityMode.NONE:
            fail_at(
                title,
                ("security_mode",),
                mode.value,
                f"security_mode 'None' contradicts security_policy {policy.value!r}; "
                "accepted: 'Sign' or 'SignAndEncrypt' (or set security_policy: None)",
            )
        if self.password is not None and self.password_file is not None:
            fail_at(
                title,
                ("password_file",),
                str(self.password_file),
                "give either password or password_file, not both",
            )
        has_password = self.password is not None or self.password_file is not None
        if has_password and not self.username:
            field = "password" if self.password is not None else "password_file"
            fail_at(title, (field,), "***", f"{field} is set but username is not; add username")
        if self.username is not None and not has_password:
            fail_at(
                title,
                ("username",),
                self.username,
                f"username {self.username!r} needs a password: set password or password_file",
            )
        if (
            self.server_certificate is not None
            and policy is SecurityPolicy.NONE
            and self.username is None
        ):
            fail_at(
                title,
                ("server_certificate",),
                str(self.server_certificate),
                "server_certificate has no effect: with security_policy None and no username "
                "the server's certificate is not used; remove it or set a security_policy",
            )
        return self
