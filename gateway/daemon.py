"""`edgegw run`: pollers → pipeline → outbox → forwarder, and a clean stop.

Stop order matters for "nothing lost": stop polling, seal what the pipeline holds,
then keep sending the backlog for up to ``shutdown_drain_s``. Whatever is left stays
committed in the outbox and goes first after the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from dataclasses import asdict
from typing import Any

from security import DeviceKey
from security.tls import client_context

from . import __version__
from .config import Config
from .forwarder import Forwarder
from .outbox_thread import OutboxThread
from .pipeline import Pipeline
from .poller import DeviceState, poll_device
from .registry import build_device
from .status import write_status

log = logging.getLogger("edgegw.daemon")


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.devices: dict[str, DeviceState] = {}
        self.started_ns = time.time_ns()
        self.pipeline: Pipeline | None = None
        self.forwarder: Forwarder | None = None
        self.outbox: OutboxThread | None = None
        self.boot = 0

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.cfg
        state_dir = cfg.state_dir
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        key, created = DeviceKey.load_or_create(state_dir)
        log.info("device key %s (kid %s)", "created" if created else "loaded", key.kid.hex())
        self.outbox = OutboxThread(
            cfg.outbox_path,
            cfg.gateway.durability,
            max_bytes=int(cfg.outbox.max_mib * 2**20),
            policy=cfg.outbox.when_full,
            min_free_bytes=int(cfg.outbox.min_free_mib * 2**20),
        )
        ob = await self.outbox.open()
        self.boot = await self.outbox.run(ob.next_boot)
        stats = await self.outbox.run(ob.stats)
        log.info(
            "edgegw %s starting: gateway %s, boot %d, outbox %d unsent messages (last seq %d)",
            __version__,
            cfg.gateway.id,
            self.boot,
            stats.rows,
            stats.last_seq,
        )

        t = cfg.uplink.tls
        tls = client_context(t.ca_file, t.cert_file, t.key_file) if t else None
        self.forwarder = fwd = Forwarder(
            cfg.uplink, cfg.uplink.client_id or f"edgegw-{cfg.gateway.id}", self.outbox, tls
        )
        self.pipeline = pipe = Pipeline(
            gw_id=cfg.gateway.id,
            boot=self.boot,
            topic=cfg.topic("telemetry"),
            notice_topic=cfg.topic("notice"),
            key=key,
            outbox=self.outbox,
            flush_window_s=cfg.gateway.flush_window_ms / 1000,
            max_points=cfg.gateway.max_batch_points,
            on_sealed=fwd.wake,
        )
        await pipe.notify_drops()  # e.g. seqs skipped after an unclean stop
        pipe_task = asyncio.create_task(pipe.run(), name="pipeline")
        fwd_task = asyncio.create_task(fwd.run(), name="forwarder")
        status_task = asyncio.create_task(self._status_loop(), name="status")
        polls = []
        for dev in cfg.devices:
            rt = build_device(dev)
            st = self.devices[dev.name] = DeviceState(dev.name)
            polls.append(
                asyncio.create_task(
                    poll_device(
                        rt.driver, rt.plan, rt.tag_names, rt.interval_s, pipe.put, st, stop
                    ),
                    name=f"poll:{dev.name}",
                )
            )
        log.info("polling %d devices", len(polls))

        await stop.wait()
        log.info("stopping: polling ends, sealing the last window, draining the outbox")
        await _cancel_all(polls)
        log.debug("stop: polling ended")
        await pipe.close()
        await pipe_task
        log.debug("stop: last window sealed")
        drained = await fwd.drain(cfg.gateway.shutdown_drain_s)
        left = await self.outbox.run(ob.stats)
        if drained:
            log.info("outbox drained")
        else:
            log.warning(
                "stopped with %d messages unsent; they are kept and sent after restart", left.rows
            )
        for t in (fwd_task, status_task):
            t.cancel()
        await asyncio.gather(fwd_task, status_task, return_exceptions=True)
        write_status(state_dir, await self.snapshot(final=True))
        await self.outbox.close()

    async def snapshot(self, final: bool = False) -> dict[str, Any]:
        assert self.outbox and self.outbox.outbox and self.pipeline and self.forwarder
        ob = await self.outbox.run(self.outbox.outbox.stats)
        return {
            "gateway": self.cfg.gateway.id,
            "version": __version__,
            "pid": os.getpid(),
            "boot": self.boot,
            "final": final,
            "time_ns": time.time_ns(),
            "started_ns": self.started_ns,
            "pipeline": asdict(self.pipeline.stats),
            "uplink": asdict(self.forwarder.stats),
            "outbox": asdict(ob),
            "devices": {n: asdict(s) for n, s in self.devices.items()},
        }

    async def _status_loop(self) -> None:
        while True:
            try:
                write_status(self.cfg.state_dir, await self.snapshot())
            except OSError as exc:
                log.warning("cannot write status: %s", exc)
            await asyncio.sleep(1.0)


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel until every task has ended: a cancellation can be lost in a race on
    Python 3.11 (see poller.poll_device)."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
    for t in tasks:  # surface anything other than cancellation in the log
        if not t.cancelled() and t.exception() is not None:
            log.error("task %s failed: %r", t.get_name(), t.exception())


def run_async(coro: Any) -> Any:
    """Run on uvloop where it is installed (25–30% less CPU per request), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def serve(cfg: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
    await Daemon(cfg).run(stop)


def dump_tasks() -> None:
    """SIGUSR1: log where every task is waiting (for a daemon that seems stuck)."""
    for t in asyncio.all_tasks():
        frames = t.get_stack(limit=8)
        where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(frames))
        log.warning("task %s: %s", t.get_name(), where or "(not started)")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pymodbus logs every failed connect at ERROR; our poller reports state changes once.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    with contextlib.suppress(Exception):
        logging.captureWarnings(True)
