"""Config validation: each bad value gets a located error quoting it and what is accepted;
the sample map loads; the README's type table is the code's; the package is cheap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from drivers.opcua import (
    PROTOCOL,
    DeadbandType,
    DeviceConfig,
    Mode,
    SecurityMode,
    SecurityPolicy,
    compile_plan,
    describe_plan,
    load_device_map,
)
from drivers.opcua.types import type_table_markdown

ROOT = Path(__file__).parents[3]
README = ROOT / "drivers" / "opcua" / "README.md"
SAMPLE = ROOT / "drivers" / "opcua" / "sample-device.yaml"


def device(*tags: dict[str, Any], **kw: Any) -> dict[str, Any]:
    tags = tags or ({"name": "t", "node": "ns=2;i=1"},)
    base = {"protocol": "opcua", "name": "plc1", "endpoint": "opc.tcp://10.0.0.5:4840"}
    return base | {"tags": list(tags)} | kw


def error(data: dict[str, Any]) -> dict[str, Any]:
    """The single error of validating ``data``."""
    with pytest.raises(ValidationError) as info:
        DeviceConfig.model_validate(data)
    errors = info.value.errors()
    assert len(errors) == 1, errors
    return dict(errors[0])


def test_interface_and_defaults() -> None:
    assert PROTOCOL == "opcua"
    d = DeviceConfig.model_validate(device())
    assert (d.mode, d.poll_interval_ms, d.timeout_ms) == (Mode.SUBSCRIBE, 1000, 5000)
    assert (d.publishing_ms, d.sampling_ms) == (1000, 1000)
    assert (d.security_policy, d.security_mode) == (SecurityPolicy.NONE, SecurityMode.NONE)
    assert d.endpoint == "opc.tcp://10.0.0.5:4840"
    d = DeviceConfig.model_validate(device(poll_interval_ms=200, sampling_interval_ms=0))
    assert (d.publishing_ms, d.sampling_ms) == (200, 0)


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("opc.tcp://plc.local", "opc.tcp://plc.local:4840"),
        ("OPC.TCP://10.0.0.5:4841/UA/Server", "opc.tcp://10.0.0.5:4841/UA/Server"),
        ("opc.tcp://[::1]:4840", "opc.tcp://[::1]:4840"),
        ("opc.tcp://[fd00::5]", "opc.tcp://[fd00::5]:4840"),
    ],
)
def test_endpoints_are_normalised(given: str, normal: str) -> None:
    assert DeviceConfig.model_validate(device(endpoint=given)).endpoint == normal


@pytest.mark.parametrize(
    ("endpoint", "fragment"),
    [
        ("http://10.0.0.5:4840", "is not an opc.tcp:// URL"),
        ("10.0.0.5:4840", "is not an opc.tcp:// URL"),
        ("opc.tcp://::1:4840", "write an IPv6 address in brackets"),
        ("opc.tcp://user:pw@10.0.0.5", "put them in 'username' and 'password'"),
        ("opc.tcp://10.0.0.5:99999", "is not valid"),
        ("opc.tcp://10.0.0.300:4840", "is not a valid IPv4 address"),
        ("opc.tcp://bad_host!:4840", "is not a valid host name"),
        ("opc.tcp://", "has no host"),
    ],
)
def test_bad_endpoints(endpoint: str, fragment: str) -> None:
    e = error(device(endpoint=endpoint))
    assert e["loc"] == ("endpoint",)
    assert fragment in e["msg"] and repr(endpoint) in e["msg"]


def test_bad_node_syntax_is_located_at_the_tag() -> None:
    e = error(device({"name": "a", "node": "ns=2;i=1"}, {"name": "b", "node": "ns=2;x=1"}))
    assert e["loc"] == ("tags", 1, "node")
    assert "unknown identifier type 'x'" in e["msg"] and "'ns=2;x=1'" in e["msg"]


def test_bad_type_lists_accepted_and_suggests() -> None:
    e = error(device({"name": "t", "node": "i=1", "type": "float64"}))
    assert e["loc"] == ("tags", 0, "type")
    assert "unknown type 'float64'" in e["msg"] and "'Double'" in e["msg"]
    assert "Boolean, SByte, Byte" in e["msg"]
    e = error(device({"name": "t", "node": "i=1", "type": "Dubble"}))
    assert "(did you mean 'Double'?)" in e["msg"]
    d = DeviceConfig.model_validate(device({"name": "t", "node": "i=1", "type": "double"}))
    assert d.tags[0].type == "Double"


def test_security_mode_and_policy_are_checked_together() -> None:
    e = error(device(security_mode="Sign"))
    assert e["loc"] == ("security_mode",)
    assert "security_mode 'Sign' needs a security_policy" in e["msg"]
    assert "'Basic256Sha256' or 'Aes128Sha256RsaOaep'" in e["msg"]
    e = error(device(security_policy="Basic256Sha256", security_mode="None"))
    assert "contradicts security_policy 'Basic256Sha256'" in e["msg"]
    e = error(device(security_policy="Basic256"))
    assert e["loc"] == ("security_policy",)
    assert "unknown security_policy 'Basic256'" in e["msg"]
    assert "(did you mean 'Basic256Sha256'?)" in e["msg"]
    d = DeviceConfig.model_validate(device(security_policy="aes128sha256rsaoaep"))
    assert d.security_mode is SecurityMode.SIGN_AND_ENCRYPT


def test_credentials(tmp_path: Path) -> None:
    assert "needs a password" in error(device(username="op"))["msg"]
    e = error(device(password="x"))
    assert e["loc"] == ("password",) and "username is not" in e["msg"]
    secret = tmp_path / "pw"
    secret.write_text("s3cret\nignored\n")
    e = error(device(username="op", password="x", password_file=str(secret)))
    assert "either password or password_file, not both" in e["msg"]
    e = error(device(username="op", password_file=str(tmp_path / "missing")))
    assert e["loc"] == ("password_file",) and "does not exist" in e["msg"]
    d = DeviceConfig.model_validate(device(username="op", password_file=str(secret)))
    assert d.read_password() == "s3cret"
    d = DeviceConfig.model_validate(device(username="op", password="hunter2"))
    assert "hunter2" not in repr(d)  # SecretStr keeps it out of logs


def test_server_certificate(tmp_path: Path) -> None:
    junk = tmp_path / "server.der"
    junk.write_bytes(b"not a certificate")
    e = error(device(security_policy="Basic256Sha256", server_certificate=str(junk)))
    assert "is not an X.509 certificate" in e["msg"]
    good = tmp_path / "good.der"
    good.write_bytes(_certificate_der())
    d = DeviceConfig.model_validate(
        device(security_policy="Basic256Sha256", server_certificate=str(good))
    )
    assert d.server_certificate == good
    e = error(device(server_certificate=str(good)))
    assert "server_certificate has no effect" in e["msg"]


def _certificate_der() -> bytes:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_deadbands() -> None:
    e = error(device({"name": "t", "node": "i=1", "deadband": {"type": "percent", "value": 150}}))
    assert e["loc"] == ("tags", 0, "deadband", "value") and "accepted: 0..100" in e["msg"]
    e = error(device({"name": "t", "node": "i=1", "deadband": {"type": "relative", "value": 1}}))
    assert "unknown deadband type 'relative'" in e["msg"] and "'absolute', 'percent'" in e["msg"]
    tag = {
        "name": "t",
        "node": "i=1",
        "type": "String",
        "deadband": {"type": "absolute", "value": 1},
    }
    assert "a deadband compares numbers" in error(device(tag))["msg"]
    e = error(device(mode="poll", deadband={"type": "absolute", "value": 1}))
    assert e["loc"] == ("deadband",) and "in mode 'poll'" in e["msg"]


def test_names_ranges_and_duplicates() -> None:
    e = error(device({"name": "a", "node": "i=1"}, {"name": "a", "node": "i=2"}))
    assert e["loc"] == ("tags", 1, "name") and "duplicate tag name 'a'" in e["msg"]
    assert "letters, digits" in error(device(name="plc 1"))["msg"]
    assert "accepted: 10..86400000" in error(device(poll_interval_ms=5))["msg"]
    assert "unknown mode 'push'" in error(device(mode="push"))["msg"]
    assert "'tags' is empty" in error(device() | {"tags": []})["msg"]
    assert error(device(port=4840))["type"] == "extra_forbidden"
    e = error(device({"name": "t", "node": "i=1", "index": -1}))
    assert e["loc"] == ("tags", 0, "index")


def test_plan_carries_everything_per_tag() -> None:
    d = DeviceConfig.model_validate(
        device(
            {"name": "a", "node": "nsu=urn:x;s=A", "type": "Double", "index": 2},
            {"name": "b", "node": "/Objects/2:B", "deadband": {"type": "absolute", "value": 2}},
            {"name": "c", "node": "ns=2;s=C", "type": "String"},
            deadband={"type": "percent", "value": 5},
        )
    )
    plan = compile_plan(d)
    assert plan.tag_names == ("plc1/a", "plc1/b", "plc1/c")
    a, b, c = plan.tags
    assert (a.index_range, a.expected_type, a.deadband) == ("2", 11, (2, 5.0))
    assert b.deadband == (1, 2.0)
    assert c.deadband is None  # a String has no deadband
    assert plan.namespace_uris == ("urn:x",) and plan.browse_paths == 1
    lines = describe_plan(plan)
    assert lines[0].startswith("subscription: 3 monitored item(s), publishing every 1000 ms")
    assert "resolved at connect: 1 browse path(s); namespace URI(s) urn:x" in lines
    assert lines[-1] == "tags: a, b, c"
    poll = compile_plan(DeviceConfig.model_validate(device(mode="poll")))
    assert describe_plan(poll)[0].startswith("read every 1000 ms: 1 node(s)")


def test_sample_map_loads_and_compiles() -> None:
    devices = load_device_map(SAMPLE)
    assert [d.name for d in devices] == ["boiler-ua", "line-ua"]
    assert devices[0].deadband is not None and devices[0].deadband.type is DeadbandType.ABSOLUTE
    assert devices[1].endpoint == "opc.tcp://[::1]:4842"
    for d in devices:
        assert describe_plan(compile_plan(d))


def test_readme_type_table_is_generated_from_the_code() -> None:
    assert type_table_markdown() in README.read_text(encoding="utf-8")


def test_importing_the_package_does_not_import_asyncua() -> None:
    code = (
        "import sys, drivers.opcua as o; o.compile_plan; "
        "print('asyncua' in sys.modules, 'cryptography' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_relative_files_are_relative_to_the_device_map(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pw").write_text("s3cret\n")
    (tmp_path / "map.yaml").write_text(
        "devices:\n"
        "  - {protocol: opcua, name: d, endpoint: 'opc.tcp://[::1]', username: op,\n"
        "     password_file: secrets/pw, tags: [{name: t, node: 'i=2258'}]}\n"
    )
    (d,) = load_device_map(tmp_path / "map.yaml")
    assert d.password_file == tmp_path / "secrets" / "pw" and d.read_password() == "s3cret"
