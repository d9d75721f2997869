"""`edgegw simulate`: serve simulated devices for every device of a config."""

from __future__ import annotations

import argparse

from . import Subparsers, add_command, load_or_exit


def register(sub: Subparsers) -> None:
    s = add_command(
        sub,
        "simulate",
        "serve simulated devices for every device of a config",
        "edgegw simulate -c demo.yaml",
    )
    s.add_argument("-c", "--config", required=True, help="YAML config file")
    s.add_argument(
        "--update-interval",
        type=float,
        default=0.1,
        help="seconds between value updates (default 0.1)",
    )
    s.add_argument(
        "--modbus-server",
        choices=("pymodbus", "fast"),
        default="pymodbus",
        help="Modbus TCP server: pymodbus's own (default), or a lean one that answers "
        "the same in a fraction of the CPU (benchmarks: the simulator is not the limit)",
    )
    s.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..simulate import simulate

    return simulate(load_or_exit(args.config), args.update_interval, args.modbus_server)
