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
    """Keep sessions and queued messages across a restart (saved on SIGTERM)."""
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> Mosquitto:
        if self.port == 0:
            self.port = free_port(self.host)
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="edgegw-mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} {self.host}\n"
            # Run as root, mosquitto drops to the user 'mosquitto', which cannot write
            # its log or persistence file in our work dir: stay who we are.
            f"user {getpass.getuser()}\n"
            "allow_anonymous true\n"
            + (
                f"persistence true\npersistence_location {self.workdir}/\n"
                if self.persistence
                else "persistence false\n"
            )
            + "max_queued_messages 1000000\n"
            "max_inflight_messages 0\n"
            "log_type error\nlog_type warning\n"
            f"log_dest file {self.workdir / 'mosquitto.log'}\n" + self.extra_conf
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

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
