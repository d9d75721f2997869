"""The `edgegw` command. Each sub-command lives in ``gateway/commands/<name>.py``, and
its help ends with an example.

Exit status: 0 success, 1 failure at run time, 2 bad input (config, arguments).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from . import __version__


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every sub-command, or with ``only`` of that one (what it imports is
    all the process loads: `edgegw run` stays free of the tools' imports)."""
    p = argparse.ArgumentParser(
        prog="edgegw",
        description="Industrial edge gateway: polls PLCs, signs the data, stores it until "
        "the platform has it, and forwards it over MQTT.",
    )
    p.add_argument("--version", action="version", version=f"edgegw {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from .commands import COMMANDS  # here: `run` takes its signals over before this import

    for name in COMMANDS if only not in COMMANDS else (only,):
        importlib.import_module(f".commands.{name.replace('-', '_')}", __package__).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    first = (sys.argv[1:] if argv is None else argv)[:1]
    if first == ["run"]:
        from .early_stop import remember_signals

        remember_signals()  # before the imports: a SIGTERM while starting is not fatal
    args = build_parser(only=first[0] if first else None).parse_args(argv)
    try:
        from .permissions import state_files_keep_owner

        state_dir = _state_dir_as_root(args)
        if state_dir is None:
            return int(args.func(args) or 0)
        with state_files_keep_owner(state_dir):
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


def _state_dir_as_root(args: argparse.Namespace) -> Path | None:
    """Run as root, the state directory the command works on (from -c CONFIG, or keys'
    --state-dir): what it creates there goes to the directory's owner afterwards."""
    if os.geteuid() != 0:
        return None
    if args.command == "keys" and getattr(args, "state_dir", None):
        return Path(args.state_dir)
    path = getattr(args, "config", None) or getattr(args, "config_opt", None)
    if isinstance(path, str) and args.command == "run":
        # validated (and checked) in a child process, kept for `run` itself
        from .commands.run import load_checked_or_exit

        args.checked_config = load_checked_or_exit(path)
        return Path(args.checked_config.state_dir)
    if isinstance(path, str) and args.command != "demo":
        from .config import ConfigError, load_config

        try:
            return load_config(path).state_dir
        except (ConfigError, OSError):
            return None  # the command itself says what is wrong with it
    if args.command == "keys":
        from .commands.keys import DEFAULT_STATE_DIR

        return Path(DEFAULT_STATE_DIR)
    return None


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
