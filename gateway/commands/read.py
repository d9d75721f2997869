"""`edgegw read`: one-shot read of a device, or of one tag, for field technicians.

Prints a table of tag, raw registers, decoded value, unit and quality (with the reason
of a bad one). Works for every protocol of the registry: the device is built, connected
and read once exactly as the daemon would. Modbus shows the raw registers (or bits) of
each tag; other protocols show ``-`` there.

Exit status: 0 every tag good, 1 a tag bad or the device unreachable, 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, Subparsers, add_command, fail, load_or_exit

EXAMPLES = (
    "edgegw read -c /etc/edgegw/config.yaml --device pump1\n"
    "  edgegw read -c /etc/edgegw/config.yaml --tag pump1/flow\n"
    "  edgegw read modbus-tcp://[::1]:5020 --unit 1 --register 40001 --type float32 --order CDAB\n"
    "  edgegw read 'modbus-rtu:///dev/ttyUSB0?baudrate=9600&parity=N' --unit 3 --register 30001 "
    "--count 4"
)

# Tag options of an ad-hoc read: flag -> tag field.
_TAG_FLAGS = {
    "register": "register",
    "address": "address",
    "table": "table",
    "type": "type",
    "order": "order",
    "length": "length",
    "bit": "bit",
    "scale": "scale",
    "offset": "offset",
    "eng_unit": "unit",
}
# Config fields -> the flag that sets them, for error messages.
_FLAG_OF = {
    "unit_id": "--unit",
    "timeout_ms": "--timeout-ms",
    "unit": "--eng-unit",
    "byte_order": "--order",
    "word_order": "--order",
}


def register(sub: Subparsers) -> None:
    s = add_command(
        sub,
        "read",
        "read a device or one tag once: tag, raw registers, value, unit, quality",
        EXAMPLES,
    )
    s.add_argument("target", nargs="?", help="ad-hoc device: modbus-tcp://HOST[:PORT], ...")
    s.add_argument("-c", "--config", help="YAML config file: read its devices")
    s.add_argument("--device", metavar="NAME", help="with -c: only this device")
    s.add_argument("--tag", metavar="NAME", help="with -c: only this tag (TAG or DEVICE/TAG)")
    adhoc = s.add_argument_group("ad-hoc target (Modbus)")
    adhoc.add_argument("--unit", type=int, default=1, help="unit id (default 1)")
    adhoc.add_argument("--register", help="register number, e.g. 40001 (holding), 30001 (input)")
    adhoc.add_argument("--address", type=int, help="0-based address, instead of --register")
    adhoc.add_argument("--table", help="holding (default), input, coil, discrete; with --address")
    adhoc.add_argument("--type", help="uint16 (default), int16, ..., float32, string, bool")
    adhoc.add_argument("--order", help="AB/BA, ABCD/CDAB/BADC/DCBA, ...")
    adhoc.add_argument("--length", type=int, help="characters, for --type string")
    adhoc.add_argument("--bit", type=int, help="bit 0..15 of the register, for --type bool")
    adhoc.add_argument("--scale", type=float, help="value = raw * scale + offset")
    adhoc.add_argument("--offset", type=float, help="added after scaling")
    adhoc.add_argument("--eng-unit", metavar="UNIT", help="engineering unit to print")
    adhoc.add_argument("--count", type=int, default=1, help="this many values in a row")
    adhoc.add_argument("--timeout-ms", type=int, default=1000, help="per request (default 1000)")
    s.add_argument("--json", action="store_true", help="one JSON object per tag instead")
    s.add_argument(
        "--relearn",
        action="store_true",
        help="with -c: forget what the gateway learned about the devices' maps (addresses "
        "they refuse) and learn again; a running daemon is told to reload (SIGHUP)",
    )
    s.set_defaults(func=main)


@dataclass
class Outcome:
    device: Any
    error: str | None = None
    readings: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    elapsed_ms: float = 0.0
    requests: int = 0
    learned: list[str] = field(default_factory=list)
    """What the driver knows about addresses the device refuses (Modbus)."""


def main(args: argparse.Namespace) -> int:
    if args.target and args.config:
        raise fail("read: give a target or -c CONFIG, not both")
    state_dir: Path | None
    if args.target:
        if args.relearn:
            raise fail("read: --relearn goes with -c CONFIG (an ad-hoc read learns nothing)")
        devices, state_dir = [_adhoc(args)], None
    elif args.config:
        cfg = load_or_exit(args.config)
        devices, state_dir = _select(cfg, args.device, args.tag), cfg.state_dir
        if args.relearn:
            _relearn(devices, state_dir)
    else:
        raise fail("read: give a target (e.g. modbus-tcp://HOST:502) or -c CONFIG")
    from .scan import quiet_libraries

    quiet_libraries()  # a one-shot read says what failed itself
    outcomes = asyncio.run(_read_all(devices, state_dir))
    bad = 0
    for out in outcomes:
        bad += _print_json(out) if args.json else _print_table(out)
    return EXIT_FAILED if bad else EXIT_OK


def _relearn(devices: list[Any], state_dir: Path) -> None:
    """Delete what was learned, and tell a running daemon to reload so it forgets too
    (it would go on with what it knows, and never writes it back over the deletion:
    drivers/modbus/learn.py)."""
    from gateway.registry import forget_learned

    for dev in devices:
        try:
            forgot = forget_learned(dev, state_dir)
        except OSError as exc:
            raise fail(
                f"read: --relearn: cannot delete what was learned about {dev.name}: "
                f"{exc.strerror or exc} (run as the gateway's user or root)"
            ) from None
        if forgot:
            print(f"{dev.name}: forgot what was learned about its map", file=sys.stderr)
    _tell_the_daemon(state_dir)


def _tell_the_daemon(state_dir: Path) -> None:
    import os
    import signal

    from gateway.status import running_daemon

    pid = running_daemon(state_dir)
    if pid is None:
        print(f"no daemon runs on {state_dir}: it starts without it", file=sys.stderr)
        return
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return  # it stopped meanwhile: it starts without it
    except PermissionError:
        print(
            f"the daemon (pid {pid}) runs as another user and still knows it: reload it "
            "so it learns again: sudo systemctl reload edgegw",
            file=sys.stderr,
        )
        return
    print(
        f"told the running daemon (pid {pid}) to reload: it forgets too and learns again",
        file=sys.stderr,
    )


# -- choosing what to read ------------------------------------------------------------


def _select(cfg: Any, device: str | None, tag: str | None) -> list[Any]:
    devices = list(cfg.devices)
    names = [d.name for d in devices]
    if tag and "/" in tag:
        device_from_tag, tag = tag.split("/", 1)
        if device and device != device_from_tag:
            raise fail(f"read: --tag {device_from_tag}/{tag} is not on --device {device}")
        device = device_from_tag
    if device is not None:
        if device not in names:
            raise fail(f"read: no device {device!r} in the config; devices: {', '.join(names)}")
        devices = [d for d in devices if d.name == device]
    if tag is None:
        return devices
    found = [(d, t) for d in devices for t in d.tags if t.name == tag]
    if not found:
        where = f"device {device!r}" if device else "any device"
        raise fail(f"read: no tag {tag!r} on {where}")
    if len(found) > 1:
        both = ", ".join(f"{d.name}/{tag}" for d, _ in found)
        raise fail(f"read: tag {tag!r} is on several devices ({both}); write DEVICE/TAG")
    dev, one = found[0]
    return [dev.model_copy(update={"tags": [one]})]


def _adhoc(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from drivers.modbus.config import ModbusTag, validate_device
    from drivers.modbus.notation import register_number
    from drivers.modbus.target import parse_target

    try:
        fields = parse_target(args.target)
    except ValueError as exc:
        raise fail(f"read: {exc}") from None
    options = {f: getattr(args, a) for a, f in _TAG_FLAGS.items() if getattr(args, a) is not None}
    if "register" not in options and "address" not in options:
        raise fail("read: give --register (e.g. 40001) or --address (0-based)")
    if not 1 <= args.count <= 2000:
        raise fail(f"read: --count {args.count} is out of range; accepted: 1..2000")
    try:
        first = ModbusTag.model_validate({"name": "value", **options})
        assert first.address is not None
        options.pop("register", None)
        options["table"], start, step = first.table.value, first.address, first.registers
        tags = [
            {**options, "name": register_number(first.table, a), "address": a}
            for a in range(start, min(start + args.count * step, 65536), step)
        ]
        limits = {"max_gap": 0, "max_registers_per_request": 125}
        device = {**fields, "name": "read", "unit_id": args.unit, "tags": tags, **limits}
        device["timeout_ms"] = args.timeout_ms
        return validate_device(device)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = [p for p in err["loc"] if isinstance(p, str) and not p.startswith("modbus")]
            name = loc[-1] if loc else "target"
            flag = _FLAG_OF.get(name) or (
                f"--{name.replace('_', '-')}"
                if name in (*_TAG_FLAGS, *_TAG_FLAGS.values())
                else f"target ({name})"
            )
            print(f"edgegw: read: {flag}: {err['msg']}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None


# -- reading --------------------------------------------------------------------------


async def _read_all(devices: list[Any], state_dir: Path | None) -> list[Outcome]:
    return list(await asyncio.gather(*(_read_one(d, state_dir) for d in devices)))


async def _read_one(dev: Any, state_dir: Path | None) -> Outcome:
    from drivers.contract import ConnectError
    from gateway.registry import build_device

    out = Outcome(dev)
    # What the daemon learned about the map is used, not written: the daemon owns it.
    rt = build_device(dev, state_dir, read_only=True)
    driver = rt.driver
    out.requests = len(getattr(rt.plan, "requests", ()))
    started = time.monotonic()
    try:
        await driver.connect()
        read_raw = getattr(driver, "read_raw", None)
        if read_raw is not None:
            batch, out.raw = await read_raw(rt.plan)
        else:
            batch = await driver.read(rt.plan)
    except ConnectError as exc:
        out.error = str(exc)
        return out
    finally:
        out.elapsed_ms = (time.monotonic() - started) * 1e3
        await driver.close()
    out.readings = {r[0]: r for r in batch.readings}
    stats = getattr(driver, "stats", None)
    if stats is not None:
        out.requests = stats.requests
        out.learned = list(getattr(stats, "learned", ()))  # Modbus only
    return out


# -- printing -------------------------------------------------------------------------


def _raw_text(values: Any) -> str:
    if not values:
        return "-"
    if isinstance(values, bytes | bytearray):
        return values.hex(" ")
    if all(isinstance(v, bool) for v in values):
        return " ".join("1" if v else "0" for v in values)
    return " ".join(f"0x{v:04X}" for v in values)


def _value_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _rows(out: Outcome) -> list[tuple[str, str, str, str, str, str]]:
    from drivers.contract import Quality

    prefix = out.device.name + "/"
    rows = []
    for tag in out.device.tags:
        full = prefix + tag.name
        r = out.readings.get(full)
        unit = getattr(tag, "unit", None) or ""
        if r is None:
            rows.append((tag.name, "-", "-", unit, "BAD_COMM", out.error or "not read"))
            continue
        quality = Quality(r[3]).name
        reason = (r[4] if len(r) > 4 else None) or ""  # OPC UA may add a 6th element
        rows.append(
            (tag.name, _raw_text(out.raw.get(full)), _value_text(r[2]), unit, quality, reason)
        )
    return rows


def _print_table(out: Outcome) -> int:
    dev = out.device
    where = getattr(dev, "host", None) or getattr(dev, "endpoint", None) or getattr(dev, "port", "")
    head = f"device {dev.name} ({dev.protocol} {where}"
    head += f", unit {dev.unit_id})" if hasattr(dev, "unit_id") else ")"
    if out.error:
        print(f"{head}: UNREACHABLE: {out.error}")
    else:
        print(
            f"{head}: {len(dev.tags)} tag(s) in {out.requests} request(s), {out.elapsed_ms:.1f} ms"
        )
    rows = _rows(out)
    titles = ("tag", "raw", "value", "unit", "quality")
    widths = [max(len(t), *(len(r[i]) for r in rows)) for i, t in enumerate(titles)]
    print("  " + "  ".join(t.ljust(w) for t, w in zip(titles, widths, strict=True)).rstrip())
    for r in rows:
        cells = "  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True))
        print(f"  {cells}  {r[5]}".rstrip())
    bad = sum(1 for r in rows if r[4] != "GOOD")
    for line in out.learned:
        print(f"  learned: {line}")
    print(f"  {len(rows) - bad} good, {bad} bad\n" if rows else "")
    return bad + (1 if out.error else 0)


def _print_json(out: Outcome) -> int:
    bad = 0
    for tag, _raw, _value, unit, quality, reason in _rows(out):
        r = out.readings.get(f"{out.device.name}/{tag}")
        bad += quality != "GOOD"
        record = {
            "device": out.device.name,
            "tag": tag,
            "raw": out.raw.get(f"{out.device.name}/{tag}"),
            "value": r[2] if r else None,
            "unit": unit or None,
            "quality": quality,
            "reason": reason or None,
        }
        print(json.dumps(record, default=str))
    return bad + (1 if out.error else 0)
