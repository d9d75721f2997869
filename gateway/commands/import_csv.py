"""`edgegw import-csv`: a spreadsheet register map (CSV) -> a device file for a config's
``devices_dir`` (default), or a complete config (``--as config``).

The columns, their aliases and the type words are documented in drivers/modbus/README.md
("Register maps from spreadsheets"). Every problem of every row is reported as
``FILE:LINE: column: problem``, and the device is validated exactly as ``edgegw
validate`` will, so its output loads as is.

Exit status: 0 written, 1 the output cannot be written, 2 bad input (the CSV or the
options).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import EXIT_BAD_INPUT, EXIT_OK, Subparsers, add_command, fail

_PROTOCOLS = ("modbus_tcp", "modbus_rtu", "modbus_rtu_tcp")


def register(sub: Subparsers) -> None:
    s = add_command(
        sub,
        "import-csv",
        "turn a CSV register map into a device file for devices_dir, or a whole config",
        "edgegw import-csv meter.csv --name meter-7 --host 192.168.0.20 --unit 7 "
        "--set order=CDAB -o /etc/edgegw/devices.d/meter-7.yaml\n"
        "  edgegw import-csv 'EM-7 map.csv' --host ::1 --slugify --as config --gateway-id gw-7 "
        "-o gw.yaml",
    )
    s.add_argument("csv", type=Path, help="the register map: a header row, one row per tag")
    s.add_argument("-o", "--output", type=Path, metavar="FILE", help="write here, not stdout")
    s.add_argument("--protocol", default="modbus_tcp", choices=_PROTOCOLS)
    s.add_argument("--name", help="device name (default: the file name)")
    s.add_argument("--host", help="device or serial device server address (TCP protocols)")
    s.add_argument("--port", help="TCP port, or the serial port for modbus_rtu")
    s.add_argument("--unit", type=int, help="unit id")
    s.add_argument("--poll-ms", type=int, help="the device's poll interval")
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other device field, e.g. --set max_gap=0 --set order=CDAB (repeatable)",
    )
    s.add_argument(
        "--slugify",
        action="store_true",
        help="turn tag names with spaces or other characters into accepted ones "
        "('Active Power' -> active_power)",
    )
    s.add_argument(
        "--as",
        dest="form",
        choices=("dropin", "config"),
        default="dropin",
        help="dropin (default): a device file for a config's devices_dir; config: a "
        "complete config file",
    )
    s.add_argument(
        "--gateway-id", default="gw-01", help="with --as config: the gateway's id (default gw-01)"
    )
    s.add_argument(
        "--state-dir",
        default="/var/lib/edgegw",
        help="with --as config: the state directory (default /var/lib/edgegw)",
    )
    s.set_defaults(func=main)


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    import re

    import yaml

    name = args.name or re.sub(r"[^A-Za-z0-9_.-]+", "-", args.csv.stem).strip("-") or "device"
    fields: dict[str, Any] = {"protocol": args.protocol, "name": name}
    if args.host is not None:
        fields["host"] = args.host
    if args.port is not None:
        fields["port"] = args.port if args.protocol == "modbus_rtu" else _int(args.port, "--port")
    for key, value in (("unit_id", args.unit), ("poll_interval_ms", args.poll_ms)):
        if value is not None:
            fields[key] = value
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise fail(f"import-csv: --set {item!r}: write KEY=VALUE, e.g. --set max_gap=0")
        if key.strip() == "tags":
            raise fail("import-csv: --set tags=...: the tags come from the CSV")
        fields[key.strip()] = yaml.safe_load(value) if value.strip() else None
    if args.protocol == "modbus_rtu" and "port" not in fields:
        raise fail("import-csv: --port is required for modbus_rtu (e.g. --port /dev/ttyUSB0)")
    if args.protocol != "modbus_rtu" and "host" not in fields:
        raise fail(f"import-csv: --host is required for {args.protocol}")
    return fields


def _check_config(text: str, args: argparse.Namespace) -> str | None:
    """The complete config loads as the gateway will load it (e.g. a bad --gateway-id)."""
    import tempfile

    from ..config import ConfigError, load_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            load_config(path)
        except ConfigError as exc:
            return "; ".join(line.split(": ", 1)[-1] for line in exc.lines)
    return None


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise fail(f"import-csv: {flag} {text!r} is not a number") from None


def main(args: argparse.Namespace) -> int:
    from drivers.modbus.csvmap import build_device, device_yaml, read_register_map

    from ..permissions import explain_permission

    fields = _fields(args)
    try:
        rmap = read_register_map(args.csv, slugify=args.slugify)
    except PermissionError as exc:
        raise fail(f"import-csv: {explain_permission(exc, args.csv)}") from None
    except OSError as exc:
        raise fail(f"import-csv: cannot read {args.csv}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise fail(
            f"import-csv: {args.csv} is not UTF-8 text (byte {exc.start}); save as CSV UTF-8"
        ) from None
    for note in rmap.skipped:
        print(note, file=sys.stderr)
    _, problems = build_device(rmap, fields)  # every problem of every row, in one run
    if problems:
        for p in problems:
            if p.line:
                print(p, file=sys.stderr)
            elif p.column == "device":
                print(f"edgegw: import-csv: {p.message}", file=sys.stderr)
            else:
                flag = {"host": "--host", "port": "--port", "unit_id": "--unit", "name": "--name"}
                print(
                    f"edgegw: import-csv: {flag.get(p.column, '--set ' + p.column)}: {p.message}",
                    file=sys.stderr,
                )
        print(f"{args.csv}: {len(problems)} problem(s); nothing written", file=sys.stderr)
        return EXIT_BAD_INPUT
    comment = [
        f"generated by edgegw import-csv from {args.csv.name}: {len(rmap.tags)} tag(s)",
        "edit the spreadsheet and run it again rather than editing this file",
    ]
    gateway = None
    if args.form == "config":
        gateway = {"id": args.gateway_id, "state_dir": args.state_dir}
        comment.append("a complete config: add uplink (the broker) before `edgegw run`")
    else:
        comment.append("a device file: put it in the folder the config's devices_dir names")
    text = device_yaml(fields, rmap, comment=comment, gateway=gateway)
    if gateway is not None:
        problem = _check_config(text, args)
        if problem:
            raise fail(f"import-csv: --as config: {problem}")
    if args.output:
        try:
            args.output.write_text(text, encoding="utf-8")
        except PermissionError as exc:
            raise fail(f"import-csv: {explain_permission(exc, args.output)}", 1) from None
        except OSError as exc:
            why = exc.strerror or exc
            raise fail(f"import-csv: cannot write {args.output}: {why}", 1) from None
        print(
            f"wrote {args.output}: device {fields['name']}, {len(rmap.tags)} tag(s)",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(text)
    return EXIT_OK
