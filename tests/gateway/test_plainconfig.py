"""The daemon runs on plain copies of the validated config, without pydantic
(gateway/plainconfig.py, gateway/configload.py).

What must hold: the copy has every field's value and every method the running gateway
calls, giving what the pydantic model gives; `edgegw run` (start and SIGHUP reload)
never loads pydantic; the config's errors and refusals read as they did.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from gateway.config import Config, load_config
from gateway.configload import CheckCrashed, StartChecksFailed, dumps, load_checked, to_plain
from gateway.mosquitto import free_port
from gateway.plainconfig import ConfigError, Plain, Secret, loads
from gateway.status import read_status
from inference.derived import SHIPPED_MODELS

from .upstream import REPO, Gateway

DEFAULT_SHA = (SHIPPED_MODELS / "default.onnx.sha256").read_text().split()[0]


def every_protocol(tmp: Path, dead: int, extra_tag: str = "") -> Path:
    """A config with a device of every protocol, a model, commands and secrets."""
    (tmp / "ua.pass").write_text("s3cret\n")
    (tmp / "cmd.pub").write_bytes(b"")  # replaced below where a key is needed
    text = f"""\
gateway: {{id: gw-plain, state_dir: state, flush_window_ms: 100}}
uplink: {{host: '::1', port: {free_port()}}}
metrics: {{port: 0}}
inference:
  models:
    - {{name: m1, model: default, sha256: {DEFAULT_SHA},
       inputs: [plc/t0, plc/t1, plc/t2, plc/t3, plc/t4, plc/t5],
       sample_ms: 1000, window: 16, threshold: {{enter: 3, exit: 2}}}}
devices:
  - name: plc
    protocol: modbus_tcp
    host: 127.0.0.1
    port: {dead}
    on_illegal_address: fail
    tags:
      - {{name: t0, address: 0, type: float32, write: {{min: 0, max: 10}}}}
      - {{name: t1, address: 2, type: int16, scale: 0.5}}
      - {{name: t2, address: 3, type: uint32, word_order: little}}
      - {{name: t3, address: 5, type: int16}}
      - {{name: t4, table: input, address: 6, type: int16}}
      - {{name: t5, table: coil, address: 6, type: bool, write: {{values: [false]}}}}
{extra_tag}  - name: rtu
    protocol: modbus_rtu
    port: /dev/ttyUSB-edgegw-test
    parity: odd
    tags: [{{name: a, address: 0, type: uint16}}]
  - name: ua
    protocol: opcua
    endpoint: 'opc.tcp://127.0.0.1:{dead}/x'
    username: bob
    password_file: ua.pass
    timeout_ms: 500
    publishing_interval_ms: 250
    tags:
      - {{name: x, node: 'ns=2;s=X', type: Double, deadband: {{type: percent, value: 5}}}}
      - {{name: y, node: 'ns=2;i=7', type: Int32, write: {{min: -5, max: 5}}}}
  - name: s7
    protocol: s7
    host: 127.0.0.1
    port: {dead}
    rack: 0
    slot: 2
    tags:
      - {{name: d, address: DB1.DBD0, type: REAL}}
      - {{name: b, address: M10.3}}
"""
    path = tmp / "gw.yaml"
    path.write_text(text)
    return path


def same(model: Any, plain: Any, where: str = "cfg") -> int:
    """Assert ``plain`` holds what ``model`` holds, all the way down; the models compared."""
    if isinstance(model, BaseModel):
        assert isinstance(plain, Plain), where
        assert plain._model == f"{type(model).__module__}.{type(model).__qualname__}", where
        n = 1
        for name in type(model).model_fields:
            n += same(getattr(model, name), getattr(plain, name), f"{where}.{name}")
        for name in type(model).__private_attributes__:
            n += same(getattr(model, name), getattr(plain, name), f"{where}.{name}")
        return n
    if isinstance(model, list | tuple):
        assert type(plain) is type(model) and len(plain) == len(model), where
        return sum(
            same(m, p, f"{where}[{i}]") for i, (m, p) in enumerate(zip(model, plain, strict=True))
        )
    if type(model).__name__ == "SecretStr":
        assert isinstance(plain, Secret), where
        assert plain.get_secret_value() == model.get_secret_value(), where
        return 0
    assert type(plain) is type(model) and plain == model, (where, model, plain)
    return 0


def test_the_plain_copy_holds_every_value_and_method(tmp_path: Path) -> None:
    cfg = load_config(every_protocol(tmp_path, free_port("127.0.0.1")))
    plain = to_plain(cfg)
    assert same(cfg, plain) > 20  # every model of the config was compared
    # what the running gateway calls beyond the fields (the mixins), as the models say
    for attr in ("state_dir", "outbox_path", "audit_archive_dir"):
        assert getattr(plain, attr) == getattr(cfg, attr)
    assert plain.input_tags() == cfg.input_tags() and len(plain.input_tags()) == 11
    assert plain.topic("telemetry") == cfg.topic("telemetry") == "edgegw/gw-plain/telemetry"
    assert plain.commands.enabled is cfg.commands.enabled is False
    assert plain.inference.input_tags() == cfg.inference.input_tags()
    m, pm = cfg.inference.models[0], plain.inference.models[0]
    assert pm.period_ns == m.period_ns == 1_000_000_000
    assert pm.model_path(plain.base_dir) == m.model_path(cfg.base_dir)
    mb, pb = cfg.devices[0], plain.devices[0]
    assert [t.registers for t in pb.tags] == [t.registers for t in mb.tags] == [2, 1, 2, 1, 1, 1]
    kinds = [t.write_kind() for t in pb.tags]
    assert (
        kinds
        == [t.write_kind() for t in mb.tags]
        == ["float", "float", "int", "int", "int", "bool"]
    )
    assert plain.devices[1].line == cfg.devices[1].line == "19200 8O1"
    ua, pua = cfg.devices[2], plain.devices[2]
    assert (pua.host, pua.port) == (ua.host, ua.port) == ("127.0.0.1", ua.port)
    assert (pua.publishing_ms, pua.sampling_ms) == (ua.publishing_ms, ua.sampling_ms) == (250, 250)
    assert pua.read_password() == ua.read_password() == "s3cret"
    assert [t.write_kind() for t in pua.tags] == [t.write_kind() for t in ua.tags]
    s7, ps7 = cfg.devices[3], plain.devices[3]
    assert ps7.tsaps == s7.tsaps == (0x0100, 0x0102)
    for t, pt in zip(s7.tags, ps7.tags, strict=True):
        assert (pt.location, pt.size, pt.data_type, pt.write_kind()) == (
            t.location,
            t.size,
            t.data_type,
            t.write_kind(),
        )
    # equal copies compare equal (a reload compares old and new); a change does not
    assert to_plain(load_config(tmp_path / "gw.yaml")) == plain
    assert plain.devices[0] != plain.devices[3]


def test_secrets_do_not_show(tmp_path: Path) -> None:
    path = every_protocol(tmp_path, free_port("127.0.0.1"))
    text = path.read_text().replace("password_file: ua.pass", "password: hunter2")
    path.write_text(text)
    plain = to_plain(load_config(path))
    ua = plain.devices[2]
    assert ua.read_password() == "hunter2"
    assert "hunter2" not in repr(ua) and "hunter2" not in repr(ua.password)


def test_the_handover_never_names_a_pydantic_module() -> None:
    """A pickle naming a config model (as plain pickling of a pydantic model would) is
    refused with the reason, before anything of it is imported."""
    from gateway.config import UplinkConfig

    with pytest.raises(pickle.UnpicklingError, match="would import pydantic into the daemon"):
        loads(pickle.dumps(UplinkConfig()))
    with pytest.raises(pickle.UnpicklingError, match="not a config value"):
        loads(pickle.dumps(subprocess.CompletedProcess(["x"], 0)))
    assert loads(dumps(UplinkConfig())) == to_plain(UplinkConfig())


def test_the_child_reports_config_errors_and_failed_checks(tmp_path: Path) -> None:
    dead = free_port("127.0.0.1")
    path = every_protocol(tmp_path, dead)
    path.write_text(path.read_text().replace("port: /dev/ttyUSB-edgegw-test", "port: 7"))
    with pytest.raises(ConfigError) as bad:
        load_checked(path)
    assert not isinstance(bad.value, StartChecksFailed)
    assert any(
        line.startswith(f"{path}:") and "devices[1].port" in line for line in bad.value.lines
    )
    # valid, but the model file is not the one pinned: a failed check, with where and what
    path = every_protocol(tmp_path, dead)
    path.write_text(path.read_text().replace(DEFAULT_SHA, "f" * 64))
    with pytest.raises(StartChecksFailed) as failed:
        load_checked(path)
    assert any("sha256" in line for line in failed.value.lines), failed.value.lines
    # without the checks the same config loads
    assert load_checked(path, checks=False).devices[2].name == "ua"


def test_a_config_error_reads_as_before_from_run(tmp_path: Path) -> None:
    """`edgegw run` prints the same ``file:line:col: field: problem`` lines as
    `edgegw validate` and exits 2."""
    path = every_protocol(tmp_path, free_port("127.0.0.1"))
    path.write_text(path.read_text().replace("rack: 0", "rack: nine"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "-c", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    validate = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert run.returncode == validate.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    line = next(ln for ln in run.stderr.splitlines() if "rack" in ln)
    assert line.startswith(f"{path}:") and line in validate.stderr + validate.stdout, (
        run.stderr,
        validate.stderr,
    )


def mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_the_running_daemon_never_loads_pydantic(tmp_path: Path) -> None:
    """`edgegw run` with every protocol, a model and a SIGHUP reload that adds a tag: the
    config checked in a child process each time; pydantic is never mapped into the
    daemon, and the reload is applied."""
    dead = free_port("127.0.0.1")
    path = every_protocol(tmp_path, dead)
    gw = Gateway(path, tmp_path / "state", tmp_path / "gw.log")
    try:
        gw.start()
        assert gw.proc is not None
        maps = mapped(gw.proc.pid)
        assert "site-packages/pydantic" not in maps, "pydantic-core mapped into the daemon"
        assert "onnxruntime" in maps  # the model is loaded: the maps are the daemon's
        every_protocol(tmp_path, dead, extra_tag="      - {name: t6, address: 20, type: int16}\n")
        gw.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60  # a hang, not a timing claim
        reload: dict[str, Any] = {}
        while time.monotonic() < deadline:
            reload = (read_status(tmp_path / "state") or {}).get("reload") or {}
            if reload:
                break
            time.sleep(0.2)
        assert reload.get("outcome") == "applied", (reload, gw.text())
        assert "devices" in reload.get("applied", []), reload
        assert "site-packages/pydantic" not in mapped(gw.proc.pid)
        gw.stop()
    finally:
        gw.cleanup()
    assert "Traceback" not in gw.text(), gw.text()


def test_a_pydantic_config_given_to_the_daemon_is_checked_and_let_go(tmp_path: Path) -> None:
    """Tests and tools hand the daemon a pydantic config: it runs on the plain copy."""
    from gateway.daemon import Daemon

    cfg = load_config(every_protocol(tmp_path, free_port("127.0.0.1")))
    assert isinstance(cfg, Config)
    d = Daemon(cfg, tmp_path / "gw.yaml")
    assert isinstance(d.cfg, Plain) and d.cfg == to_plain(cfg)


def test_a_check_that_cannot_run_is_not_the_configs_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that dies without an answer (here: the interpreter replaced by one that
    exits 1) is a CheckCrashed, which `run` turns into exit 1 (systemd tries again), not
    the exit 2 of a config a person must fix."""
    import gateway.configload as configload

    path = every_protocol(tmp_path, free_port("127.0.0.1"))
    monkeypatch.setattr(configload, "_SELF", "/bin/false")
    with pytest.raises(CheckCrashed) as crashed:
        load_checked(path)
    assert crashed.value.lines[0] == f"{path}: the config check failed (exit 1)"
    from gateway.commands.run import load_checked_or_exit

    with pytest.raises(SystemExit) as exit_:
        load_checked_or_exit(str(path))
    assert exit_.value.code == 1
