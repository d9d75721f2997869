"""`edgegw scan`: find the unit ids that answer on a Modbus bus or host.

Each unit id of the range gets one read of one register (by default holding 40001). A
unit that answers with data, or with a Modbus exception (illegal address, busy, ...)
responds: it is there, it only does not have that register. Exceptions 10 and 11 come
from a TCP gateway saying the unit behind it did not answer, so they do not count.
Progress goes to stderr, results to stdout.

Exit status: 0 some unit answered, 1 none did (or the link failed), 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import re
import sys
import time
from typing import Any

from . import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, Subparsers, add_command, fail

_GATEWAY_SILENT = (10, 11)  # gateway path unavailable, target device failed to respond


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
    return asyncio.run(_scan(dev, args.first, args.last))


def _classify(reading: tuple[Any, ...], raw: Any) -> str | None:
    """What a unit's answer says, or None if it did not answer."""
    if reading[3] == 0:
        shown = " ".join(
            f"0x{v:04X}" if not isinstance(v, bool) else str(int(v)) for v in raw or ()
        )
        return f"answers ({shown})"
    m = re.match(r"modbus exception (\d+) \(([^)]*)\)", reading[4] if len(reading) > 4 else "")
    if m and int(m.group(1)) not in _GATEWAY_SILENT:
        return f"answers with exception {m.group(1)} ({m.group(2)})"
    return None


async def _scan(dev: Any, first: int, last: int) -> int:
    from drivers.contract import ConnectError
    from drivers.modbus import compile_plan
    from drivers.modbus.driver import Driver

    plan = compile_plan(dev)
    driver = Driver(dev)
    driver.check_after_silence = False  # one driver, many unit ids: silence is expected
    found: list[int] = []
    total = last - first + 1
    tty = sys.stderr.isatty()
    last_note = 0.0
    try:
        for i, unit in enumerate(range(first, last + 1), 1):
            if not driver.connected:
                try:
                    await driver.connect()
                except ConnectError as exc:
                    print(f"edgegw: scan: {exc}", file=sys.stderr)
                    return EXIT_FAILED
            batch, raw = await driver.read_raw(dataclasses.replace(plan, unit_id=unit))
            (reading,) = batch.readings
            what = _classify(reading, raw.get(reading[0]))
            if what:
                found.append(unit)
                print(f"unit {unit}: {what}", flush=True)
            now = time.monotonic()
            if tty or now - last_note >= 2 or i == total:
                last_note = now
                end = "\r" if tty and i < total else "\n"
                print(
                    f"scanned {i}/{total} unit ids, {len(found)} answer", end=end, file=sys.stderr
                )
    finally:
        await driver.close()
    listed = ", ".join(map(str, found)) or "none"
    print(f"{len(found)} of {total} unit id(s) answer: {listed}")
    return EXIT_OK if found else EXIT_FAILED
