"""Security policies and modes, the server-certificate trust list, the client
certificate, and user name logins, against a server with all of them."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.opcua import SecurityPolicy, compile_plan
from drivers.opcua.driver import Driver
from drivers.opcua.security import POLICIES, EndpointNotOffered, LoginRefused, ServerNotTrusted
from tests.drivers.opcua.conftest import SimThread, device

NODE = {"name": "t", "node": "ns=2;s=Plant.Boiler.Temperature"}


@pytest.fixture(scope="module")
def ssim() -> Iterator[SimThread]:
    """Endpoints None, Basic256Sha256 and Aes128Sha256RsaOaep (Sign, SignAndEncrypt);
    user 'op' with password 'secret'; anonymous allowed."""
    s = SimThread(security=True, users={"op": "secret"})
    yield s
    s.close()


def trusting(ssim: SimThread, pki: Path) -> Path:
    (pki / "trusted").mkdir(parents=True, exist_ok=True)
    shutil.copy(ssim.sim.certificate_path, pki / "trusted" / "server.der")
    return pki


async def connect_and_read(dev: Any, pki: Path) -> tuple[Driver, Any]:
    driver = Driver(dev, pki_dir=pki)
    await driver.connect()
    batch = await driver.read(compile_plan(dev))
    return driver, batch


@pytest.mark.parametrize("policy", ["Basic256Sha256", "Aes128Sha256RsaOaep"])
@pytest.mark.parametrize("mode", ["Sign", "SignAndEncrypt"])
def test_policies_and_modes(ssim: SimThread, tmp_path: Path, policy: str, mode: str) -> None:
    dev = device(ssim.endpoint, NODE, security_policy=policy, security_mode=mode)

    async def run() -> None:
        driver, batch = await connect_and_read(dev, trusting(ssim, tmp_path))
        channel = driver.client.uaclient.security_policy
        assert channel.URI == POLICIES[SecurityPolicy(policy)].URI and channel.Mode.name == mode
        assert batch.ok and batch.readings[0][3] == 0, batch.error
        await driver.close()

    asyncio.run(run())


def test_an_untrusted_server_is_refused_with_its_thumbprint_and_where_to_trust_it(
    ssim: SimThread, tmp_path: Path
) -> None:
    dev = device(ssim.endpoint, NODE, security_policy="Basic256Sha256")
    der = ssim.sim.certificate_path.read_bytes()
    thumb = hashlib.sha1(der).hexdigest().upper()
    driver = Driver(dev, pki_dir=tmp_path)
    with pytest.raises(ServerNotTrusted) as info:
        asyncio.run(driver.connect())
    message = str(info.value)
    rejected = tmp_path / "rejected" / f"{thumb.lower()}.der"
    assert ":".join(thumb[i : i + 2] for i in range(0, 40, 2)) in message
    assert f"mv {rejected} {tmp_path / 'trusted'}/" in message
    assert "'CN=edgegw OPC UA simulator'" in message and "is not trusted" in message
    assert rejected.read_bytes() == der
    shutil.move(rejected, tmp_path / "trusted")  # what the operator does

    async def again() -> None:
        await driver.connect()
        assert driver.connected
        await driver.close()

    asyncio.run(again())


def test_server_certificate_setting_trusts_that_server(ssim: SimThread, tmp_path: Path) -> None:
    dev = device(
        ssim.endpoint,
        NODE,
        security_policy="Aes128Sha256RsaOaep",
        server_certificate=str(ssim.sim.certificate_path),
    )

    async def run() -> None:
        driver, batch = await connect_and_read(dev, tmp_path / "pki")
        assert batch.ok
        await driver.close()

    asyncio.run(run())


def test_user_name_and_password(ssim: SimThread, tmp_path: Path) -> None:
    pki = trusting(ssim, tmp_path / "pki")
    secret = tmp_path / "password"
    secret.write_text("secret\n")
    good = device(
        ssim.endpoint,
        NODE,
        security_policy="Basic256Sha256",
        username="op",
        password_file=str(secret),
    )
    wrong = device(
        ssim.endpoint, NODE, security_policy="Basic256Sha256", username="op", password="nope"
    )

    async def run() -> None:
        driver, batch = await connect_and_read(good, pki)
        assert batch.ok
        await driver.close()
        with pytest.raises(LoginRefused) as info:
            await Driver(wrong, pki_dir=pki).connect()
        assert (
            "the server refused user 'op' (BadUserAccessDenied): wrong user name or password"
            in str(info.value)
        )

    asyncio.run(run())


def test_a_password_goes_only_to_a_trusted_server_even_without_a_policy(
    ssim: SimThread, tmp_path: Path
) -> None:
    dev = device(ssim.endpoint, NODE, username="op", password="secret")
    with pytest.raises(ServerNotTrusted) as info:
        asyncio.run(Driver(dev, pki_dir=tmp_path).connect())
    assert "no password or data was sent" in str(info.value)

    async def run() -> None:
        driver, batch = await connect_and_read(dev, trusting(ssim, tmp_path))
        assert batch.ok
        await driver.close()

    asyncio.run(run())


def test_client_certificate_is_made_once_with_a_private_key_only_we_can_read(
    ssim: SimThread, tmp_path: Path
) -> None:
    dev = device(ssim.endpoint, NODE, security_policy="Basic256Sha256")
    pki = trusting(ssim, tmp_path)

    async def run() -> None:
        for _ in range(2):
            driver, batch = await connect_and_read(dev, pki)
            assert batch.ok
            await driver.close()

    asyncio.run(run())
    key, cert = pki / "own" / "key.pem", pki / "own" / "cert.der"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first = cert.read_bytes()
    asyncio.run(run())
    assert cert.read_bytes() == first


def test_an_endpoint_the_server_does_not_offer(sim: SimThread, tmp_path: Path) -> None:
    dev = device(sim.endpoint, NODE, security_policy="Basic256Sha256", security_mode="Sign")
    with pytest.raises(EndpointNotOffered) as info:
        asyncio.run(Driver(dev, pki_dir=tmp_path).connect())
    assert "no endpoint with security_policy Basic256Sha256 and security_mode Sign" in str(
        info.value
    )
    assert str(info.value).endswith("it offers: None/None")
