"""The `edgegw` command. Each sub-command lives in ``gateway/commands/<name>.py``, and
its help ends with an example.

Exit status: 0 success, 1 failure at run time, 2 bad input (config, arguments).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgegw",
        description="Industrial edge gateway: polls PLCs, signs the data, stores it until "
        "the platform has it, and forwards it over MQTT.",
    )
    p.add_argument("--version", action="version", version=f"edgegw {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f".commands.{name.replace('-', '_')}", __package__).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
