"""uplink config: login sources (never inline), protocol, message limit; the password
readers; and the digest that keeps repeated link/TLS failures from flooding the audit
log and the journal."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, UplinkConfig, load_config
from gateway.credentials import CredentialError, read_password
from gateway.digest import Digest


def config_with(tmp_path: Path, uplink: str) -> Path:
    p = tmp_path / "gw.yaml"
    p.write_text(
        "gateway: {id: gw1, state_dir: state}\n"
        f"uplink:\n{uplink}"
        "devices:\n  - {name: d, protocol: modbus_tcp, host: 127.0.0.1,"
        " tags: [{name: t, address: 0, type: int16}]}\n"
    )
    return p


def test_an_inline_password_is_refused_with_where_and_what_to_do(tmp_path: Path) -> None:
    p = config_with(tmp_path, "  username: gw\n  password: hunter2\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    line = e.value.lines[0]
    assert line.startswith(f"{p}:4:")
    assert "uplink.password: an inline password is not accepted" in line
    assert "hunter2" not in line  # never echoed
    assert "uplink.password_file" in line


def test_password_sources_and_paths(tmp_path: Path) -> None:
    cfg = load_config(config_with(tmp_path, "  username: gw\n  password_file: secret/pw\n"))
    assert cfg.uplink.password_file == tmp_path / "secret/pw"  # relative to the config
    assert cfg.uplink.protocol == "mqtt5" and cfg.uplink.max_message_bytes == 256 * 1024
    with pytest.raises(ConfigError, match="give the password one way, not 2"):
        load_config(
            config_with(tmp_path, "  username: gw\n  password_file: a\n  password_env: B\n")
        )
    with pytest.raises(ConfigError, match="password_env is set but username is not"):
        load_config(config_with(tmp_path, "  password_env: B\n"))
    with pytest.raises(ConfigError, match=r"uplink\.protocol: Input should be 'mqtt5' or"):
        load_config(config_with(tmp_path, "  protocol: mqtt3\n"))


def test_read_password_from_file_env_and_systemd_credential(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("s3cret with spaces\n")
    f.chmod(0o640)
    assert read_password(UplinkConfig(username="u", password_file=f)) == "s3cret with spaces"
    f.chmod(0o644)
    with pytest.raises(CredentialError, match=r"readable by everyone .* chmod 600"):
        read_password(UplinkConfig(username="u", password_file=f))
    with pytest.raises(CredentialError, match="does not exist"):
        read_password(UplinkConfig(username="u", password_file=tmp_path / "nope"))

    env_up = UplinkConfig(username="u", password_env="MQTT_PW")
    assert read_password(env_up, {"MQTT_PW": "from-env"}) == "from-env"
    with pytest.raises(CredentialError, match="MQTT_PW is not set"):
        read_password(env_up, {})

    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "mqtt-password").write_text("from-systemd")
    (tmp_path / "creds" / "mqtt-password").chmod(0o400)
    cred = UplinkConfig(username="u", password_credential="mqtt-password")
    assert read_password(cred, {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}) == (
        "from-systemd"
    )
    with pytest.raises(CredentialError, match="LoadCredential=mqtt-password:"):
        read_password(cred, {})
    assert read_password(UplinkConfig(username="token-as-user")) is None


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_day_of_flapping_adds_a_bounded_number_of_records() -> None:
    """A link that goes down and up every 1.4 s for 24 h: ~123k events of each kind
    become a first record plus summaries whose interval doubles to an hour."""
    clock = Clock()
    out: list[tuple[str, dict[str, object]]] = []
    d = Digest(lambda e, detail: out.append((e, detail)), first_s=60, max_s=3600, clock=clock)
    n = 0
    while clock.t < 1000 + 86400:
        d.note("link_down", "disconnected: Malformed packet")
        d.note("link_up", None)
        n += 1
        clock.t += 1.4
    d.flush()
    downs = [x for e, x in out if e == "link_down"]
    assert downs[0] == {"reason": "disconnected: Malformed packet"}
    assert 20 <= len(downs) <= 35, len(downs)  # ~30: 6 doubling steps, then hourly
    assert 1 + sum(int(x.get("repeated", 0)) for x in downs[1:]) == n  # every one counted
    assert downs[-1]["reasons"] == {"disconnected: Malformed packet": downs[-1]["repeated"]}
    assert len(out) <= 70


def test_a_change_after_a_quiet_spell_is_recorded_at_once() -> None:
    clock = Clock()
    out: list[tuple[str, dict[str, object]]] = []
    d = Digest(lambda e, detail: out.append((e, detail)), first_s=60, clock=clock)
    d.note("tls_failure", "certificate expired")
    clock.t += 30
    d.note("tls_failure", "certificate expired")  # counted
    clock.t += 200  # quiet for longer than the interval
    d.note("tls_failure", "handshake timed out")
    assert [x for _, x in out] == [
        {"reason": "certificate expired"},
        {"repeated": 1, "over_s": 30.0, "reasons": {"certificate expired": 1}},
        {"reason": "handshake timed out"},
    ]


def test_restart_says_what_was_counted_and_takes_the_next_as_a_first() -> None:
    """A problem that changed (the forwarder's journal): its counts so far go out, and
    the new one is said at once, while other events keep their own pace."""
    clock = Clock()
    out: list[tuple[str, dict[str, object]]] = []
    d = Digest(lambda e, detail: out.append((e, detail)), first_s=60, clock=clock)
    d.note("failure", "connection refused")
    d.note("link_down", "connection refused")
    clock.t += 5
    d.note("failure", "connection refused")  # counted
    d.note("link_down", "connection refused")  # counted
    d.restart("failure")
    d.note("failure", "Not authorized")
    assert out == [
        ("failure", {"reason": "connection refused"}),
        ("link_down", {"reason": "connection refused"}),
        ("failure", {"repeated": 1, "over_s": 0.0, "reasons": {"connection refused": 1}}),
        ("failure", {"reason": "Not authorized"}),
    ]
    assert d.pending() == {"link_down": 1}
