"""`edgegw browse`: its YAML loads as tags (or as a device) that read good."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.opcua import load_device_map
from drivers.opcua.simulator import NAMESPACE
from drivers.opcua.types import TYPES
from gateway.commands import browse
from tests.drivers.opcua.conftest import SimThread, device, read_once


def run_browse(*args: str) -> int:
    parser = argparse.ArgumentParser(prog="edgegw")
    browse.register(parser.add_subparsers())
    ns = parser.parse_args(["browse", *args])
    return int(ns.func(ns))


def test_browse_output_loads_as_tags_that_read_good(
    sim: SimThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = str(tmp_path / "pki")
    assert run_browse(sim.endpoint, "--root", "ns=2;s=Plant", "--pki-dir", pki) == 0
    out, err = capsys.readouterr()
    tags = yaml.safe_load(out)["tags"]
    assert {(t["name"], t["node"], t["type"]) for t in tags} == {
        ("Boiler.Temperature", "ns=2;s=Plant.Boiler.Temperature", "Double"),
        ("Boiler.Pressure", "ns=2;s=Plant.Boiler.Pressure", "Float"),
        ("Boiler.Running", "ns=2;s=Plant.Boiler.Running", "Boolean"),
    }
    assert "browsing:" in err and "found 3 variable(s)" in err
    batch = asyncio.run(read_once(device(sim.endpoint, *tags), tmp_path / "pki"))
    assert batch.ok, batch.error


def test_browse_whole_server_as_a_device_map(
    sim: SimThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "device.yaml"
    args = ["--device-name", "sim1", "--pki-dir", str(tmp_path / "pki"), "-o", str(out_file)]
    assert run_browse(sim.endpoint, *args) == 0
    text = out_file.read_text()
    (dev,) = load_device_map(out_file)
    names = {t.name for t in dev.tags}
    assert dev.name == "sim1" and dev.endpoint == sim.endpoint
    assert {f"Types.{t.name}" for t in TYPES} <= names
    assert {"Forms.Numeric", "Forms.Guid", "Forms.Opaque", "Bulk.0022"} <= names
    assert "Types.DoubleArray" not in names  # an array comes out commented, with why
    assert '# - {name: "Types.DoubleArray"' in text and "array of 5: add index:" in text
    # a node the server cannot encode comes out commented, and breaks nothing else
    assert '# - {name: "Faults.Unencodable"' in text and "read: BadInternalError" in text
    batch = asyncio.run(read_once(dev, tmp_path / "pki"))
    assert batch.ok, batch.error
    assert len(batch.readings) == len(dev.tags)


@pytest.mark.parametrize(
    ("extra", "check"),
    [
        (["--root", "/Objects/2:Types", "--depth", "1"], lambda t: len(t) == len(TYPES)),
        (
            ["--root", "ns=2;s=Forms", "--namespace-uris"],
            lambda t: all(x["node"].startswith(f"nsu={NAMESPACE};") for x in t),
        ),
    ],
)
def test_browse_roots_depth_and_namespace_uris(
    sim: SimThread,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    check: Any,
) -> None:
    assert run_browse(sim.endpoint, "--pki-dir", str(tmp_path), *extra) == 0
    tags = yaml.safe_load(capsys.readouterr().out)["tags"]
    assert check(tags)
    batch = asyncio.run(read_once(device(sim.endpoint, *tags), tmp_path))
    assert batch.ok, batch.error


def test_browse_errors(sim: SimThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki = str(tmp_path)
    assert run_browse(sim.endpoint, "--root", "/Objects/2:Nope", "--pki-dir", pki) == 1
    assert (
        "--root /Objects/2:Nope: browse path /Objects/2:Nope: BadNoMatch" in capsys.readouterr().err
    )
    assert run_browse(sim.endpoint, "--security-mode", "Sign", "--pki-dir", pki) == 2
    assert (
        "--security-mode: security_mode 'Sign' needs a security_policy" in capsys.readouterr().err
    )
    assert run_browse("http://x", "--pki-dir", pki) == 2
    assert "is not an opc.tcp:// URL" in capsys.readouterr().err
