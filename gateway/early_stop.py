"""SIGTERM while `edgegw run` is still importing and loading: remembered, not fatal.

systemd may stop a unit that is still starting. Until the event loop takes the signals
over (daemon.serve), a SIGTERM would kill the process by default; instead it is noted here
and the daemon starts and stops cleanly (exit 0). Installed first thing by the CLI for
`run`, before the heavy imports.
"""

from __future__ import annotations

import signal

_requested: list[int] = []


def remember_signals() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: _requested.append(signum))


def stop_requested() -> bool:
    return bool(_requested)
