"""Signed commands end to end: the platform signs and publishes through a real mosquitto,
the gateway (the daemon, polling a pymodbus, an asyncua and a snap7 server) verifies,
authorises, writes, reads back, seals a signed result through its outbox and audits;
the platform verifies the result from the gateway's enrolled key. Every refusal has its
reason, is audited, and writes nothing."""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path
from typing import Any

import cbor2

from drivers.modbus.types import Table
from drivers.s7.types import Area
from gateway.downlink.state import CommandState
from gateway.mosquitto import Mosquitto
from gateway.receiver import MqttReceiver, Receiver, SqliteStore
from security.cose import parse1
from tests.gateway.commandrig import GW, Rig


def f32_cdab(regs: list[int]) -> float:
    value: float = struct.unpack(">f", struct.pack(">HH", regs[1], regs[0]))[0]
    return value


def test_writes_through_every_driver_are_read_back_signed_stored_and_audited(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        store = SqliteStore(tmp_path / "received.db")
        async with Rig(tmp_path, broker.port) as rig:
            rx = Receiver(rig.trust, "edgegw", store=store)
            mr = MqttReceiver(rx, "::1", broker.port).start()
            try:
                assert rig.mb is not None and rig.s7 is not None and rig.ua is not None
                rig.s7.set_bytes(Area.DB, 2, bytes([0x81]), db=1)
                for name, tag, value in (
                    ("mb_sp", "plc/sp", 42.5),
                    ("mb_run", "plc/run", True),
                    ("ua_sp", "ua/sp", 61.25),
                    ("ua_mode", "ua/mode", 2),
                    ("s7_bit", "s7/bit", True),
                    ("s7_level", "s7/level", -12.5),
                ):
                    out[name] = await rig.send(rig.message("write", {"tag": tag, "value": value}))
                out["mb_regs"] = rig.mb.get_registers(1, Table.HOLDING, 10, 2)
                out["mb_coil"] = rig.mb.get_bits(1, Table.COIL, 3, 1)
                out["s7_byte"] = rig.s7.get_bytes(Area.DB, 2, 1, db=1)[0]
                out["s7_level_raw"] = struct.unpack(">f", rig.s7.get_bytes(Area.DB, 4, 4, db=1))[0]
                # the receiver stores the results with the other kinds
                await rig.until(
                    lambda: (
                        store.db.execute("SELECT count(*) FROM command_results").fetchone()[0] >= 6
                    ),
                    20,
                    "the receiver did not store the results",
                )
            finally:
                mr.stop()
            out["stored"] = store.db.execute(
                "SELECT id, outcome, tag, after FROM command_results ORDER BY seq"
            ).fetchall()
            out["rx"] = rx.stats
        out["audit"] = rig.audit_records()
        store.close()
        return out

    out = asyncio.run(main())
    for name, tag, value in (
        ("mb_sp", "plc/sp", 42.5),
        ("mb_run", "plc/run", True),
        ("ua_sp", "ua/sp", 61.25),
        ("ua_mode", "ua/mode", 2),
        ("s7_bit", "s7/bit", True),
        ("s7_level", "s7/level", -12.5),
    ):
        r = out[name]
        assert r is not None, f"no result for {name}"
        assert (r["outcome"], r["reason"], r["tag"], r["value"]) == ("done", None, tag, value), r
        after = r["after"]
        assert after == value or abs(after - value) < 1e-6, (name, r)
        assert r["again"] is False and r["op"] == "write" and len(r["kid"]) == 16
    assert abs(f32_cdab(out["mb_regs"]) - 425.0) < 1e-3  # scale 0.1 inverted, word order CDAB
    assert out["mb_coil"] == [True]
    assert out["s7_byte"] == 0x81 | 0x20  # bit 5 set, bits 0 and 7 kept
    assert out["s7_level_raw"] == -12.5
    assert len(out["stored"]) == 6 and all(row[1] == "done" for row in out["stored"])
    assert out["rx"].signature_failures == 0 and out["rx"].malformed == 0
    done = [r for r in out["audit"] if r.event == "command_done"]
    assert len(done) == 6
    assert {r.detail["tag"] for r in done} == {
        "plc/sp", "plc/run", "ua/sp", "ua/mode", "s7/bit", "s7/level",
    }  # fmt: skip
    assert all(r.detail["key"] == "ops" and r.detail["verified"] for r in done)
    assert all(len(r.detail["digest"]) == 64 for r in done)


def test_every_refusal_has_its_reason_is_audited_and_writes_nothing(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Rig(tmp_path, broker.port) as rig:
            assert rig.mb is not None
            now = time.time_ns()
            good = rig.message("write", {"tag": "plc/sp", "value": 10.0})
            forged = good[:-1] + bytes([good[-1] ^ 1])  # one bit of the signature
            tampered_payload = rig.message("write", {"tag": "plc/sp", "value": 11.0})
            cases: dict[str, bytes] = {
                "bad_signature": forged,
                "unknown_key": rig.message(
                    "write", {"tag": "plc/sp", "value": 12.0}, key=rig.rogue
                ),
                "expired": rig.message(
                    "write",
                    {"tag": "plc/sp", "value": 13.0},
                    iat_ns=now - 120 * 10**9,
                    lifetime_s=60,
                ),
                "not_yet_valid": rig.message(
                    "write", {"tag": "plc/sp", "value": 14.0}, iat_ns=now + 600 * 10**9
                ),
                "lifetime_too_long": rig.message(
                    "write", {"tag": "plc/sp", "value": 14.5}, lifetime_s=30 * 86400
                ),
                "not_authorised": rig.message("write", {"tag": "plc/other", "value": 3}),
                "not_writable": rig.message("write", {"tag": "plc/fixed", "value": 3}),
                "out_of_range": rig.message("write", {"tag": "plc/sp", "value": 80.5}),
                "not_allowed": rig.message("write", {"tag": "ua/mode", "value": 5}),
                "bad_value": rig.message("write", {"tag": "plc/run", "value": 1}),
                "unknown_tag": rig.message("write", {"tag": "plc/nope", "value": 1}),
                "wrong_gateway": rig.message(
                    "write", {"tag": "plc/sp", "value": 15.0}, gw="gw-other"
                ),
                "op_not_authorised": rig.message(
                    "config", {"version": 9, "config": "gateway: {id: x}"}
                ),
            }
            # a sentinel in every register and node a refused command aims at, read back
            # right after each refusal: a later write cannot hide one that got through
            assert rig.ua is not None
            sentinel = [0xBEEF, 0x0BAD]
            rig.mb.set_registers(1, Table.HOLDING, 10, sentinel)
            await rig.ua.write("ns=2;s=Cmd.Mode", 1)
            mode = rig.ua.server.get_node("ns=2;s=Cmd.Mode")  # type: ignore[union-attr]
            for reason, message in cases.items():
                out[reason] = await rig.send(message)
                out["sp_" + reason] = rig.mb.get_registers(1, Table.HOLDING, 10, 2)
                out["mode_" + reason] = await mode.read_value()
            # a trusted key signing something that is not a command
            garbage = cbor2.dumps({"v": 1, "hello": "world"})
            out["bad_payload"] = await rig.send(rig.signed_raw(garbage, rig.ops))
            # too frequent: the second write of a tag with min_interval_s 60
            out["slow_first"] = await rig.send(
                rig.message("write", {"tag": "plc/slow", "value": 1})
            )
            out["too_frequent"] = await rig.send(
                rig.message("write", {"tag": "plc/slow", "value": 2})
            )
            # a command id used again by another command
            first = rig.message("write", {"tag": "plc/sp", "value": 20.0}, id="same-id")
            out["first"] = await rig.send(first)
            out["replayed_id"] = await rig.send(
                rig.message("write", {"tag": "plc/sp", "value": 21.0}, id="same-id")
            )
            # the same command delivered again: its result again, never a second write
            rig.mb.set_registers(1, Table.HOLDING, 10, [0, 0])
            out["again"] = await rig.send(first)
            out["sp_after_again"] = rig.mb.get_registers(1, Table.HOLDING, 10, 2)
            out["slow_regs"] = rig.mb.get_registers(1, Table.HOLDING, 12, 1)
            out["other_regs"] = rig.mb.get_registers(1, Table.HOLDING, 14, 3)
            out["run"] = rig.mb.get_bits(1, Table.COIL, 3, 1)
            del tampered_payload
        out["audit"] = rig.audit_records()
        return out

    out = asyncio.run(main())
    expect = {
        "bad_signature": "bad_signature",
        "unknown_key": "unknown_key",
        "expired": "expired",
        "not_yet_valid": "not_yet_valid",
        "lifetime_too_long": "lifetime_too_long",
        "not_authorised": "not_authorised",
        "not_writable": "not_writable",
        "out_of_range": "out_of_range",
        "not_allowed": "not_allowed",
        "bad_value": "bad_value",
        "unknown_tag": "unknown_tag",
        "wrong_gateway": "wrong_gateway",
        "op_not_authorised": "not_authorised",
        "bad_payload": "bad_payload",
        "too_frequent": "too_frequent",
        "replayed_id": "replayed_id",
    }
    for case, reason in expect.items():
        r = out[case]
        assert r is not None, f"{case}: no result"
        assert (r["outcome"], r["reason"]) == ("refused", reason), (case, r)
        assert r["detail"], case
    aimed_at_sp = (
        "bad_signature", "unknown_key", "expired", "not_yet_valid", "lifetime_too_long",
        "out_of_range", "wrong_gateway",
    )  # fmt: skip
    for case in aimed_at_sp:
        assert out["sp_" + case] == [0xBEEF, 0x0BAD], (case, out["sp_" + case])
    for case in (c for c in expect if "sp_" + c in out):  # and every other refusal
        assert out["sp_" + case] == [0xBEEF, 0x0BAD], case
        assert out["mode_" + case] == 1, (case, out["mode_" + case])
    # unverified refusals do not claim to know the command
    assert out["bad_signature"]["id"] is None and out["bad_signature"]["kid"] is None
    assert out["unknown_key"]["id"] is None
    assert out["slow_first"]["outcome"] == "done"
    assert out["first"]["outcome"] == "done" and out["first"]["after"] == 20.0
    again = out["again"]
    assert again["again"] is True and again["outcome"] == "done" and again["after"] == 20.0
    # nothing was written by a refused command, and the re-delivery wrote nothing either
    assert out["sp_after_again"] == [0, 0]
    assert out["slow_regs"] == [1] and out["other_regs"] == [0, 0, 0] and out["run"] == [False]
    refused = [r for r in out["audit"] if r.event == "command_refused"]
    reasons = {r.detail.get("reason") for r in refused}
    assert set(expect.values()) <= reasons
    unverified = [r for r in refused if r.detail.get("verified") is False]
    assert {r.detail["reason"] for r in unverified} == {"bad_signature", "unknown_key"}
    # the re-delivery is audited too, marked as such
    assert any(r.detail.get("again") for r in out["audit"] if r.event == "command_done")


def test_results_survive_restart_and_a_seen_command_never_runs_twice(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Rig(tmp_path, broker.port) as rig:
            assert rig.mb is not None
            msg = rig.message("write", {"tag": "plc/sp", "value": 33.0}, lifetime_s=600)
            out["first"] = await rig.send(msg)
            await rig.stop_daemon()
            rig.mb.set_registers(1, Table.HOLDING, 10, [7, 7])
            # a command that was accepted and recorded when the gateway died, before it
            # wrote: at the next start it is answered as interrupted, never run
            crashed = rig.message("write", {"tag": "plc/sp", "value": 44.0}, id="crash-1")
            env = parse1(crashed)
            st = CommandState(rig.state / "commands.db")
            st.begin("crash-1", env.signed_digest(rig.topic.encode()), env.kid, "write",
                     time.time_ns() + 60 * 10**9, time.time_ns(), "plc/sp")  # fmt: skip
            st.close()
            await rig.start_daemon()
            out["again"] = await rig.send(msg)
            out["crashed"] = await rig.send(crashed)
            out["regs"] = rig.mb.get_registers(1, Table.HOLDING, 10, 2)
        out["audit"] = rig.audit_records()
        return out

    out = asyncio.run(main())
    assert out["first"]["outcome"] == "done"
    assert out["again"]["again"] is True and out["again"]["outcome"] == "done"
    assert out["again"]["received"] == out["first"]["received"]  # the stored result
    assert out["regs"] == [7, 7]  # not written again after the restart
    crashed = out["crashed"]
    assert (crashed["outcome"], crashed["reason"], crashed["again"]) == (
        "failed",
        "interrupted",
        True,
    )
    assert any(
        r.event == "command_failed" and r.detail.get("reason") == "interrupted"
        for r in out["audit"]
    )


def test_a_command_sent_while_the_link_is_down_runs_once_when_it_returns_or_expires(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """The gateway's session persists on the broker: commands published while its link is
    cut wait there. When the link returns, one executes (once), the other has expired and
    is refused as such; both results go through the outbox."""
    from tests.linkproxy import LinkProxy

    proxy = LinkProxy(("::1", broker.port))

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Rig(tmp_path, broker.port, uplink_port=proxy.port) as rig:
            assert rig.mb is not None and rig.daemon is not None
            proxy.cut()
            fwd = rig.daemon.forwarder
            await rig.until(lambda: fwd is not None and not fwd.stats.link_up, 20, "link still up")
            lasting = rig.message("write", {"tag": "plc/sp", "value": 55.0}, lifetime_s=120)
            brief = rig.message("write", {"tag": "plc/run", "value": True}, lifetime_s=1)
            sends = [asyncio.create_task(rig.send(m, timeout=40)) for m in (lasting, brief)]
            await asyncio.sleep(3.0)  # the brief one expires meanwhile, on the broker
            out["sp_while_down"] = rig.mb.get_registers(1, Table.HOLDING, 10, 2)
            proxy.restore()
            out["lasting"], out["brief"] = await asyncio.gather(*sends)
            out["regs"] = rig.mb.get_registers(1, Table.HOLDING, 10, 2)
            out["run"] = rig.mb.get_bits(1, Table.COIL, 3, 1)
            dl = rig.daemon.downlink
            assert dl is not None
            out["accepted"] = dl.counts.get("accepted", 0)
        return out

    try:
        out = asyncio.run(main())
    finally:
        proxy.close()
    assert out["sp_while_down"] == [0, 0]
    assert out["lasting"]["outcome"] == "done" and out["lasting"]["after"] == 55.0
    assert (out["brief"]["outcome"], out["brief"]["reason"]) == ("refused", "expired")
    assert abs(f32_cdab(out["regs"]) - 550.0) < 1e-3 and out["run"] == [False]
    assert out["accepted"] == 1


def test_the_command_tool_and_command_keys_as_an_operator_runs_them(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """`edgegw keys command-key` makes a key pair (never overwriting one); `edgegw command
    write` signs, publishes, waits for the verified result and exits 0 / 1 / 2."""
    import json
    import os
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo))

    async def cli(*args: str) -> tuple[int, str, str]:
        p = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(p.communicate(), 90)
        assert p.returncode is not None
        return p.returncode, out.decode(), err.decode()

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        keyfile = tmp_path / "new.ed25519.pem"
        out["make"] = await cli("keys", "command-key", "-o", str(keyfile), "--name", "new")
        out["mode"] = keyfile.stat().st_mode & 0o777
        out["pub"] = (tmp_path / "new.pub.pem").read_text()
        out["again"] = await cli("keys", "command-key", "-o", str(keyfile))
        async with Rig(tmp_path / "rig", broker.port) as rig:
            assert rig.mb is not None
            common = [
                "--gateway", GW, "--key", str(tmp_path / "rig" / "ops.ed25519.pem"),
                "--pubkey", f"{GW}={rig.state / 'keys' / 'device.pub.pem'}",
                "--port", str(broker.port), "--timeout", "30",
            ]  # fmt: skip
            out["done"] = await cli(
                "command", "write", *common, "--tag", "plc/sp", "--value", "12.5"
            )
            out["regs"] = rig.mb.get_registers(1, Table.HOLDING, 10, 2)
            out["refused"] = await cli(
                "command", "write", *common, "--tag", "plc/sp", "--value", "99", "--json"
            )
            out["no_enrolment"] = await cli(
                "command", "write", "--gateway", GW, "--key", str(keyfile),
                "--tag", "plc/sp", "--value", "1", "--port", str(broker.port),
            )  # fmt: skip
            out["unknown_key"] = await cli(
                "command", "write", *common[:2], "--key", str(keyfile), *common[4:],
                "--tag", "plc/sp", "--value", "1",
            )  # fmt: skip
        return out

    (tmp_path / "rig").mkdir()
    out = asyncio.run(main())
    code, stdout, _ = out["make"]
    assert code == 0 and "public_key: new.pub.pem" in stdout and "BEGIN PUBLIC KEY" in out["pub"]
    assert out["mode"] == 0o600
    assert out["again"][0] == 1 and "never overwritten" in out["again"][2]
    code, stdout, _ = out["done"]
    assert code == 0, out["done"]
    assert ": done: plc/sp = 12.5, read back 12.5" in stdout
    assert abs(f32_cdab(out["regs"]) - 125.0) < 1e-3
    code, stdout, _ = out["refused"]
    res = json.loads(stdout)
    assert code == 1 and (res["outcome"], res["reason"]) == ("refused", "out_of_range")
    assert out["no_enrolment"][0] == 2 and "not enrolled" in out["no_enrolment"][2]
    code, stdout, _ = out["unknown_key"]
    assert code == 1 and "refused (unknown_key)" in stdout


def test_commands_over_mqtt_311_with_a_persistent_session(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async def main() -> dict[str, Any]:
        async with Rig(tmp_path, broker.port, protocol="mqtt311") as rig:
            r = await rig.send(rig.message("write", {"tag": "ua/sp", "value": 7.5}))
            assert rig.daemon is not None and rig.daemon.forwarder is not None
            return {"r": r, "limits": rig.daemon.forwarder.stats.limits}

    out = asyncio.run(main())
    assert out["limits"]["protocol"] == "mqtt311"
    assert out["r"]["outcome"] == "done" and out["r"]["after"] == 7.5


class SpyLock:
    """Stands in for commands.db's lock and notes the thread of every taker: a FULL
    transaction holds this lock through its fsync, so a taker on the event loop would
    stall the whole gateway (polls, uplink) for as long as the disk takes."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.takers: list[str] = []

    def __enter__(self) -> Any:
        import threading

        self.takers.append(threading.current_thread().name)
        return self.real.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self.real.__exit__(*exc)


def test_the_checks_on_the_loop_never_wait_for_commands_db(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """The pace of a tag (min_interval_s) and the config version are checked on the event
    loop from memory kept by the committed writes; commands.db's lock (held through each
    FULL fsync) is taken only by worker threads. The memory is loaded from the file at
    start: after a restart, the pace and the version still hold."""
    import threading

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Rig(tmp_path, broker.port, health_s=1.0) as rig:
            assert rig.daemon is not None and rig.daemon.downlink is not None
            loop_thread = threading.current_thread().name
            text = rig.cfg_path.read_text()
            for restarted in (False, True):
                st = rig.daemon.downlink.state
                assert st is not None
                spy = SpyLock(st._lock)
                st._lock = spy  # type: ignore[assignment]
                tag = f"r{int(restarted)}"
                out[tag + "slow"] = await rig.send(
                    rig.message("write", {"tag": "plc/slow", "value": 3})
                )
                out[tag + "sp"] = await rig.send(
                    rig.message("write", {"tag": "plc/sp", "value": 5})
                )
                push = {"version": 2, "config": text}
                out[tag + "config"] = await rig.send(rig.message("config", push, key=rig.admin))
                out[tag + "takers"] = list(spy.takers)
                st._lock = spy.real
                if not restarted:
                    await rig.stop_daemon()
                    await rig.start_daemon()
            out["loop"] = loop_thread
        return out

    out = asyncio.run(main())
    outcomes = {k: (v["outcome"], v["reason"]) for k, v in out.items() if isinstance(v, dict)}
    assert outcomes == {
        "r0slow": ("done", None),
        "r0sp": ("done", None),
        "r0config": ("done", None),
        "r1slow": ("refused", "too_frequent"),  # 60 s since the write before the restart
        "r1sp": ("done", None),
        "r1config": ("refused", "version_not_newer"),
    }, outcomes
    for restarted in ("r0", "r1"):
        takers = out[restarted + "takers"]
        assert len(takers) >= 4, takers  # seen, begin, finish, mark_sealed... in workers
        assert out["loop"] not in takers, takers


def test_a_genuine_command_beyond_a_full_queue_is_answered_busy_never_dropped(
    tmp_path: Path, broker: Mosquitto, monkeypatch: Any
) -> None:
    """The command queue (2 here) is full while the downlink waits on commands.db: a
    genuine command beyond it is checked on arrival and answered refused [busy] (signed,
    recorded under its id, audited: a copy of it later gets the same answer and it never
    runs); a forged one beyond it is dropped with a digested audit record only; the queued
    commands all run."""
    import threading

    import gateway.downlink.service as service

    monkeypatch.setattr(service, "QUEUE", 2)

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Rig(tmp_path, broker.port) as rig:
            assert rig.daemon is not None and rig.daemon.downlink is not None
            assert rig.mb is not None
            dl, st = rig.daemon.downlink, rig.daemon.downlink.state
            assert st is not None
            entered, gate = threading.Event(), threading.Event()
            real_seen = st.seen

            def slow_seen(command_id: str) -> Any:  # as a disk that takes its time
                entered.set()
                gate.wait(60)  # a bound only: the test opens it
                return real_seen(command_id)

            st.seen = slow_seen  # type: ignore[method-assign]
            sends: dict[str, asyncio.Task[Any]] = {}

            def send(name: str, message: bytes, timeout: float = 30) -> None:
                sends[name] = asyncio.create_task(rig.send(message, timeout=timeout))

            send("first", rig.message("write", {"tag": "plc/sp", "value": 1.0}))
            await rig.until(entered.is_set, 20, "the downlink did not take the first command")
            send("q1", rig.message("write", {"tag": "ua/sp", "value": 2.0}))
            await rig.until(lambda: dl._queue.qsize() == 1, 20, "q1 not queued")
            send("q2", rig.message("write", {"tag": "s7/level", "value": 3.0}))
            await rig.until(lambda: dl._queue.qsize() == 2, 20, "q2 not queued")
            busy = rig.message("write", {"tag": "plc/run", "value": True}, lifetime_s=120)
            send("busy", busy)
            await rig.until(lambda: len(dl._busy) == 1, 20, "no busy entry")
            forged = rig.message("write", {"tag": "plc/run", "value": True})
            send("forged", forged[:-1] + bytes([forged[-1] ^ 1]), timeout=8)
            await rig.until(
                lambda: dl.counts.get("dropped_queue_full") == 1, 20, "forged one not dropped"
            )
            gate.set()
            for name, task in sends.items():
                out[name] = await task
            out["busy_again"] = await rig.send(busy)
            out["run"] = rig.mb.get_bits(1, Table.COIL, 3, 1)
            out["counts"] = dict(dl.counts)
        out["audit"] = rig.audit_records()
        return out

    out = asyncio.run(main())
    for name, after in (("first", 1.0), ("q1", 2.0), ("q2", 3.0)):
        r = out[name]
        assert r is not None and (r["outcome"], r["after"]) == ("done", after), (name, r)
    r = out["busy"]
    assert r is not None and (r["outcome"], r["reason"], r["tag"]) == ("refused", "busy", "plc/run")
    assert "new id" in r["detail"] and len(r["kid"]) == 16
    again = out["busy_again"]
    assert (again["outcome"], again["reason"], again["again"]) == ("refused", "busy", True)
    assert out["run"] == [False]  # the busy command never ran
    assert out["forged"] is None  # beyond the queue, unverified: no result...
    refused = [r.detail for r in out["audit"] if r.event == "command_refused"]
    assert any(d.get("reason") == "busy" and d["verified"] for d in refused), refused
    # ... but an audit record (the first of a digest) naming why
    assert {"reason": "queue_full", "verified": False, "detail": "bad_signature"} in refused


def test_a_bug_while_handling_a_command_still_answers_it(
    tmp_path: Path, broker: Mosquitto, caplog: Any
) -> None:
    """An exception inside the downlink's handling (a seeded bug) answers the command
    failed [internal_error], signed, audited and recorded under its id (a copy of it gets
    the same answer, it never runs later), logged with the traceback; before the
    signature is checked it is answered too, with no id and marked unverified."""
    import logging

    caplog.set_level(logging.ERROR, logger="edgegw.downlink")

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Rig(tmp_path, broker.port) as rig:
            assert rig.daemon is not None and rig.daemon.downlink is not None
            assert rig.mb is not None
            dl = rig.daemon.downlink
            rig.mb.set_registers(1, Table.HOLDING, 10, [0x1234, 0x5678])

            def bug(*a: Any, **kw: Any) -> Any:
                raise ZeroDivisionError("seeded bug")

            msg = rig.message("write", {"tag": "plc/sp", "value": 9.0}, lifetime_s=120)
            dl._check = bug  # type: ignore[method-assign]
            out["checked"] = await rig.send(msg)
            del dl._check  # the method again
            out["again"] = await rig.send(msg)
            dl._authenticate = bug  # type: ignore[method-assign]
            out["early"] = await rig.send(rig.message("write", {"tag": "plc/sp", "value": 8.0}))
            del dl._authenticate
            out["after"] = await rig.send(rig.message("write", {"tag": "plc/sp", "value": 7.0}))
            out["regs"] = rig.mb.get_registers(1, Table.HOLDING, 10, 2)
        out["audit"] = rig.audit_records()
        return out

    out = asyncio.run(main())
    r = out["checked"]
    assert r is not None and (r["outcome"], r["reason"]) == ("failed", "internal_error"), r
    assert r["id"] is not None and "seeded bug" in r["detail"]
    again = out["again"]
    assert (again["outcome"], again["reason"], again["again"]) == ("failed", "internal_error", True)
    early = out["early"]
    assert early is not None and (early["outcome"], early["reason"]) == ("failed", "internal_error")
    assert early["id"] is None and early["kid"] is None
    assert out["after"]["outcome"] == "done"  # the downlink went on
    assert abs(f32_cdab(out["regs"]) - 70.0) < 1e-3  # 9.0 and 8.0 never written
    failed = [r.detail for r in out["audit"] if r.event == "command_failed"]
    assert [(d["reason"], d["verified"]) for d in failed if d.get("again") is not True] == [
        ("internal_error", True),
        ("internal_error", False),
    ], failed
    tracebacks = [
        rec for rec in caplog.records if rec.exc_info and "seeded bug" in str(rec.exc_info[1])
    ]
    assert len(tracebacks) == 2


def test_a_dead_device_delays_only_its_own_commands(tmp_path: Path, broker: Mosquitto) -> None:
    """A device whose link turns into a black hole (connected, never answering): a write
    to it stays pending while a write to a good device is done and read back; when that
    link is cut it fails with the reason, and nothing waited for it but itself."""
    from drivers.modbus.simulator import ModbusSimulator
    from tests.linkproxy import LinkProxy

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        far_plc = ModbusSimulator()
        await far_plc.start()
        proxy = LinkProxy(("127.0.0.1", far_plc.port), listen_host="127.0.0.1")
        far = (
            "  - name: far\n    protocol: modbus_tcp\n    host: 127.0.0.1\n"
            f"    port: {proxy.port}\n"
            "    poll_interval_ms: 200\n    timeout_ms: 20000\n    tags:\n"
            "      - {name: x, address: 0, type: uint16, write: {min: 0, max: 100,"
            " min_interval_s: 0}}\n"
        )  # fmt: skip
        try:
            async with Rig(
                tmp_path, broker.port, extra_devices=far, extra_scopes=", 'far/*'"
            ) as rig:
                assert rig.daemon is not None and rig.daemon.downlink is not None
                assert rig.mb is not None and "far" in rig.daemon.devices
                dl = rig.daemon.downlink
                proxy.stall()
                stuck = asyncio.create_task(
                    rig.send(rig.message("write", {"tag": "far/x", "value": 42}), timeout=60)
                )
                await rig.until(lambda: dl.counts.get("accepted") == 1, 20, "far not accepted")
                out["good"] = await rig.send(rig.message("write", {"tag": "plc/sp", "value": 30}))
                out["good_regs"] = rig.mb.get_registers(1, Table.HOLDING, 10, 2)
                out["stuck_pending"] = not stuck.done()
                out["ua"] = await rig.send(rig.message("write", {"tag": "ua/sp", "value": 4.5}))
                out["stuck_pending_2"] = not stuck.done()
                proxy.cut()
                out["stuck"] = await stuck
                out["far_regs"] = far_plc.get_registers(1, Table.HOLDING, 0, 1)
        finally:
            proxy.close()
            await far_plc.stop()
        return out

    out = asyncio.run(main())
    assert (out["good"]["outcome"], out["good"]["after"]) == ("done", 30), out["good"]
    assert abs(f32_cdab(out["good_regs"]) - 300.0) < 1e-3
    assert (out["ua"]["outcome"], out["ua"]["after"]) == ("done", 4.5)
    assert out["stuck_pending"] and out["stuck_pending_2"]  # done while far hung
    stuck = out["stuck"]
    assert stuck is not None and stuck["outcome"] == "failed", stuck
    assert stuck["reason"] in ("device_unreachable", "timeout", "device_error"), stuck
    assert out["far_regs"] == [0]  # the black hole swallowed the write
