"""The `edgegw` command. Each sub-command lives in ``gateway/commands/<name>.py``, and
its help ends with an example.

Exit status: 0 success, 1 failure at run time, 2 bad input (config, arguments).
"""

from __future__ import annotations

import argparse
import importlib
import os
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
    except BrokenPipeError:
        # `edgegw validate ... | head`: the reader is gone; nothing more to say to it.
        _quiet_stdout()
        return 141
    except PermissionError as exc:
        # Never a traceback: the path, who owns it, who we are, and the fix.
        from .permissions import explain_permission

        print(f"edgegw: {explain_permission(exc)}", file=sys.stderr)
        return 1


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush to the closed pipe
    does not print a second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
