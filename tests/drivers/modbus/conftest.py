"""Fixtures of the Modbus tests: a simulator on a thread of its own, for code that runs
its own event loop (the command line tools, hypothesis examples), and a server on
libmodbus, a second Modbus implementation."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.simulator import ModbusSimulator


class ThreadedSimulator:
    """A ``ModbusSimulator`` served from a daemon thread's event loop."""

    def __init__(self, **kw: Any) -> None:
        self.sim = ModbusSimulator(**kw)
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            try:
                await self.sim.start()
            except BaseException as exc:
                self._error = exc
                raise
            finally:
                self._ready.set()
            await self._stop.wait()
            await self.sim.stop()

        self._loop.run_until_complete(main())

    def __enter__(self) -> ModbusSimulator:
        self._thread.start()
        assert self._ready.wait(10), "simulator did not start"
        if self._error is not None:
            raise self._error
        return self.sim

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def threaded_sim() -> Iterator[Callable[..., ModbusSimulator]]:
    """``threaded_sim(**kw)`` starts a simulator on a thread; all are stopped after."""
    started: list[ThreadedSimulator] = []

    def start(**kw: Any) -> ModbusSimulator:
        t = ThreadedSimulator(**kw)
        sim = t.__enter__()
        started.append(t)
        return sim

    yield start
    for t in reversed(started):
        t.__exit__()


# -- a second implementation: a Modbus TCP server on libmodbus --------------------------

LIBMODBUS_SOURCE = Path(__file__).with_name("libmodbus_server.c")


@pytest.fixture(scope="session")
def libmodbus_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The libmodbus test server, compiled once per session (``make deps`` installs gcc
    and libmodbus-dev; without them the tests that need it are skipped, saying why)."""
    if shutil.which("gcc") is None or shutil.which("pkg-config") is None:
        pytest.skip("gcc or pkg-config missing (make deps installs them)")
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "libmodbus"], capture_output=True, text=True
    )
    if flags.returncode != 0:
        pytest.skip("libmodbus-dev missing (make deps installs it)")
    binary = tmp_path_factory.mktemp("libmodbus") / "libmodbus_server"
    subprocess.run(
        ["gcc", "-O1", "-Wall", "-o", str(binary), str(LIBMODBUS_SOURCE), *flags.stdout.split()],
        check=True,
    )
    return binary


@pytest.fixture
def libmodbus_server(libmodbus_binary: Path) -> Iterator[Callable[..., tuple[str, int]]]:
    """``libmodbus_server(size=100, holes=[(5, 7)], host="::1")`` starts the libmodbus
    server and returns its (host, port); each is stopped (by its pid) after the test."""
    procs: list[subprocess.Popen[str]] = []

    def start(
        size: int = 100, holes: Iterable[tuple[int, int]] = (), host: str = "::1"
    ) -> tuple[str, int]:
        args = [str(libmodbus_binary), host, str(size), *(f"{a}:{b}" for a, b in holes)]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "port N" once it accepts; EOF if it failed
        if not line.startswith("port "):
            raise RuntimeError(f"libmodbus server did not start: {line!r}")
        return host, int(line.split()[1])

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(10)
