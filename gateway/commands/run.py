"""`edgegw run`: the daemon."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import EXIT_BAD_INPUT, EXIT_FAILED, Subparsers, add_command, fail, load_or_exit


def register(sub: Subparsers) -> None:
    s = add_command(sub, "run", "run the gateway daemon", "edgegw run -c /etc/edgegw/config.yaml")
    s.add_argument("-c", "--config", required=True, help="YAML config file")
    s.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    s.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from buffer import OutboxError
    from security import AuditLogBusy, KeyFileError
    from security.keyring import IdentityRefused

    from ..daemon import StartRefused, run_async, serve, setup_logging
    from ..early_stop import remember_signals

    remember_signals()  # again, in case main() was entered another way than the CLI
    cfg, sources = load_or_exit(args.config, sourced=True)
    setup_logging(args.log_level)
    try:
        run_async(serve(cfg, Path(args.config), sources))
    except StartRefused as exc:
        # A missing driver, file or model: restarting cannot fix it. Exit 2, which
        # systemd does not restart (RestartPreventExitStatus=2); nothing was written.
        first, *more = exc.problems
        raise fail(
            f"refusing to start: {first}"
            + "".join(f"\n  {m}" for m in more)
            + f"\n(`edgegw validate {args.config}` shows the same)",
            EXIT_BAD_INPUT,
        ) from None
    except IdentityRefused as exc:
        # Restarting cannot fix a key that is not ours: exit 2, which systemd does not
        # restart (RestartPreventExitStatus=2); a person must (see docs/security.md).
        raise fail(f"refusing to start: {exc}", EXIT_BAD_INPUT) from None
    except (OutboxError, KeyFileError, AuditLogBusy) as exc:
        # The state cannot be used as it is: say what and how to fix it, no traceback.
        raise fail(str(exc), EXIT_FAILED) from None
    return 0
