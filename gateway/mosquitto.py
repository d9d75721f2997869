"""Run a private mosquitto broker on a free loopback port (demo, tests, benchmarks).

Only loopback addresses are used: ``::1`` by default, so the whole path runs over IPv6.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


class BrokerError(RuntimeError):
    pass


def find_mosquitto() -> str:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise BrokerError(
        "mosquitto is not installed: run `make setup` (it installs the Debian package "
        "'mosquitto'), or `sudo apt-get install mosquitto`"
    )


def free_port(host: str = "::1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_listening(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BrokerError(f"nothing listens on [{host}]:{port} after {timeout} s") from None
            time.sleep(0.05)


@dataclass
class Mosquitto:
    """One broker process. ``start()`` waits until it accepts connections."""

    host: str = "::1"
    port: int = 0
    extra_conf: str = ""
    workdir: Path | None = None
    persistence: bool = False
    """Keep sessions and queued messages across a restart: saved on SIGTERM, and (with
    ``save_on_change``) after every change, so a crash (SIGKILL, power cut) keeps what the
    broker acknowledged too; mosquitto's default saves every 1800 s only."""
    save_on_change: bool = False
    """With ``persistence``: ``autosave_on_changes true`` and ``autosave_interval 1``, what
    a broker that must not lose acknowledged messages in a crash needs. Off by default:
    mosquitto then writes its whole database after every queued message, which stalls it
    under a backlog drain (tests/faults/test_broker_crash.py turns it on)."""
    users: dict[str, str] | None = None
    """Require a login on the main listener: user name -> password (a password_file
    made with ``mosquitto_passwd``); anonymous clients are refused there."""
    acl: str | None = None
    """acl_file contents for the main listener, e.g. ``"user gw\ntopic write edgegw/#\n"``."""
    max_qos: int | None = None
    """Highest QoS the main listener accepts (announced in an MQTT 5 CONNACK)."""
    max_packet_size: int | None = None
    """Largest packet the broker accepts (global; announced in an MQTT 5 CONNACK)."""
    open_listener: bool = False
    """Also open a second listener on the same host with no login, ACL or QoS limit (for
    a test's receiver); its port is ``open_port``."""
    open_port: int | None = field(default=None, init=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> Mosquitto:
        if self.port == 0:
            self.port = free_port(self.host)
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="edgegw-mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            self._listeners()
            # Run as root, mosquitto drops to the user 'mosquitto', which cannot write
            # its log or persistence file in our work dir: stay who we are.
            + f"user {getpass.getuser()}\n"
            + (
                f"persistence true\npersistence_location {self.workdir}/\n"
                + ("autosave_on_changes true\nautosave_interval 1\n" if self.save_on_change else "")
                if self.persistence
                else "persistence false\n"
            )
            + "max_queued_messages 1000000\n"
            "max_inflight_messages 0\n"
            "log_type error\nlog_type warning\n"
            + (f"max_packet_size {self.max_packet_size}\n" if self.max_packet_size else "")
            + f"log_dest file {self.workdir / 'mosquitto.log'}\n"
            + self.extra_conf
        )
        self.proc = subprocess.Popen(
            [find_mosquitto(), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "stderr.log", "wb"),  # noqa: SIM115
        )
        try:
            wait_listening(self.host, self.port)
            errors = (self.workdir / "stderr.log").read_text(errors="replace")
            if "Error" in errors:  # e.g. cannot write its log or persistence file
                raise BrokerError(errors.strip())
        except BrokerError:
            self.stop()
            log = (self.workdir / "stderr.log").read_text(errors="replace")
            raise BrokerError(
                f"mosquitto did not start on [{self.host}]:{self.port}: {log}"
            ) from None
        return self

    def _listeners(self) -> str:
        assert self.workdir is not None
        if not (
            self.users is not None or self.acl or self.max_qos is not None or self.open_listener
        ):
            return f"listener {self.port} {self.host}\nallow_anonymous true\n"
        main = f"per_listener_settings true\nlistener {self.port} {self.host}\n"
        if self.users is not None:
            pw = self.workdir / "passwords"
            pw.write_text("")
            pw.chmod(0o600)
            for user, password in self.users.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(pw), user, password],
                    check=True,
                    capture_output=True,
                )
            main += f"password_file {pw}\nallow_anonymous false\n"
        else:
            main += "allow_anonymous true\n"
        if self.acl is not None:
            acl = self.workdir / "acl"
            acl.write_text(self.acl)
            main += f"acl_file {acl}\n"
        if self.max_qos is not None:
            main += f"max_qos {self.max_qos}\n"
        if self.open_listener:
            if not self.open_port:
                self.open_port = free_port(self.host)
            main += f"listener {self.open_port} {self.host}\nallow_anonymous true\n"
        return main

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is saved on the way out."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
