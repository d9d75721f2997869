"""`edgegw validate`: check a config and print the compiled read plan.

Beyond the syntax it checks what the files can tell (gateway/preflight.py): the drivers
and libraries the config needs are installed, every file it names is there and readable,
models match their pins, the outbox's folder can be written and its filesystem can keep
outbox.min_free_mib free; overlapping tags are warned about. Exit 0 (warnings shown on
stderr) with "OK" and the plans on stdout, or 2 on any error, before anything is printed on
stdout: the same checks make `edgegw run` refuse to start (all but the free-disk reserve,
which the daemon replaces by a tenth of the filesystem, saying so).
"""

from __future__ import annotations

import argparse
import sys

from . import EXIT_BAD_INPUT, Subparsers, add_command, fail, load_or_exit


def register(sub: Subparsers) -> None:
    s = add_command(
        sub,
        "validate",
        "check a config file (syntax, files it names, drivers and models it needs, "
        "overlapping tags) and print the compiled read plan",
        "edgegw validate /etc/edgegw/config.yaml",
    )
    s.add_argument("config", nargs="?", help="YAML config file")
    s.add_argument("-c", dest="config_opt", metavar="CONFIG", help="same, as an option")
    s.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..registry import describe_device, summarize_device

    path = args.config or args.config_opt
    if not path:
        raise fail("validate: give a config file")
    from ..preflight import ERROR, check, check_room

    cfg, sources = load_or_exit(path, sourced=True)
    findings = check(cfg, sources)
    stop = sum(f.level == ERROR for f in findings)
    findings += check_room(cfg, sources)  # an error, though the daemon copes (diskroom.py)
    for f in findings:
        print(f, file=sys.stderr)
    bad = sum(f.level == ERROR for f in findings)
    if bad:
        print(
            f"{path}: {bad} problem(s)"
            + (f", {stop} of them would stop `edgegw run`" if stop else ""),
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    total = 0
    warned = f" ({len(findings)} warning(s) above)" if findings else ""
    print(
        f"{path}: OK{warned} — gateway {cfg.gateway.id}, {len(cfg.devices)} device(s), "
        f"uplink [{cfg.uplink.host}]:{cfg.uplink.port}, topic {cfg.topic('telemetry')}"
    )
    for dev in cfg.devices:
        lines = describe_device(dev, cfg.state_dir)
        learned = [ln for ln in lines if ln.startswith("learned: ")]
        lines = lines[: len(lines) - len(learned)]
        total += len(lines)
        print(
            f"\ndevice {dev.name} ({dev.protocol}, every {dev.poll_interval_ms} ms): "
            f"{len(dev.tags)} tags in {len(lines)} request(s) per cycle"
        )
        for line in lines:
            print(f"  {line}")
        if learned:
            print(
                f"  what the gateway learned about the device ({len(learned)}; forget it: "
                f"edgegw read -c {path} --device {dev.name} --relearn):"
            )
            for line in learned:
                print(f"    {line.removeprefix('learned: ')}")
        if summary := summarize_device(dev, cfg.state_dir):
            print(f"  ({summary})")
    print(f"\n{total} request(s) per cycle in all")
    return 0
