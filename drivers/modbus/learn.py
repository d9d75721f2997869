"""What the driver learned about a device's address map, kept per device on disk.

Many devices answer Modbus exception 2 (illegal data address; some use 3, illegal data
value) to any read that touches an unmapped register. A request that bridges such a
hole, or reads one address past the end of the map, then fails as a whole. The driver
splits it (``plan.split_request``, bisection) until every readable tag is read again and
the refused addresses are isolated; each split is a *barrier* here, and the plan is
compiled again with them (``plan.compile_plan(device, barriers)``).

What was learned is saved as a small JSON file (one per device, in the gateway's state
directory) and loaded at the next start, so a restart does not pay the splitting again.
It is tied to a fingerprint of what the device's memory map depends on (protocol,
address, unit id, tag positions): when that changes, the file is ignored and learning
starts over. ``edgegw read --relearn`` deletes it (and tells a running daemon to reload);
a driver never writes its old facts over a file that changed since it last read or wrote
it (the file's stamp: inode, mtime, size): it forgets them and learns again instead.
The daemon's driver writes off the event loop (``save_off_loop``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .plan import Barrier
from .types import Table

if TYPE_CHECKING:
    from .config import ModbusDevice

__all__ = ["LEARNED_DIR", "Learned", "fingerprint", "learned_file"]

log = logging.getLogger("edgegw.modbus")

LEARNED_DIR = "modbus-learned"
"""Folder of the learned files under the state directory."""
_VERSION = 1

Stamp = tuple[int, int, int]
"""A file's inode, mtime (ns) and size: a different one means another writer."""


def _stamp(path: Path) -> Stamp | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def learned_file(state_dir: Path, device_name: str) -> Path:
    return state_dir / LEARNED_DIR / f"{device_name}.json"


def fingerprint(device: ModbusDevice) -> str:
    """A hash of what the device's map depends on: where it is, its unit id and where its
    tags are (not their names, types' decoding, scales or intervals)."""
    where = [device.protocol, getattr(device, "host", None), getattr(device, "port", None)]
    tags = sorted((t.table.value, t.address or 0, t.registers) for t in device.tags)
    text = json.dumps([where, device.unit_id, tags], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(slots=True)
class Learned:
    """Barriers and refused tags of one device; ``version`` grows at each change."""

    device: str
    fingerprint: str
    barriers: set[Barrier] = field(default_factory=set)
    refused: dict[str, tuple[int, Barrier]] = field(default_factory=dict)
    """Tag name -> (exception code, its span): tags the device refuses even read alone.
    Their spans are barriers too, so no request of several tags reads them."""
    path: Path | None = None
    read_only: bool = False
    version: int = 0
    disk: Stamp | None = None
    """The file as this record last read or wrote it (None: there was none)."""

    @classmethod
    def load(cls, device: ModbusDevice, path: Path | None, *, read_only: bool = False) -> Learned:
        """What was learned before, or an empty record (no file, another config, or a file
        that cannot be read: logged, and learning starts over)."""
        own = cls(device.name, fingerprint(device), path=path, read_only=read_only)
        if path is None:
            return own
        try:
            own.disk = _stamp(path)
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return own
        except (OSError, ValueError) as exc:
            log.warning(
                "modbus %s: cannot use what was learned in %s (%s); starting without it",
                device.name,
                path,
                exc,
            )
            return own
        if not isinstance(data, dict) or data.get("version") != _VERSION:
            log.warning(
                "modbus %s: ignoring %s (unknown format); learning again", device.name, path
            )
            return own
        if data.get("fingerprint") != own.fingerprint:
            log.info(
                "modbus %s: the device's config changed; forgetting what was learned (%s)",
                device.name,
                path,
            )
            return own
        try:
            own.barriers = {(Table(t), int(lo), int(hi)) for t, lo, hi in data["barriers"]}
            own.refused = {
                str(k): (int(code), (Table(t), int(lo), int(hi)))
                for k, (code, t, lo, hi) in data.get("refused", {}).items()
            }
            own.barriers |= {span for _, span in own.refused.values()}
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("modbus %s: ignoring %s (%s); learning again", device.name, path, exc)
            own.barriers, own.refused = set(), {}
        return own

    def add_barrier(self, barrier: Barrier) -> None:
        if barrier not in self.barriers:
            self.barriers.add(barrier)
            self.version += 1

    def add_refused(self, tag: str, code: int, span: Barrier) -> None:
        if self.refused.get(tag) != (code, span):
            self.refused[tag] = (code, span)
            self.barriers.add(span)
            self.version += 1

    def forget(self) -> None:
        self.barriers.clear()
        self.refused.clear()
        self.version += 1

    def save(self) -> None:
        """Write what was learned (see ``_write``), here and now."""
        if self.path is not None and not self.read_only:
            self._settle(self._write(self._data()))

    async def save_off_loop(self) -> bool:
        """``save`` with the file written in another thread: the driver's loop does not
        wait for the disk. The data is taken on the loop, so the thread reads no set
        the loop is changing. False: forgotten instead (the file changed meanwhile)."""
        if self.path is None or self.read_only:
            return True
        return self._settle(await asyncio.to_thread(self._write, self._data()))

    def _data(self) -> dict[str, Any]:
        spans = {span for _, span in self.refused.values()}
        return {
            "version": _VERSION,
            "device": self.device,
            "fingerprint": self.fingerprint,
            "barriers": sorted([t.value, lo, hi] for t, lo, hi in self.barriers - spans),
            "refused": {
                tag: [code, t.value, lo, hi]
                for tag, (code, (t, lo, hi)) in sorted(self.refused.items())
            },
        }

    def _write(self, data: dict[str, Any]) -> tuple[bool, Stamp | None]:
        """Write atomically (a temporary file, then a rename), unless the file changed
        since this record last read or wrote it (``edgegw read --relearn`` deleted it):
        then nothing is written and (False, its stamp) comes back. An error is logged, not
        raised: a device keeps being read, only a restart would learn again."""
        assert self.path is not None
        tmp = self.path.with_suffix(".tmp")
        try:
            now = _stamp(self.path)
            if now != self.disk:
                return False, now
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
            return True, _stamp(self.path)
        except OSError as exc:
            log.error(
                "modbus %s: cannot save what was learned to %s: %s", self.device, self.path, exc
            )
            return True, self.disk

    def _settle(self, outcome: tuple[bool, Stamp | None]) -> bool:
        written, stamp = outcome
        if not written:
            log.info(
                "modbus %s: what was learned was forgotten meanwhile (%s changed: edgegw read "
                "--relearn); learning again",
                self.device,
                self.path,
            )
            self.forget()
        self.disk = stamp
        return written

    def lines(self) -> list[str]:
        """Human lines, e.g. ``holding 10..11: refused by the device, not read``."""
        out = []
        spans = {span for _, span in self.refused.values()}
        for table, lo, hi in sorted(self.barriers - spans, key=lambda b: (b[0].value, b[1], b[2])):
            if hi > lo:
                span = f"{lo}" if hi - lo == 1 else f"{lo}..{hi - 1}"
                out.append(f"{table.value} {span}: refused by the device, not bridged")
            else:
                out.append(f"{table.value} {lo - 1}|{lo}: not read in one request")
        for tag, (code, (table, lo, hi)) in sorted(self.refused.items()):
            span = f"{lo}" if hi - lo == 1 else f"{lo}..{hi - 1}"
            out.append(
                f"tag {tag} ({table.value} {span}): refused by the device even alone "
                f"(exception {code})"
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"barriers": len(self.barriers), "refused": sorted(self.refused)}
