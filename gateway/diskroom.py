"""Is ``outbox.min_free_mib`` possible on the filesystem that holds the outbox?

A free-disk reserve as large as the outbox's own partition (the default 64 MiB on a
small partition the README suggests for the outbox) would refuse every window while the
uplink is healthy. ``validate`` and ``doctor`` say so as an error; the daemon says so at
start and keeps a reserve of a tenth of the filesystem instead, so data keeps flowing.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

MIB = 2**20
MAX_SHARE = 0.5  # a reserve of half the filesystem or more leaves no useful room
FALLBACK_SHARE = 0.1  # what the daemon keeps instead


@dataclass(frozen=True, slots=True)
class Room:
    where: Path  # the existing directory the figures are for
    total: int
    free: int
    reserve: int  # outbox.min_free_mib, in bytes

    @property
    def too_large(self) -> bool:
        return self.reserve >= self.total * MAX_SHARE

    @property
    def fallback(self) -> int:
        """The reserve the daemon keeps when the configured one is too large."""
        return int(self.total * FALLBACK_SHARE)

    def problem(self) -> str | None:
        """Why the configured reserve cannot work here, and how to fix it; or None."""
        if not self.too_large:
            return None
        return (
            f"outbox.min_free_mib: {self.reserve / MIB:g} MiB is "
            f"{'more than' if self.reserve >= self.total else 'at least half of'} the whole "
            f"filesystem that holds the outbox ({self.total / MIB:.1f} MiB at {self.where}): "
            f"every new window would be evicted or refused; set outbox.min_free_mib to at "
            f"most {max(1, int(self.fallback / MIB))} (a tenth of it), or 0 on a partition "
            f"of the outbox's own"
        )

    def describe(self) -> str:
        return (
            f"{self.free / MIB:.1f} MiB free of {self.total / MIB:.1f} MiB at {self.where} "
            f"(outbox.min_free_mib {self.reserve / MIB:g})"
        )


def outbox_room(outbox_path: Path, min_free_mib: float) -> Room:
    """The figures of the filesystem the outbox is (or will be) on."""
    where = outbox_path.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    usage = shutil.disk_usage(where)
    return Room(where, usage.total, usage.free, int(min_free_mib * MIB))
