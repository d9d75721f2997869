"""What a first day meets on the command line: output to a pipe that closes early
(`edgegw validate ... | head`) and `edgegw simulate` on a port that is taken end without a
traceback; the port one names the port, the device and what to do."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

ENV = dict(os.environ, PYTHONPATH=str(REPO))


def test_validate_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        "gateway: {id: g}\ndevices:\n"
        + "".join(
            f"  - {{name: d{i}, protocol: modbus_tcp, host: 127.0.0.1, "
            f"tags: [{{name: t, address: {i}}}]}}\n"
            for i in range(400)
        )
    )
    # the shell's `| head -1`: the reader leaves after one line, the writer meets EPIPE
    r = subprocess.run(
        f"{sys.executable} -m gateway.cli validate {f} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
        check=False,
    )
    assert r.stdout.startswith(f"{f}: OK"), r.stdout
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    assert r.stderr == ""


def test_simulate_on_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        f = tmp_path / "c.yaml"
        f.write_text(
            "gateway: {id: g}\ndevices:\n"
            f"  - {{name: plc, protocol: modbus_tcp, host: 127.0.0.1, port: {port}, "
            "tags: [{name: t, address: 0}]}\n"
        )
        r = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "simulate", "-c", str(f)],
            capture_output=True,
            text=True,
            timeout=60,
            env=ENV,
            check=False,
        )
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"edgegw: simulate: cannot listen on 127.0.0.1:{port} (device plc): the port is "
        "already in use (another simulator, or a real server on this machine): stop it "
        "(ss -ltnp shows who listens), or give the device another port in the config"
    ], r.stderr
