"""`edgegw validate`: check a config and print the compiled read plan."""

from __future__ import annotations

import argparse
import sys

from ..diskroom import outbox_room
from . import Subparsers, add_command, fail, load_or_exit


def register(sub: Subparsers) -> None:
    s = add_command(
        sub,
        "validate",
        "check a config file and print the compiled read plan",
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
    cfg = load_or_exit(path)
    total = 0
    print(
        f"{path}: OK — gateway {cfg.gateway.id}, {len(cfg.devices)} device(s), "
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
    room = outbox_room(cfg.outbox_path, cfg.outbox.min_free_mib)
    if (problem := room.problem()) is not None:
        print(f"{path}: error: {problem}", file=sys.stderr)
        return 1
    return 0
