"""A signed ``config`` command: validate, apply through the reload path, watch, roll back.

1. The document is written beside the config file (so relative paths mean the same) and
   loaded exactly as ``edgegw validate`` loads a file; any error refuses the command and
   nothing changes. So does a change of what needs a restart (gateway id, state dir,
   outbox path).
2. The file is replaced atomically (the old one is kept as ``<file>.previous``) and the
   daemon reloads it as on SIGHUP: only changed devices restart, nothing buffered is lost.
3. For ``commands.config_health_s`` the gateway watches: every task alive, the uplink up,
   and every device the push added or changed answering with good data. At the end, if
   any of that fails, the previous file comes back and is reloaded: ``rolled_back``.

A crash during the watch leaves the new file in place (the result then says
``interrupted``); the previous one is beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..configload import load_checked
from ..plainconfig import ConfigError
from ..reloadplan import plan as reload_plan
from .wire import Command

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("edgegw.downlink")

WATCH_STEP_S = 0.5


class Reloadable(Protocol):
    """What the daemon offers a config push (gateway/daemon.py)."""

    cfg: Config
    config_path: Path | None
    devices: dict[str, Any]  # name -> DeviceState (up, last_ok_ns)
    tasks: dict[str, asyncio.Task[Any]]
    sup: Any  # .health: name -> TaskHealth (.failing, .last_error)
    forwarder: Any  # .stats.link_up

    async def reload(self) -> bool: ...


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def problems(daemon: Reloadable, watched: set[str], since_ns: int) -> list[str]:
    """What is wrong with the gateway under the new config (empty: healthy)."""
    out = [f"task {n} has ended" for n, t in sorted(daemon.tasks.items()) if t.done()]
    # Supervised tasks restart rather than end: one that keeps failing is as bad.
    health = getattr(getattr(daemon, "sup", None), "health", {})
    out += [
        f"task {n} keeps failing: {h.last_error}"
        for n, h in sorted(health.items())
        if h.failing and n in daemon.tasks
    ]
    fwd = daemon.forwarder
    if fwd is not None and not fwd.stats.link_up:
        out.append(
            "the uplink is down" + (f": {fwd.stats.last_error}" if fwd.stats.last_error else "")
        )
    for name in sorted(watched):
        st = daemon.devices.get(name)
        if st is None:
            out.append(f"device {name} did not start")
        elif not st.up or st.last_ok_ns is None or st.last_ok_ns < since_ns:
            why = f": {st.last_error}" if st.last_error else ""
            out.append(f"device {name} has not answered with good data since the push{why}")
    return out


async def push_config(
    daemon: Reloadable, cmd: Command, health_s: float
) -> tuple[str, str | None, str | None]:
    """Apply the pushed config (see the module docstring): (outcome, reason, detail)."""
    path = daemon.config_path
    if path is None:
        return "refused", "not_supported", "the daemon was started without a config file"
    text: str = cmd.args["config"]
    candidate = path.with_name(f".{path.name}.pushed-{cmd.id}")
    try:
        mode = path.stat().st_mode & 0o777
        _write_atomically(candidate, text.encode(), mode)
    except OSError as exc:
        return (
            "refused",
            "config_not_writable",
            (
                f"cannot write beside {path} ({exc.strerror}): the config folder must be "
                "writable by the edgegw user for remote configuration"
            ),
        )
    try:
        try:
            # exactly as `edgegw validate` (and the daemon's own start) judges a file, in
            # a child process (gateway/configload.py)
            new = await asyncio.to_thread(load_checked, candidate)
        except ConfigError as exc:
            lines = [line.replace(str(candidate), "pushed config") for line in exc.lines]
            return "refused", "invalid_config", "\n".join(lines[:20])
        old = daemon.cfg
        if (new.gateway.id, new.state_dir, new.outbox_path) != (
            old.gateway.id,
            old.state_dir,
            old.outbox_path,
        ):
            return (
                "refused",
                "needs_restart",
                ("gateway.id, gateway.state_dir and outbox.path cannot change by a push"),
            )
        before = {d.name: d for d in old.devices}
        watched = {d.name for d in new.devices if before.get(d.name) != d}
        previous = path.read_bytes()
        _write_atomically(path.with_name(path.name + ".previous"), previous, mode)
        os.replace(candidate, path)
    finally:
        with contextlib.suppress(OSError):
            candidate.unlink()
    since = time.time_ns()
    log.warning("config version %s pushed by command %s: applying", cmd.args["version"], cmd.id)
    restart = reload_plan(old, new).restart
    try:
        applied = await daemon.reload()
    except Exception as exc:  # a failure half-way: the previous config comes back
        log.exception("applying pushed config version %s failed", cmd.args["version"])
        applied, why = False, f"{type(exc).__name__}: {exc}"
    else:
        why = "the daemon refused the new config"
    if not applied:
        await _restore(daemon, path, previous, mode)
        return "rolled_back", "reload_failed", f"{why}; the previous one is back"[:1000]
    deadline = time.monotonic() + health_s
    found: list[str] = []
    while time.monotonic() < deadline:
        await asyncio.sleep(WATCH_STEP_S)
        found = [p for p in problems(daemon, set(), since) if p.startswith("task")]
        if found:  # a dead task will not come back: no need to wait longer
            break
    found = found or problems(daemon, watched, since)
    if found:
        log.error(
            "pushed config version %s is unhealthy: %s; rolling back",
            cmd.args["version"],
            "; ".join(found),
        )
        await _restore(daemon, path, previous, mode)
        return "rolled_back", "unhealthy", "; ".join(found)[:1000]
    later = f"; {', '.join(restart)} take(s) effect at the next restart" if restart else ""
    return "done", None, f"config version {cmd.args['version']} is in force{later}"


async def _restore(daemon: Reloadable, path: Path, previous: bytes, mode: int) -> None:
    _write_atomically(path, previous, mode)
    try:
        ok = await daemon.reload()
    except Exception:
        log.exception("reloading the previous config %s", path)
        ok = False
    if not ok:
        log.error("the previous config %s could not be reloaded either; restart edgegw", path)
