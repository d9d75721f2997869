"""`edgegw scan`: find the unit ids that answer on a Modbus bus or host.

Each unit id of the range gets one read of one register (by default holding 40001). A
unit counts as present only when its answer proves it processed the request: data, or
an exception such as illegal function (1), illegal address (2), illegal value (3) or
busy (5, 6). Exception 4 (server device failure) is what many servers and gateways
answer for a unit id they do not serve, and 10/11 are a gateway saying the unit behind
it is silent: those are listed apart, not counted. A server that answers every unit id
the same way with data ignores the unit id (a plain Modbus TCP device): said once, not
247 times. One exception from every id is said once with what it means: 10/11 from a
TCP-to-serial gateway whose bus is silent, 4 from a server with no such unit. With no
unit found, the likely causes are printed (for TCP with no answer at all, after asking
the port what it speaks). Library messages stay off the terminal. Progress goes to stderr,
results to stdout.

Exit status: 0 some unit answered, 1 none did (or the link failed), 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import re
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from . import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, Subparsers, add_command, fail

# Exceptions that prove the unit id exists: it decoded the request and refused it.
_PROOF = {1, 2, 3, 5, 6, 7, 8}


def register(sub: Subparsers) -> None:
    s = add_command(
        sub,
        "scan",
        "find the Modbus unit ids that answer on a serial bus or a TCP host",
        "edgegw scan 'modbus-rtu:///dev/ttyUSB0?baudrate=9600&parity=N' --from 1 --to 32\n"
        "  edgegw scan modbus-tcp://192.168.0.50:502 --timeout-ms 300",
    )
    s.add_argument(
        "target", help="modbus-tcp://HOST[:PORT], modbus-rtu-tcp://..., modbus-rtu:///dev/..."
    )
    s.add_argument("--from", dest="first", type=int, default=1, help="first unit id (default 1)")
    s.add_argument("--to", dest="last", type=int, default=247, help="last unit id (default 247)")
    s.add_argument("--timeout-ms", type=int, default=200, help="wait per unit id (default 200)")
    s.add_argument(
        "--register", default="40001", help="what to read from each unit (default 40001)"
    )
    s.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from drivers.modbus.config import validate_device
    from drivers.modbus.target import parse_target

    if not (0 <= args.first <= args.last <= 255):
        raise fail(
            f"scan: --from {args.first} --to {args.last}: accepted: 0 <= from <= to <= 255 "
            "(1..247 on a serial bus)"
        )
    try:
        fields = parse_target(args.target)
    except ValueError as exc:
        raise fail(f"scan: {exc}") from None
    probe = {"name": "probe", "register": args.register}
    if args.register.strip().isdigit() and args.register.strip()[0] in "01":
        probe["type"] = "bool"
    device = {
        **fields,
        "name": "scan",
        "unit_id": max(1, args.first) if fields["protocol"] != "modbus_tcp" else args.first,
        "timeout_ms": args.timeout_ms,
        "tags": [probe],
    }
    try:
        dev = validate_device(device)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            name = next((str(p) for p in reversed(err["loc"]) if isinstance(p, str)), "target")
            flag = {"timeout_ms": "--timeout-ms", "register": "--register"}.get(name, name)
            print(f"edgegw: scan: {flag}: {err['msg']}", file=sys.stderr)
        return EXIT_BAD_INPUT
    answers = asyncio.run(_scan(dev, args.first, args.last))
    if answers is None:
        return EXIT_FAILED
    return _report(dev, answers, args.last - args.first + 1)


@dataclass(frozen=True, slots=True)
class Answer:
    """What one unit id answered: data (``code`` None), an exception, or nothing."""

    unit: int
    code: int | None = None
    text: str = ""
    silent: bool = False

    @property
    def proves(self) -> bool:
        return not self.silent and (self.code is None or self.code in _PROOF)

    @property
    def kind(self) -> str:
        return "silent" if self.silent else "data" if self.code is None else f"exc{self.code}"


def _classify(unit: int, reading: tuple[Any, ...], raw: Any) -> Answer:
    if reading[3] == 0:
        shown = " ".join(
            f"0x{v:04X}" if not isinstance(v, bool) else str(int(v)) for v in raw or ()
        )
        return Answer(unit, None, f"answers ({shown})")
    m = re.match(r"modbus exception (\d+) \(([^)]*)\)", reading[4] if len(reading) > 4 else "")
    if m:
        code = int(m.group(1))
        return Answer(unit, code, f"answers with exception {code} ({m.group(2)})")
    return Answer(unit, silent=True)


def quiet_libraries() -> None:
    """pymodbus logs hex dumps and "No response received" at its own levels; a scan
    expects silence from most ids, so its messages are of no use on the terminal."""
    lib = logging.getLogger("pymodbus")
    lib.setLevel(logging.CRITICAL + 1)
    lib.propagate = False


async def _scan(dev: Any, first: int, last: int) -> list[Answer] | None:
    """Every unit id's answer, or None when the link cannot be opened (said on stderr)."""
    from drivers.contract import ConnectError
    from drivers.modbus import compile_plan
    from drivers.modbus.driver import Driver

    quiet_libraries()
    plan = compile_plan(dev)
    driver = Driver(dev)
    driver.check_after_silence = False  # one driver, many unit ids: silence is expected
    answers: list[Answer] = []
    total = last - first + 1
    tty = sys.stderr.isatty()
    last_note = 0.0
    found = 0
    try:
        for i, unit in enumerate(range(first, last + 1), 1):
            if not driver.connected:
                try:
                    await driver.connect()
                except ConnectError as exc:
                    print(f"edgegw: scan: {exc}", file=sys.stderr)
                    return None
            batch, raw = await driver.read_raw(dataclasses.replace(plan, unit_id=unit))
            (reading,) = batch.readings
            answer = _classify(unit, reading, raw.get(reading[0]))
            answers.append(answer)
            if answer.proves:
                found += 1
                if found <= _SHOWN_BEFORE_SAME:
                    print(f"unit {unit}: {answer.text}", flush=True)
            now = time.monotonic()
            if tty or now - last_note >= 2 or i == total:
                last_note = now
                end = "\r" if tty and i < total else "\n"
                print(f"scanned {i}/{total} unit ids, {found} answer", end=end, file=sys.stderr)
    finally:
        await driver.close()
    return answers


_SHOWN_BEFORE_SAME = 16  # then, if every id answers alike, it is one server, said once


def _report(dev: Any, answers: list[Answer], total: int) -> int:
    present = [a for a in answers if a.proves]
    kinds = {a.kind for a in answers}
    if len(answers) >= 3 and len(kinds) == 1 and not answers[0].silent:
        code = answers[0].code
        if answers[0].proves:
            what = "data" if code is None else f"exception {code}"
            print(
                f"every unit id answers the same way ({what}): the server ignores the unit "
                "id. It is one device, not a gateway to a bus; any unit_id reaches it (1 is "
                "usual)."
            )
            print(f"{total} of {total} unit id(s) answer alike: the device itself")
            return EXIT_OK
        assert code is not None  # an answer that proves nothing is an exception
        print(
            f"every unit id answers exception {code} "
            f"({EXCEPTION_WHY.get(code, 'does not prove the unit exists')}): "
            f"{_SAME_MEANS.get(code, _SAME_MEANS[4])}"
        )
        print(f"0 of {total} unit id(s) answer")
        for cause in _likely_causes(dev, answers):
            print(f"  - {cause}")
        return EXIT_FAILED
    if len(present) > _SHOWN_BEFORE_SAME:
        for a in present[_SHOWN_BEFORE_SAME:]:
            print(f"unit {a.unit}: {a.text}")
    doubtful = [a for a in answers if not a.silent and not a.proves]
    if doubtful:
        by_code: dict[int, list[int]] = {}
        for a in doubtful:
            by_code.setdefault(a.code or 0, []).append(a.unit)
        for code, units in sorted(by_code.items()):
            print(
                f"not counted: {_ids(units)} answered exception {code} "
                f"({EXCEPTION_WHY.get(code, 'does not prove the unit exists')})"
            )
    listed = ", ".join(str(a.unit) for a in present) or "none"
    print(f"{len(present)} of {total} unit id(s) answer: {listed}")
    if not present:
        for cause in _likely_causes(dev, doubtful):
            print(f"  - {cause}")
    return EXIT_OK if present else EXIT_FAILED


EXCEPTION_WHY = {
    4: "server device failure: what servers and gateways answer for a unit id they do not serve",
    10: "gateway path unavailable: the gateway has no route to that unit",
    11: "gateway target failed to respond: nothing answers behind the gateway",
}


# What one exception for every unit id says about the server.
_SAME_MEANS = {
    4: "no unit proves it exists. A gateway (or server) answers so for ids it has "
    "nothing behind; a single device may refuse the register read instead",
    10: "this is a gateway (TCP to serial) with no path to any unit: the serial bus "
    "behind it is not configured or not reachable from it",
    11: "this is a gateway (TCP to serial) and nothing answers on the bus behind it: the "
    "bus is silent, not the gateway",
}

# Why the bus behind a gateway is silent, most likely first.
_BEHIND_GATEWAY = (
    "wiring of the bus behind the gateway: RS-485 A and B swapped, no common ground, a "
    "missing terminator, or the devices on another port of the gateway",
    "line settings: the gateway's serial port must use the devices' baud rate, parity and "
    "stop bits (common: 9600 8N1, 19200 8E1); set them in the gateway's web page",
    "the gateway's mode: Modbus TCP to RTU (not ASCII, not transparent/raw TCP), and its "
    "serial timeout long enough for the devices (try 1000 ms)",
    "unit ids: the devices' ids are outside the range scanned (--from/--to), or two "
    "devices share one id and garble each other's answers",
    "the devices: powered, and set to Modbus RTU (not another protocol on the same wires)",
)


def _ids(units: list[int]) -> str:
    """1, 2, 3, 7 -> '1..3, 7'."""
    runs: list[list[int]] = []
    for u in units:
        if runs and u == runs[-1][-1] + 1:
            runs[-1].append(u)
        else:
            runs.append([u])
    text = ", ".join(f"{r[0]}..{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)
    return ("unit " if len(units) == 1 else "units ") + text


def _likely_causes(dev: Any, doubtful: list[Answer]) -> list[str]:
    """Why no unit answered, most likely first. ``doubtful``: the exceptions that came
    back (they prove the framing is right, so the port is asked only without them)."""
    codes = {a.code for a in doubtful}
    if codes & {10, 11}:  # a gateway said the bus behind it is silent
        return [*_BEHIND_GATEWAY, _timeout_cause(dev)]
    causes: list[str] = []
    if dev.protocol in ("modbus_tcp", "modbus_rtu_tcp") and not doubtful:
        spoken = _what_the_port_speaks(dev.host, dev.port, dev.timeout_ms / 1000)
        if spoken:
            causes.append(spoken)
    if dev.protocol == "modbus_rtu":
        causes += [
            f"line settings: the devices may use another baud rate or parity than "
            f"{dev.line} (common: 9600 8N1, 19200 8E1); set them in the target, e.g. "
            f"'modbus-rtu://{dev.port}?baudrate=9600&parity=N'",
            "wiring: RS-485 A and B swapped, no common ground, or a missing terminator",
        ]
    if codes == {4}:
        causes.append(
            "the register read fails on the device itself (exception 4): try another "
            "--register the device has (its manual's first register)"
        )
    if doubtful:
        causes.append(
            "the server answered, but only with exceptions that do not prove a unit: the "
            "devices behind it may be off, or on other ids"
        )
    causes += [
        "the unit ids are outside the range scanned (--from/--to; many devices use 1, "
        "some 0 or 255)",
        _timeout_cause(dev),
    ]
    return causes


def _timeout_cause(dev: Any) -> str:
    return (
        f"the devices answer slower than --timeout-ms {dev.timeout_ms} (radio links and "
        "busy gateways: try 1000)"
    )


def _what_the_port_speaks(host: str, port: int, timeout: float) -> str | None:
    """Ask the port in both framings (Modbus TCP's MBAP, then RTU with its CRC) and say
    what answered, when it is not what was scanned."""
    mbap = bytes.fromhex("456700000006010300000001")  # tid 0x4567, unit 1, read 1 reg
    rtu = bytes.fromhex("010300000001") + _crc(bytes.fromhex("010300000001"))
    first = _exchange(host, port, mbap, timeout)
    if first is None:
        return f"nothing accepts connections on {host} port {port} any more"
    if first[:2] == mbap[:2] and len(first) >= 8:
        return (
            f"{host} port {port} answers Modbus TCP (MBAP) framing: scan it as "
            f"modbus-tcp://{_where(host, port)}"
        )
    if first.startswith(b"HTTP") or first.startswith(b"<"):
        return f"{host} port {port} speaks HTTP, not Modbus: a web interface? (Modbus is often 502)"
    if first.startswith(b"SSH-"):
        return f"{host} port {port} is an SSH server, not Modbus"
    second = _exchange(host, port, rtu, timeout)
    if second and len(second) >= 5 and second[0] == 1 and _crc(second[:-2]) == second[-2:]:
        return (
            f"{host} port {port} answers RTU framing (a serial device server): scan it as "
            f"modbus-rtu-tcp://{_where(host, port)}"
        )
    if first:
        return f"{host} port {port} answers with bytes that are not Modbus: {first[:16].hex(' ')}"
    return None


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _exchange(host: str, port: int, data: bytes, timeout: float) -> bytes | None:
    """Send ``data`` on a fresh connection and return what comes back within
    ``timeout`` (b"" for nothing); None if the connection fails."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(data)
            try:
                return sock.recv(256)
            except TimeoutError:
                return b""
    except OSError:
        return None


def _crc(data: bytes) -> bytes:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")
