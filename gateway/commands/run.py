"""`edgegw run`: the daemon."""

from __future__ import annotations

import argparse

from . import Subparsers, add_command, load_or_exit


def register(sub: Subparsers) -> None:
    s = add_command(sub, "run", "run the gateway daemon", "edgegw run -c /etc/edgegw/config.yaml")
    s.add_argument("-c", "--config", required=True, help="YAML config file")
    s.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    s.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..daemon import run_async, serve, setup_logging

    cfg = load_or_exit(args.config)
    setup_logging(args.log_level)
    run_async(serve(cfg))
    return 0
