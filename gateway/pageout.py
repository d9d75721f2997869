"""Let go of the library pages that only the start-up touched.

Loading a library runs its initialisers: onnxruntime registers thousands of kernels,
asyncua and numpy load their extension modules, cryptography's Rust library and OpenSSL
set up every algorithm. Those pages stay mapped, counted in the daemon's RSS, though a
running gateway never touches most of them again. Once the daemon is ready it drops
its mappings of them (``madvise(MADV_DONTNEED)``): the pages stay in the page cache
(clean, and the kernel reclaims them when memory is short, as it could before), and what
the running daemon does use is mapped again on first touch (a minor fault) and stays.
The RSS measured afterwards is the daemon's working set; its anonymous memory (the heap,
which no kernel can reclaim without swap) does not change.

Safe by construction: only mappings of files that are neither writable nor hold any
private copy of a page (``Anonymous: 0 kB`` and ``Private_Dirty: 0 kB`` in
``/proc/self/smaps``: no relocated or otherwise written page, which ``MADV_DONTNEED``
would throw away) and that have resident pages (``Rss``) are advised; such a mapping
reads back exactly what the file holds. Never under an emulator (qemu-user): there the
program's mappings are qemu's, which turns some private file mappings into anonymous
ones filled by reads, and its ``/proc/self/smaps`` is qemu's account of them; releasing
pages there killed the armhf gateway ("stack smashing detected": its stack-protector
guard lives in a read-only page). ``EDGEGW_PAGEOUT=0`` turns it off.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

log = logging.getLogger("edgegw.pageout")

MADV_DONTNEED = 4  # linux/mman-common.h


def clean_file_mappings(smaps: str = "/proc/self/smaps") -> list[tuple[int, int, str]]:
    """(start, length, path) of this process's mappings of files that are not writable,
    have resident pages and hold no private (anonymous or dirty) page."""
    out: list[tuple[int, int, str]] = []
    current: tuple[int, int, str] | None = None
    counts: dict[str, str] = {}

    def close() -> None:
        # A count missing from the file is taken as "not clean": never guess.
        if (
            current is not None
            and counts.get("Rss:", "0") != "0"
            and counts.get("Anonymous:") == "0"
            and counts.get("Private_Dirty:") == "0"
        ):
            out.append(current)

    with open(smaps, encoding="ascii", errors="replace") as f:
        for line in f:
            head = line.split(maxsplit=5)
            if not head:
                continue
            if "-" in head[0] and not head[0].endswith(":"):  # a mapping's first line
                close()
                current, counts = None, {}
                if len(head) < 6 or "w" in head[1] or head[4] == "0":  # inode 0: anonymous
                    continue
                path = head[5].strip()
                if not path.startswith("/") or path.endswith("(deleted)"):
                    continue
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                current = (lo, hi - lo, path)
            elif current is not None and len(head) > 1:
                counts[head[0]] = head[1]
        close()
    return out


def under_emulation() -> bool:
    """Whether this program runs under qemu-user: qemu answers ``/proc/self/exe`` with the
    emulated program but not the same link under ``/proc/self/task/TID/``, which names
    qemu itself; natively the two are one file."""
    try:
        own = os.readlink("/proc/self/exe")
        task = os.readlink(f"/proc/self/task/{threading.get_native_id()}/exe")
    except OSError:
        return True  # cannot tell: do not touch pages
    return own != task


def release_startup_pages() -> int:
    """Drop this process's mappings of clean library pages (see the module docstring);
    the bytes advised, 0 when turned off or not supported."""
    if os.environ.get("EDGEGW_PAGEOUT", "1") == "0" or not os.path.exists("/proc/self/smaps"):
        return 0
    if under_emulation():
        log.debug("running under an emulator: start-up library pages kept")
        return 0
    try:
        import ctypes

        libc: Any = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        madvise.restype = ctypes.c_int
        done = 0
        for start, length, _path in clean_file_mappings():
            if madvise(start, length, MADV_DONTNEED) == 0:
                done += length
        return done
    except (OSError, AttributeError, ValueError) as exc:  # no libc, no madvise, odd maps
        log.warning("could not release start-up library pages: %s", exc)
        return 0
