"""`edgegw simulate`: serve simulated devices for a config's devices, every protocol
(demo, benchmarks, trying a device map before the PLC is wired)."""

from __future__ import annotations

import asyncio
import errno
import importlib
import signal
import socket
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from .config import Config
from .registry import PACKAGES


async def serve_all(
    devices: Sequence[Any],
    stop: asyncio.Event,
    *,
    interval_s: float = 0.1,
    anomalies: Iterable[Any] = (),
    modbus_server: str = "pymodbus",
) -> None:
    """Each protocol's own simulator for its devices, side by side, until ``stop``;
    ``modbus_server="fast"``: Modbus TCP from the lean server (benchmarks)."""
    by_pkg: dict[str, list[Any]] = {}
    for d in devices:  # one simulator module per package (Modbus TCP, RTU, RTU over TCP)
        by_pkg.setdefault(PACKAGES[d.protocol], []).append(d)
    runs = []
    for pkg, group in by_pkg.items():
        sim = importlib.import_module(pkg + ".simulator")
        kwargs: dict[str, Any] = {"interval_s": interval_s}
        if pkg == "drivers.modbus":
            kwargs["anomalies"] = anomalies
            kwargs["server"] = modbus_server
        runs.append(sim.serve_devices(group, stop, **kwargs))
    await asyncio.gather(*runs)


def _where(d: Any) -> str:
    """A device's address: host, endpoint or serial port."""
    return str(getattr(d, "host", None) or getattr(d, "endpoint", None) or getattr(d, "port", ""))


def _addresses(devices: Sequence[Any]) -> list[tuple[str, str, int]]:
    """(device, host, port) of every device served over TCP."""
    from urllib.parse import urlsplit

    out = []
    for d in devices:
        host, port = getattr(d, "host", None), getattr(d, "port", None)
        if d.protocol == "opcua":
            u = urlsplit(d.endpoint)
            host, port = u.hostname, u.port or 4840
        if isinstance(host, str) and isinstance(port, int):
            out.append((d.name, host, port))
    return out


def check_ports(devices: Sequence[Any]) -> str | None:
    """Why a simulator could not listen where a device expects its server, or None. The
    libraries' servers hide the reason (pymodbus says only that it failed): ask first."""
    seen: set[tuple[str, int]] = set()
    for name, host, port in _addresses(devices):
        if (host, port) in seen or port == 0:
            continue
        seen.add((host, port))
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                return _listen_problem(
                    OSError(exc.errno, f"cannot listen on {where} (device {name})")
                )
    return None


def simulate(cfg: Config, update_interval_s: float = 0.1, modbus_server: str = "pymodbus") -> int:
    from .commands.scan import quiet_libraries
    from .daemon import run_async

    quiet_libraries()
    problem = check_ports(list(cfg.devices))
    if problem:
        print(f"edgegw: simulate: {problem}", file=sys.stderr)
        return 1

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        where = sorted({f"{d.protocol} {_where(d)}" for d in cfg.devices})
        print("simulating " + ", ".join(where), file=sys.stderr, flush=True)
        await serve_all(
            list(cfg.devices), stop, interval_s=update_interval_s, modbus_server=modbus_server
        )

    try:
        run_async(main())
    except OSError as exc:  # a port in use, an address not here: one line, no traceback
        print(f"edgegw: simulate: {_listen_problem(exc)}", file=sys.stderr)
        return 1
    return 0


def _listen_problem(exc: OSError) -> str:
    """What a failed listen means and what to do, from the error or its cause."""
    cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
    code = cause.errno
    what = exc.strerror if exc.strerror else str(exc)
    if code == errno.EADDRINUSE or "in use" in str(cause).lower():
        return (
            f"{what}: the port is already in use (another simulator, or a real server on "
            "this machine): stop it (ss -ltnp shows who listens), or give the device "
            "another port in the config"
        )
    if code == errno.EADDRNOTAVAIL:
        return f"{what}: that address is not on this machine: simulate on 127.0.0.1 or ::1"
    if code == errno.EACCES:
        return f"{what}: ports below 1024 need root: use a port above 1024 to simulate"
    return f"{what}: {cause.strerror or cause}"
