"""How the platform-side commands (`edgegw receive`, `edgegw command`) reach a broker:
one set of options (address, TLS with a CA and a client certificate, a login) and one
way to turn them into a connection. A password is never taken on the command line (it
shows in `ps` and the shell's history): a file, or the environment."""

from __future__ import annotations

import argparse
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import fail

PASSWORD_ENV = "EDGEGW_MQTT_PASSWORD"
PASSWORD_EPILOG = (
    f"Broker password: --password-file FILE or the environment variable {PASSWORD_ENV}\n"
    "(never on the command line)."
)
PROTOCOLS = ("mqtt5", "mqtt311")


@dataclass(frozen=True, slots=True)
class Broker:
    """A broker and how to log in to it (from the options, checked)."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None
    protocol: str = "mqtt5"

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}"

    def client(self, client_id: str = "") -> Any:
        """A paho client (callback API 2) set up for this broker: protocol, TLS, login.
        Exceptions raised in its callbacks are logged by paho, never end its thread."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        proto = mqtt.MQTTv5 if self.protocol == "mqtt5" else mqtt.MQTTv311
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto)
        client.suppress_exceptions = True
        if self.tls is not None:
            client.tls_set_context(self.tls)
        if self.username is not None or self.password is not None:
            client.username_pw_set(self.username, self.password)
        return client


def add_broker_options(p: argparse.ArgumentParser, *, protocol: bool = False) -> None:
    """The broker options; ``protocol``: also --protocol (MQTT 3.1.1 brokers)."""
    p.add_argument("--host", default="::1", help="broker address (default ::1)")
    p.add_argument("--port", type=int, default=None, help="default 1883, 8883 with TLS")
    p.add_argument("--tls", action="store_true", help="TLS to the broker (system CA store)")
    p.add_argument("--ca-file", metavar="PEM", help="CA to verify the broker (implies --tls)")
    p.add_argument("--cert-file", metavar="PEM", help="client certificate (mutual TLS)")
    p.add_argument("--key-file", metavar="PEM", help="client certificate's key")
    p.add_argument("--username", help="broker user name")
    # Refused with a reason (and so never taken as an abbreviation of --password-file).
    p.add_argument("--password", help=argparse.SUPPRESS)
    p.add_argument(
        "--password-file",
        metavar="FILE",
        help=f"broker password, first line of FILE (or the environment: {PASSWORD_ENV})",
    )
    if protocol:
        p.add_argument(
            "--protocol",
            choices=PROTOCOLS,
            default="mqtt5",
            help="MQTT version (default mqtt5; mqtt311 for brokers without MQTT 5)",
        )


def broker_from_args(args: argparse.Namespace) -> Broker:
    """The broker the options name; bad options (exit 2) say what to fix."""
    password = _password(args)
    tls = _tls(args)
    return Broker(
        host=args.host.strip("[]"),
        port=args.port or (8883 if tls is not None else 1883),
        tls=tls,
        username=args.username,
        password=password,
        protocol=getattr(args, "protocol", "mqtt5"),
    )


def _password(args: argparse.Namespace) -> str | None:
    if args.password is not None:
        raise fail(
            "--password: a password on the command line shows in `ps` and the shell's "
            f"history; put it in a file (--password-file FILE, mode 0600) or in {PASSWORD_ENV}"
        )
    if args.password_file:
        try:
            lines = Path(args.password_file).read_text().splitlines()
        except OSError as exc:
            raise fail(
                f"--password-file {args.password_file}: cannot read ({exc.strerror})"
            ) from None
        if not lines or not lines[0]:
            raise fail(f"--password-file {args.password_file}: the first line is empty")
        return lines[0]
    return os.environ.get(PASSWORD_ENV) or None


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not (args.tls or args.ca_file or args.cert_file or args.key_file):
        return None
    if bool(args.cert_file) != bool(args.key_file):
        raise fail("--cert-file and --key-file go together (mutual TLS), or neither")
    from security.tls import client_context

    try:
        return client_context(args.ca_file, args.cert_file, args.key_file)
    except (OSError, ValueError) as exc:
        raise fail(f"TLS: cannot load the CA or client certificate: {exc}") from None
