"""The simulator serves what a device map asks for (the demo's path), on loopback only."""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading
from pathlib import Path

import pytest

from drivers.opcua import load_device_map
from drivers.opcua.simulator import OpcuaSimulator, serve_devices, waveform
from drivers.opcua.types import TYPES
from tests.drivers.opcua.conftest import read_once

SAMPLE = Path(__file__).parents[3] / "drivers" / "opcua" / "sample-device.yaml"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _ipv6() -> bool:
    try:
        _free_port("::1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6(), reason="no ::1")
def test_serve_devices_serves_every_tag_of_the_sample_map(tmp_path: Path) -> None:
    """Both sample devices (one subscribe/None on 127.0.0.1, one SignAndEncrypt with a
    user on [::1]) read good from the simulator, with the types their maps declare."""
    devices = []
    for d in load_device_map(SAMPLE):
        host = f"[{d.host}]" if ":" in d.host else d.host
        endpoint = f"opc.tcp://{host}:{_free_port(d.host)}"
        devices.append(d.model_copy(update={"endpoint": endpoint}))
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    server_pki = tmp_path / "server-pki"
    runner = threading.Thread(
        target=loop.run_until_complete,
        args=(serve_devices(devices, stop, pki_dir=server_pki),),
        daemon=True,
    )
    runner.start()
    try:

        async def read_all() -> None:
            for d in devices:
                pki = tmp_path / "pki" / d.name
                for _ in range(100):  # until the servers listen
                    try:
                        with socket.create_connection((d.host, d.port), timeout=1):
                            break
                    except OSError:
                        await asyncio.sleep(0.1)
                certs = list(server_pki.glob(f"*_{d.port}/server-cert.der"))
                if certs:
                    (pki / "trusted").mkdir(parents=True)
                    shutil.copy(certs[0], pki / "trusted")
                batch = await read_once(d, pki)
                assert batch.ok, batch.error
                assert len(batch.readings) == len(d.tags)

        asyncio.run(read_all())
    finally:
        loop.call_soon_threadsafe(stop.set)
        runner.join(20)
        loop.close()


def test_the_simulator_binds_to_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback only"):
        OpcuaSimulator(host="0.0.0.0")


def test_waveforms_are_deterministic_and_move() -> None:
    for spec in TYPES:
        assert waveform(spec.name, "k", 1000.0) == waveform(spec.name, "k", 1000.0)
    assert len({waveform("Double", "ns=2;s=X", t) for t in range(0, 60, 3)}) > 5
