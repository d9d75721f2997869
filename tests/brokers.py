"""Brokers other than mosquitto, for the uplink tests: amqtt (PyPI), which speaks only
MQTT 3.1.1, as FIELD-TESTING.md describes."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from gateway.mosquitto import free_port, wait_listening


class Amqtt:
    """amqtt's broker (MQTT 3.1.1 only) on a free [::1] port, as its own process."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port("::1")
        self.conf = tmp / "amqtt.yaml"
        self.conf.write_text(
            "listeners:\n  default:\n    type: tcp\n"
            f"    bind: '::1:{self.port}'\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            "    allow_anonymous: true\n"
        )
        self.log = tmp / "amqtt.log"

    def __enter__(self) -> Amqtt:
        exe = Path(sys.executable).with_name("amqtt")
        self.proc = subprocess.Popen(
            [str(exe), "-c", str(self.conf)],
            stdout=open(self.log, "wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            wait_listening("::1", self.port, 20)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
