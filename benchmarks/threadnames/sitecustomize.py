"""Measurement aid for benchmarks (not part of edgegw): give each Python thread its name
in the kernel too (``prctl(PR_SET_NAME)``, 15 bytes), so ``/proc/PID/task/TID/comm`` and
``top -H`` tell the threads apart. Python 3.11 does not do it itself. Loaded only when a
benchmark puts this folder on ``PYTHONPATH`` (``e2e.py --threads``)."""

import contextlib
import ctypes
import threading

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_NAME = 15
_inner = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]


def _named(self: threading.Thread) -> None:
    with contextlib.suppress(Exception):  # a name is a nicety: never stop a thread for it
        _libc.prctl(_PR_SET_NAME, self.name.encode()[:15], 0, 0, 0)
    _inner(self)


threading.Thread._bootstrap_inner = _named  # type: ignore[attr-defined]
