"""`edgegw command` as an operator runs it (a subprocess of the real CLI) against a running
gateway: through a broker set up as the README recommends (TLS, client certificates, a
password file), through a broker that speaks only MQTT 3.1.1, and pushing a whole config.
Exit status: 0 done, 1 refused / failed / the broker refused us, 2 bad input."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from drivers.modbus.types import Table
from gateway.mosquitto import Mosquitto
from tests.brokers import Amqtt
from tests.conftest import REPO
from tests.gateway.commandrig import GW, Rig, make_key
from tests.tlscerts import make_pki


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *args, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(p.communicate(), 120)  # a bound only
    assert p.returncode is not None
    return p.returncode, out.decode(), err.decode()


def common(rig: Rig, port: int, key: str = "ops") -> list[str]:
    return [
        "--gateway", GW, "--key", str(rig.tmp / f"{key}.ed25519.pem"),
        "--pubkey", f"{GW}={rig.state / 'keys' / 'device.pub.pem'}",
        "--port", str(port), "--timeout", "60",
    ]  # fmt: skip


def test_command_reaches_a_broker_with_tls_client_certificates_and_a_password_file(
    tmp_path: Path,
) -> None:
    """mosquitto with TLS, required client certificates and a password file, the gateway
    connected to it as the README says: `edgegw command write` gets through with --ca-file,
    --cert-file/--key-file, --username and the password from a file or the environment;
    a wrong password, a missing client certificate and a CA that does not match the
    broker are refused by the broker (exit 1, nothing written, the reason named); a
    password on the command line and half a client certificate are bad input (exit 2)."""
    pki = make_pki(tmp_path / "pki", client_cn=GW)
    pw = tmp_path / "passwd"
    for user, password in (("gw", "gw pass"), ("platform", "s3cret word")):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if user == "gw" else []), str(pw),
                        user, password], check=True, capture_output=True)  # fmt: skip
    conf = (
        f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
        f"require_certificate true\nallow_anonymous false\npassword_file {pw}\n"
    )
    for name, text in (("gw.pw", "gw pass\n"), ("platform.pw", "s3cret word\n"),
                       ("wrong.pw", "guess\n")):  # fmt: skip
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o600)
    uplink = (
        f", tls: {{ca_file: {pki.ca}, cert_file: {pki.client_cert}, key_file: {pki.client_key}}}"
        f", username: gw, password_file: {tmp_path / 'gw.pw'}"
    )
    tls = ["--ca-file", str(pki.ca), "--cert-file", str(pki.client_cert)]
    tls += ["--key-file", str(pki.client_key), "--username", "platform"]

    async def main(port: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        (tmp_path / "rig").mkdir()
        async with Rig(tmp_path / "rig", port, uplink_extra=uplink) as rig:
            assert rig.mb is not None
            base = common(rig, port)

            def write(value: str) -> list[str]:
                return ["command", "write", *base, "--tag", "plc/sp", "--value", value]

            out["file"] = await cli(*write("12.5"), *tls, "--password-file",
                                    str(tmp_path / "platform.pw"))  # fmt: skip
            out["regs_file"] = rig.mb.get_registers(1, Table.HOLDING, 10, 2)
            out["env"] = await cli(*write("13.5"), *tls, "--json",
                                   env={"EDGEGW_MQTT_PASSWORD": "s3cret word"})  # fmt: skip
            out["regs_env"] = rig.mb.get_registers(1, Table.HOLDING, 10, 2)
            out["wrong"] = await cli(*write("14.5"), *tls, "--password-file",
                                     str(tmp_path / "wrong.pw"))  # fmt: skip
            out["no_login"] = await cli(*write("14.5"), *tls)
            out["no_cert"] = await cli(
                *write("14.5"), "--ca-file", str(pki.ca), "--username", "platform",
                "--password-file", str(tmp_path / "platform.pw"),
            )  # fmt: skip
            out["rogue_ca"] = await cli(
                *write("14.5"), "--ca-file", str(pki.rogue_ca), *tls[2:],
                "--password-file", str(tmp_path / "platform.pw"),
            )  # fmt: skip
            out["plain"] = await cli(*write("14.5"), "--username", "platform",
                                     "--password-file", str(tmp_path / "platform.pw"))  # fmt: skip
            out["regs_refused"] = rig.mb.get_registers(1, Table.HOLDING, 10, 2)
            out["on_cli"] = await cli(*write("14.5"), *tls, "--password", "s3cret word")
            out["half_cert"] = await cli(*write("14.5"), *tls[:4], "--username", "platform")
            out["no_pw_file"] = await cli(*write("14.5"), *tls, "--password-file",
                                          str(tmp_path / "nope.pw"))  # fmt: skip
        return out

    with Mosquitto(host="::1", workdir=tmp_path / "broker", extra_conf=conf) as b:
        out = asyncio.run(main(b.port))

    from tests.gateway.test_commands import f32_cdab

    code, stdout, err = out["file"]
    assert code == 0, (stdout, err)
    assert ": done: plc/sp = 12.5, read back 12.5" in stdout
    assert abs(f32_cdab(out["regs_file"]) - 125.0) < 1e-3
    code, stdout, err = out["env"]
    assert code == 0, (stdout, err)
    res = json.loads(stdout)
    assert (res["outcome"], res["after"]) == ("done", 13.5)
    assert abs(f32_cdab(out["regs_env"]) - 135.0) < 1e-3
    for case in ("wrong", "no_login"):  # mosquitto: 0x87 Not authorized
        code, stdout, err = out[case]
        assert code == 1 and stdout == "", (case, out[case])
        assert "refused the connection" in err and "--username" in err, (case, err)
    for case in ("no_cert", "rogue_ca", "plain"):  # the TLS handshake or the broker hangs up
        code, stdout, err = out[case]
        assert code == 1 and stdout == "", (case, out[case])
        assert "edgegw:" in err and "broker" in err, (case, err)
    assert "CERTIFICATE_VERIFY_FAILED" in out["rogue_ca"][2], out["rogue_ca"]
    assert "--cert-file" in out["no_cert"][2] and "--ca-file" in out["plain"][2]
    assert out["regs_refused"] == out["regs_env"]  # nothing written by a refused login
    code, _, err = out["on_cli"]
    assert code == 2 and "--password-file" in err and "EDGEGW_MQTT_PASSWORD" in err, err
    code, _, err = out["half_cert"]
    assert code == 2 and "--cert-file and --key-file go together" in err, err
    code, _, err = out["no_pw_file"]
    assert code == 2 and "nope.pw: cannot read" in err, err


def test_command_over_mqtt_311_to_a_broker_without_mqtt_5(tmp_path: Path) -> None:
    """amqtt speaks only MQTT 3.1.1: `edgegw command --protocol mqtt311` gets its result
    there; the default (MQTT 5) is refused and the error says which option helps."""

    async def main(port: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        (tmp_path / "rig").mkdir()
        async with Rig(tmp_path / "rig", port, protocol="mqtt311") as rig:
            assert rig.ua is not None
            args = ["command", "write", *common(rig, port), "--tag", "ua/sp"]
            out["v311"] = await cli(*args, "--value", "7.5", "--protocol", "mqtt311")
            out["v5"] = await cli(*args, "--value", "8.5")
        return out

    with Amqtt(tmp_path) as b:
        out = asyncio.run(main(b.port))
    code, stdout, err = out["v311"]
    assert code == 0 and ": done: ua/sp = 7.5, read back 7.5" in stdout, out["v311"]
    code, stdout, err = out["v5"]
    assert code == 1 and "--protocol" in err, out["v5"]


def test_command_config_pushes_a_config_and_prints_the_signed_result(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """`edgegw command config` sends a whole config file to a running gateway: applied
    (exit 0, the signed result printed with its version), an older version refused
    (exit 1, --json), a config that does not validate refused with the reason printed
    (exit 1), a missing file is bad input (exit 2)."""

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        (tmp_path / "rig").mkdir()
        async with Rig(tmp_path / "rig", broker.port, health_s=1.0) as rig:
            assert rig.daemon is not None
            faster = rig.cfg_path.read_text().replace(
                "poll_interval_ms: 100\n    timeout_ms: 500",
                "poll_interval_ms: 50\n    timeout_ms: 500",
            )
            new = tmp_path / "plant-v2.yaml"
            new.write_text(faster)
            broken = tmp_path / "broken.yaml"
            broken.write_text(faster.replace("type: float32", "type: float"))
            base = ["command", "config", *common(rig, broker.port, key="admin")]
            out["done"] = await cli(*base, "--file", str(new), "--version", "2")
            out["interval"] = next(
                d for d in rig.daemon.cfg.devices if d.name == "plc"
            ).poll_interval_ms
            out["file_after"] = rig.cfg_path.read_text()
            out["old"] = await cli(*base, "--file", str(new), "--version", "1", "--json")
            out["invalid"] = await cli(*base, "--file", str(broken), "--version", "3")
            out["missing"] = await cli(*base, "--file", str(tmp_path / "nope.yaml"),
                                       "--version", "4")  # fmt: skip
            out["file_end"] = rig.cfg_path.read_text()
            # enrolling a key by push: the entry travels, the key file must be there
            enrol = tmp_path / "plant-v5.yaml"
            enrol.write_text(faster.replace(
                "    - {name: admin,",
                "    - {name: new, public_key: new.pub.pem, operations: [write],"
                " tags: ['ua/sp']}\n    - {name: admin,",
            ))  # fmt: skip
            out["no_key_file"] = await cli(*base, "--file", str(enrol), "--version", "5")
            make_key(rig.tmp / "new.ed25519.pem")  # as if copied to the gateway beforehand
            out["enrolled"] = await cli(*base, "--file", str(enrol), "--version", "5")
            out["new_key"] = await cli("command", "write", *common(rig, broker.port, key="new"),
                                       "--tag", "ua/sp", "--value", "6.5")  # fmt: skip
        return out

    out = asyncio.run(main())
    code, stdout, err = out["done"]
    assert code == 0, (stdout, err)
    assert stdout.startswith("command ") and ": done: config version 2" in stdout, stdout
    assert out["interval"] == 50 and "poll_interval_ms: 50" in out["file_after"]
    code, stdout, err = out["old"]
    res = json.loads(stdout)
    assert code == 1 and (res["outcome"], res["reason"], res["version"]) == (
        "refused",
        "version_not_newer",
        1,
    ), out["old"]
    assert len(res["digest"]) == 64 and len(res["kid"]) == 32  # signed, bound to the command
    code, stdout, err = out["invalid"]
    assert code == 1 and "refused (invalid_config): config version 3" in stdout, out["invalid"]
    assert "float" in stdout  # the validation error, on the lines below
    code, _, err = out["missing"]
    assert code == 2 and "nope.yaml: cannot read" in err, out["missing"]
    assert out["file_end"] == out["file_after"]
    code, stdout, _ = out["no_key_file"]
    assert code == 1 and "refused (invalid_config)" in stdout and "new.pub.pem" in stdout, stdout
    assert out["enrolled"][0] == 0, out["enrolled"]
    code, stdout, _ = out["new_key"]
    assert code == 0 and ": done: ua/sp = 6.5, read back 6.5" in stdout, out["new_key"]
