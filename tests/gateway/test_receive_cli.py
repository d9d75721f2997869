"""`edgegw receive` reaches brokers that require a login and TLS, never takes a password on
the command line, and `--jsonl` writes valid JSON only (events and notices included)."""

from __future__ import annotations

import io
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

from gateway.mosquitto import Mosquitto
from gateway.receiver import JsonLinesSink, Outcome, Receiver
from security import DeviceKey
from tests.conftest import REPO
from tests.gateway.fleet_rig import Fleet, Publisher
from tests.gateway.test_receiver import TOPIC, msg, notice
from tests.tlscerts import make_pki


def strict_json(line: str) -> dict:  # type: ignore[type-arg]
    def refuse(name: str) -> None:
        raise ValueError(f"bare {name} is not JSON")

    return json.loads(line, parse_constant=refuse)  # type: ignore[no-any-return]


def test_jsonl_is_valid_json_with_events_and_notices(tmp_path: Path) -> None:
    key = DeviceKey.load_or_create(tmp_path / "gw")[0]
    out = io.StringIO()
    rx = Receiver({"gw1": key.public_key}, "edgegw", JsonLinesSink(out))
    r = [
        ["plc/nan", 1, float("nan"), 0],
        ["plc/inf", 1, float("-inf"), 0],
        ["plc/text", 1, "NaN", 0],
        ["plc/big", 1, 2**64 - 1, 0],
        ["plc/raw", 1, b"\x01\x02", 0],
        ["plc/bad", 1, None, 1, "timeout", 7],
    ]
    assert rx.handle(TOPIC, msg(key, 1, r)) is Outcome.VALID
    event = {
        "model": "m",
        "kind": "start",
        "ts_ns": 5,
        "score": float("nan"),
        "peak": 2.0,
        "window_end_ns": 6,
        "inputs": ["plc/nan"],
    }
    t_ev = "edgegw/gw1/event"
    assert rx.handle(t_ev, msg(key, 2, kind="event", topic=t_ev, event=event)) is Outcome.VALID
    assert rx.handle("edgegw/gw1/notice", notice(key, 10, 3, 9)) is Outcome.VALID
    lines = [strict_json(x) for x in out.getvalue().splitlines()]
    by_tag = {x["tag"]: x for x in lines if x["type"] == "reading"}
    assert (by_tag["plc/nan"]["vtype"], by_tag["plc/nan"]["value"]) == ("f", "NaN")
    assert by_tag["plc/inf"]["value"] == "-Infinity"
    assert (by_tag["plc/text"]["vtype"], by_tag["plc/text"]["value"]) == ("s", "NaN")
    assert by_tag["plc/big"]["value"] == 2**64 - 1
    assert (by_tag["plc/raw"]["vtype"], by_tag["plc/raw"]["value"]) == ("x", "0102")
    assert (by_tag["plc/bad"]["reason"], by_tag["plc/bad"]["server_ts"]) == ("timeout", 7)
    (ev,) = [x for x in lines if x["type"] == "event"]
    assert (ev["model"], ev["score"], ev["inputs"]) == ("m", "NaN", ["plc/nan"])
    (no,) = [x for x in lines if x["type"] == "notice"]
    assert (no["first_seq"], no["last_seq"], no["points"]) == (3, 9, 30)


def _receive(
    tmp_path: Path, fleet: Fleet, port: int, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "receive",
            "--host",
            "::1",
            "--port",
            str(port),
            "--enrol",
            str(fleet.enrol_dir),
            "--db",
            str(tmp_path / "rx.db"),
            "--duration",
            "4",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def test_tls_client_certificate_and_login(tmp_path: Path) -> None:
    """A broker with TLS, client certificates and a password file: the receiver reaches it
    with --ca-file, --cert-file/--key-file, --username and --password-file (or the
    environment); a wrong password is refused at once, with exit status 1."""
    pki = make_pki(tmp_path / "pki")
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "receiver", "s3cret word"], check=True)
    conf = (
        f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
        f"require_certificate true\nallow_anonymous false\npassword_file {pw}\n"
    )
    fleet = Fleet(tmp_path / "fleet", 1)
    (tmp_path / "pw").write_text("s3cret word\n")
    (tmp_path / "wrong").write_text("guess\n")
    tls = ["--ca-file", str(pki.ca), "--cert-file", str(pki.client_cert)]
    tls += ["--key-file", str(pki.client_key), "--username", "receiver"]
    with Mosquitto(host="::1", workdir=tmp_path / "broker", extra_conf=conf) as b:
        p = _receive(tmp_path, fleet, b.port, *tls, "--password-file", str(tmp_path / "wrong"))
        _, err = p.communicate(timeout=60)
        assert p.returncode == 1 and "refused the connection" in err, err
        # the password from the environment
        env_pw = {"EDGEGW_MQTT_PASSWORD": "s3cret word"}
        p = _receive(tmp_path, fleet, b.port, *tls, env=env_pw)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        # and from a file, with a message through
        p = _receive(tmp_path, fleet, b.port, *tls, "--password-file", str(tmp_path / "pw"))
        time.sleep(2.0)
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        pub = Publisher(b.port, tls=ctx, login=("receiver", "s3cret word"))
        pub.publish([("edgegw/gw00/telemetry", fleet.message("gw00", 1))])
        pub.close()
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert '"messages_verified": 1' in err, err
    # a password is never an option
    r = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "receive", "--password", "x"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 2 and "--password-file" in r.stderr, r.stderr


def test_postgres_without_psycopg_is_one_line_for_receive_and_report(tmp_path: Path) -> None:
    """Where the platform extra is missing, both `receive --db postgresql://` and
    `receive --report` say what to install, in one line, exit 1 (no traceback)."""
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from gateway.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    db = "postgresql://edgegw@[::1]:1/edgegw"
    pem = tmp_path / "gw.pub.pem"
    pem.write_bytes(DeviceKey.load_or_create(tmp_path / "state")[0].public_pem())
    receive = ["receive", "--db", db, "--port", "1", "--pubkey", f"gw={pem}"]
    for args in (["receive", "--report", "--db", db], receive):
        p = subprocess.run(
            [sys.executable, "-c", code, *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert p.returncode == 1, (args, p.stderr)
        assert "Traceback" not in p.stderr, p.stderr
        assert "pip install 'edgegw[platform]'" in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
