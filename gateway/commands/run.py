"""`edgegw run`: the daemon."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import EXIT_BAD_INPUT, EXIT_FAILED, Subparsers, add_command, fail


def register(sub: Subparsers) -> None:
    s = add_command(sub, "run", "run the gateway daemon", "edgegw run -c /etc/edgegw/config.yaml")
    s.add_argument("-c", "--config", required=True, help="YAML config file")
    s.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    s.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Exit status (README, "Start-up refusals"): 0 after a clean stop; 2 when the start
    is refused because the config or a file must be fixed by a person (systemd does not
    restart it: RestartPreventExitStatus=2); 1 when it failed for a reason a restart may
    cure (the audit log held by another process, an I/O error)."""
    from buffer import OutboxCorrupt, OutboxError
    from security import AuditLogBusy, KeyFileError
    from security.keyring import IdentityRefused

    from ..daemon import StartRefused, run_async, serve, setup_logging
    from ..early_stop import remember_signals

    remember_signals()  # again, in case main() was entered another way than the CLI
    setup_logging(args.log_level)
    cfg = getattr(args, "checked_config", None) or load_checked_or_exit(args.config)
    try:
        run_async(serve(cfg, Path(args.config)))
    except StartRefused as exc:
        # A missing driver, file or model: restarting cannot fix it; nothing was written.
        raise refused(exc.problems, args.config) from None
    except (IdentityRefused, KeyFileError, OutboxCorrupt) as exc:
        # A key that is not ours or cannot be used, an outbox that is not one: a person
        # must restore or move the file (the message says which and how; docs/security.md).
        raise fail(f"refusing to start: {exc}", EXIT_BAD_INPUT) from None
    except PermissionError as exc:
        # one the checks before the start could not foresee: still a person's to fix
        from ..permissions import explain_permission

        why = explain_permission(exc, service_dir=cfg.state_dir)
        raise fail(f"refusing to start: {why}", EXIT_BAD_INPUT) from None
    except (IsADirectoryError, NotADirectoryError) as exc:
        # a folder where a file must be (status.json made a folder), or the other way
        # round: the checks before the start name the outbox's; `edgegw doctor` the rest
        path = exc.filename2 or exc.filename
        what = "a folder where" if isinstance(exc, IsADirectoryError) else "a file on the way to"
        raise fail(
            f"refusing to start: {path}: {what} a file edgegw writes; move it away "
            "(`edgegw doctor` checks every file in the state directory)",
            EXIT_BAD_INPUT,
        ) from None
    except (OutboxError, AuditLogBusy, OSError) as exc:
        # The audit log held by another process, an outbox or state file that failed to
        # open or write: what was started is stopped (Daemon._abort_start), and systemd
        # tries again after RestartSec, which is what cures these.
        raise fail(f"start failed: {exc}", EXIT_FAILED) from None
    return 0


def load_checked_or_exit(path: str) -> Any:
    """The config as the daemon runs on it (plain objects), validated and checked in a
    child process (gateway/configload.py: the daemon never imports pydantic). A config
    error prints ``file:line:col: field: problem`` lines; a failed check (a file, a
    driver, a model) says the start is refused; both exit 2. A check that could not run
    exits 1 (a restart may cure it)."""
    from ..configload import CheckCrashed, StartChecksFailed, load_checked
    from ..plainconfig import ConfigError

    try:
        return load_checked(path)
    except StartChecksFailed as exc:
        raise refused(exc.lines, path) from None
    except CheckCrashed as exc:  # not the config's fault: systemd tries again
        raise fail("start failed: " + "\n".join(exc.lines), EXIT_FAILED) from None
    except ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None


def refused(problems: list[str], path: str) -> SystemExit:
    """What a refused start prints (exit 2): each problem, and that `validate` says the
    same."""
    first, *more = problems
    return fail(
        f"refusing to start: {first}"
        + "".join(f"\n  {m}" for m in more)
        + f"\n(`edgegw validate {path}` shows the same)",
        EXIT_BAD_INPUT,
    )
