"""`edgegw demo`: the whole chain on one machine."""

from __future__ import annotations

import argparse

from . import Subparsers, add_command


def register(sub: Subparsers) -> None:
    s = add_command(
        sub,
        "demo",
        "simulated PLCs → gateway → MQTT over IPv6 → verifying receiver",
        "edgegw demo --duration 20 --json",
    )
    s.add_argument(
        "--duration",
        type=float,
        default=40.0,
        help="seconds of polling (anomalies are injected from ~20 s on)",
    )
    s.add_argument("--state-dir", help="keep keys, outbox, config and logs here")
    s.add_argument("--json", action="store_true", help="end with a JSON summary line")
    s.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(duration=args.duration, state_dir=args.state_dir, json_out=args.json)
