"""One real protocol exchange with a device, for `edgegw doctor`: a TCP port that accepts a
connection proves little (an S7 config pointed at a Modbus port, a wrong slot, a node id
that does not exist all connect). The device is built exactly as the daemon builds it and
reads once:

- Modbus: the first planned request (its tags);
- OPC UA: a session, and every configured node read once (a missing node is named);
- S7: a connection with the configured rack/slot (or TSAPs) and the first planned read.

What the driver learned about a device is used, never written (the daemon owns it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivers.contract import ConnectError, Quality

from .registry import build_device


@dataclass(frozen=True, slots=True)
class Probe:
    ok: bool
    detail: str
    fix: str = ""


def first_request_tags(dev: Any) -> list[Any]:
    """The tags the daemon reads in its first request to ``dev`` (all of them for OPC UA,
    whose reads are one service call per server limit)."""
    from .registry import _package

    if dev.protocol == "opcua":
        return list(dev.tags)
    plan = _package(dev.protocol).compile_plan(dev)
    if not plan.requests:
        return list(dev.tags)
    first = plan.requests[0]
    if dev.protocol == "s7":
        names = {n for item in first.items for n in plan.ranges[item.range].tags}
    else:
        names = set(first.tags)
    short = {n.split("/", 1)[-1] for n in names}
    return [t for t in dev.tags if t.name in short or f"{dev.name}/{t.name}" in names]


_FIXES = {
    "s7": "is it an S7 PLC (ISO-on-TCP, port 102)? are rack and slot right (S7-300: rack 0, "
    "slot 2; S7-1200/1500: rack 0, slot 1; S7-400: see the hardware configuration)? on an "
    "S7-1200/1500, allow PUT/GET access and use non-optimized DBs",
    "opcua": "check the endpoint URL and the security settings against the server (edgegw "
    "browse lists what it offers)",
}


def _modbus_fix(dev: Any) -> str:
    return (
        f"is port {dev.port} a Modbus TCP server, and unit id {dev.unit_id} right? "
        f"(edgegw scan -c CONFIG finds the unit ids that answer)"
        if dev.protocol != "modbus_rtu"
        else f"check the wiring (A/B, termination), the line settings ({dev.line}) against "
        f"the device's, and unit id {dev.unit_id} (edgegw scan -c CONFIG finds the unit ids "
        "that answer)"
    )


def _open_fix(dev: Any) -> str:
    """A serial port that does not open: the port, not the device."""
    return (
        f"check that {dev.port} is the adapter's port (ls -l /dev/serial/by-id/), that the "
        "service user may open it (group dialout), and that no other program holds it "
        f"(fuser {dev.port})"
    )


def _reading_text(r: Any) -> str:
    why = (r[4] if len(r) > 4 else "") or ""
    return f"{r[0].split('/', 1)[-1]}: {Quality(r[3]).name} {why}".rstrip()


async def probe(dev: Any, state_dir: Path | None, timeout_s: float) -> Probe:
    """Connect and read once; never raises for a device fault."""
    tags = first_request_tags(dev)
    one = dev.model_copy(update={"tags": tags})
    rt = build_device(one, state_dir, read_only=True)
    driver = rt.driver
    started = time.monotonic()
    try:
        await asyncio.wait_for(driver.connect(), timeout_s)
        batch = await asyncio.wait_for(driver.read(rt.plan), timeout_s)
    except (ConnectError, TimeoutError) as exc:
        what = str(exc) or f"no answer in {timeout_s:g} s"
        fix = _modbus_fix(dev) if dev.protocol.startswith("modbus") else _FIXES[dev.protocol]
        if dev.protocol == "modbus_rtu":  # a serial port: no TCP, and opening it can fail
            if isinstance(exc, ConnectError):
                fix = _open_fix(dev)
            return Probe(False, f"the Modbus RTU exchange failed: {what}", fix)
        return Probe(False, f"TCP connects, but the {dev.protocol} exchange failed: {what}", fix)
    finally:
        # closing a half-open link: nothing more to learn from it
        with contextlib.suppress(Exception):
            await asyncio.wait_for(driver.close(), timeout_s)
    ms = (time.monotonic() - started) * 1e3
    bad = [r for r in batch.readings if r[3] != Quality.GOOD]
    if bad:
        shown = "; ".join(_reading_text(r) for r in bad[:3])
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        fix = (
            "fix the node ids in the config (edgegw browse shows the server's address space)"
            if dev.protocol == "opcua"
            else "check these addresses against the device's map (edgegw read -c CONFIG "
            f"--device {dev.name} shows every tag)"
        )
        if any(r[3] == Quality.BAD_COMM for r in bad):  # the link, not an address
            fix = _modbus_fix(dev) if dev.protocol.startswith("modbus") else _FIXES[dev.protocol]
        return Probe(False, f"{len(bad)} of {len(batch.readings)} tag(s) bad: {shown}{more}", fix)
    what = {
        "opcua": f"session opened, {len(tags)} node(s) read",
        "s7": f"connected (rack/slot accepted), first request read: {len(tags)} tag(s)",
    }.get(dev.protocol, f"first request read: {len(tags)} tag(s)")
    return Probe(True, f"{what} in {ms:.0f} ms")
