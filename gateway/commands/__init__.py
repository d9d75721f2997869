"""One module per `edgegw` sub-command, each with ``register(sub)``.

A new command is a new module here plus its name in ``COMMANDS``; cli.py does not change.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Literal, overload

if TYPE_CHECKING:
    from ..config import Config, Sources

COMMANDS: tuple[str, ...] = (
    "run",
    "validate",
    "receive",
    "demo",
    "simulate",
    "browse",
    "keys",
    "audit",
    "doctor",
    "status",
    "read",
    "scan",
    "import-csv",
    "command",
)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

Subparsers = Any  # argparse's _SubParsersAction is private


def add_command(sub: Subparsers, name: str, help_: str, example: str) -> argparse.ArgumentParser:
    """A sub-command whose help ends with an example."""
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_,
        description=help_,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return p


@overload
def load_or_exit(path: str) -> Config: ...
@overload
def load_or_exit(path: str, sourced: Literal[True]) -> tuple[Config, Sources]: ...


def load_or_exit(path: str, sourced: bool = False) -> Any:
    """Load a config; on error print ``file:line:col: field: problem`` lines, exit 2.
    ``sourced``: also return where each part was written."""
    from ..config import ConfigError, load_config_sourced

    try:
        loaded = load_config_sourced(path)
        return loaded if sourced else loaded[0]
    except ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None


def fail(message: str, code: int = EXIT_BAD_INPUT) -> SystemExit:
    """Print ``edgegw: message`` to stderr; raise the returned SystemExit."""
    print(f"edgegw: {message}", file=sys.stderr)
    return SystemExit(code)
