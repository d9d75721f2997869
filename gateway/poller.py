"""One task per device: connect with backoff, read the plan every period, hand batches on.

A dead or slow device only delays its own task. Missed periods are skipped, not
bunched up, and counted as overruns.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from drivers.contract import Batch, ConnectError, Driver, Quality, bad_readings

from .backoff import Backoff
from .histogram import Histogram
from .permissions import explain_permission

log = logging.getLogger("edgegw.poller")


_GOOD = int(Quality.GOOD)
_UNCERTAIN = int(Quality.UNCERTAIN)


@dataclass(slots=True)
class DeviceState:
    """What the status view, the metrics and the health endpoint show of one device
    (copied into the status snapshot with ``asdict`` once a second)."""

    name: str
    up: bool = False
    reads: int = 0
    errors: int = 0
    overruns: int = 0
    last_error: str | None = None
    last_latency_ms: float | None = None
    last_read_ns: int | None = None
    bad_readings: int = 0
    """Readings with a bad quality (counted on failed reads only: a read without error
    has none)."""
    last_ok_ns: int | None = None
    """When a read last brought at least one good reading."""
    latency: Histogram = field(default_factory=Histogram)
    """Duration of each read, seconds."""
    driver: Any = None
    """The driver's own counters, when it keeps some (a dataclass, e.g. Modbus
    ``LinkStats``: requests, timeouts, exceptions by code, what it learned)."""


def _driver_stats(driver: Any) -> Any:
    """The driver's counters, if it keeps them as a dataclass (copied into the snapshot)."""
    stats = getattr(driver, "stats", None)
    return stats if dataclasses.is_dataclass(stats) and not isinstance(stats, type) else None


def carry_counters(old: Any, new: Any) -> None:
    """A device restarted by a reload gets a new driver: its counters go on from the old
    driver's, where the driver's stats know how (``carry_from``)."""
    if old is not None and new is not None and type(old) is type(new):
        carry = getattr(new, "carry_from", None)
        if carry is not None:
            carry(old)


def count_read(state: DeviceState, batch: Batch, now_ns: int) -> None:
    """Count one batch: reads, bad readings, last good read (per batch, not per reading,
    unless the batch failed)."""
    state.reads += 1
    state.last_read_ns = now_ns
    if batch.error is None:
        if batch.readings:
            state.last_ok_ns = now_ns
        return
    bad = 0
    for r in batch.readings:
        if r[3] != _GOOD and r[3] != _UNCERTAIN:
            bad += 1
    state.bad_readings += bad
    if bad < len(batch.readings):
        state.last_ok_ns = now_ns


async def poll_device(
    driver: Driver,
    plan: Any,
    tag_names: list[str],
    interval_s: float,
    sink: Callable[[Batch], Awaitable[None]],
    state: DeviceState,
    stop: asyncio.Event,
) -> None:
    """Runs until ``stop`` is set or the task is cancelled; a batch handed to ``sink`` is
    never taken back.

    Both, because on Python 3.11 ``asyncio.wait_for`` (used by protocol libraries for
    each request) can swallow a cancellation that races with a response (CPython
    gh-86296); the flag, checked once a cycle, ends the loop even then.
    """
    loop = asyncio.get_running_loop()
    backoff = Backoff()
    next_t = loop.time()
    state.driver = _driver_stats(driver)
    try:
        await _loop(driver, plan, tag_names, interval_s, sink, state, loop, backoff, next_t, stop)
    finally:
        await driver.close()


async def _loop(
    driver: Driver,
    plan: Any,
    tag_names: list[str],
    interval_s: float,
    sink: Callable[[Batch], Awaitable[None]],
    state: DeviceState,
    loop: asyncio.AbstractEventLoop,
    backoff: Backoff,
    next_t: float,
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        if not driver.connected:
            if not await _connect(driver, tag_names, sink, state, backoff):
                next_t = loop.time()
                continue
            backoff.reset()
            if not state.up:
                log.info("device %s: connected", driver.name)
        t0 = loop.time()
        try:
            batch = await driver.read(plan)
        except Exception as exc:  # a driver bug: the read failed; say so, reconnect
            batch = await _read_failed(driver, tag_names, exc, state)
        took = loop.time() - t0
        state.last_latency_ms = round(took * 1e3, 3)  # µs: finer is clock noise
        state.latency.observe(took)
        count_read(state, batch, time.time_ns())
        await sink(batch)
        if batch.error:
            state.errors += 1
            if not driver.connected:
                _down(state, batch.error)
                await asyncio.sleep(backoff.next())
                next_t = loop.time()
                continue
            if batch.error != state.last_error:  # log a repeated error once, until it changes
                log.warning("device %s: %s", driver.name, batch.error)
            state.last_error = batch.error
        else:
            state.last_error = None
        state.up = True
        next_t += interval_s
        now = loop.time()
        if next_t < now:
            missed = int((now - next_t) // interval_s) + 1
            state.overruns += missed
            next_t += missed * interval_s
        await asyncio.sleep(next_t - now)


async def subscribe_device(
    driver: Any,
    plan: Any,
    tag_names: list[str],
    sink: Callable[[Batch], Awaitable[None]],
    state: DeviceState,
    stop: asyncio.Event,
) -> None:
    """For a Subscriber: connect with backoff, then let the driver push batches until its
    link drops (it raises ConnectError, having reported the tags BAD_COMM), and again."""

    async def counted(batch: Batch) -> None:
        count_read(state, batch, time.time_ns())
        state.last_error = batch.error
        await sink(batch)

    backoff = Backoff()
    state.driver = _driver_stats(driver)
    try:
        while not stop.is_set():
            if not driver.connected:
                if not await _connect(driver, tag_names, sink, state, backoff):
                    continue
                log.info("device %s: connected", driver.name)
            state.up = True
            backoff.reset()
            try:
                await driver.subscribe(plan, counted)
            except ConnectError as exc:  # the driver has reported its tags BAD_COMM
                state.errors += 1
                _down(state, str(exc))
                await driver.close()
                await asyncio.sleep(backoff.next())
    finally:
        await driver.close()


async def _connect(
    driver: Any,
    tag_names: list[str],
    sink: Callable[[Batch], Awaitable[None]],
    state: DeviceState,
    backoff: Backoff,
) -> bool:
    """Connect; on failure report the device down, send one bad batch (the platform
    learns the device is unreachable, once per attempt) and wait the backoff."""
    try:
        await driver.connect()
        return True
    except (ConnectError, PermissionError) as exc:
        # A file the driver needs that the service may not use (an OPC UA PKI made by
        # root): the device is down with the path and the fix, not a dead task.
        why = explain_permission(exc, daemon=True) if isinstance(exc, PermissionError) else str(exc)
        state.errors += 1
        _down(state, why)
        await sink(
            Batch(driver.name, bad_readings(tag_names, time.time_ns(), Quality.BAD_COMM, why), why)
        )
        await asyncio.sleep(backoff.next())
        return False


async def _read_failed(
    driver: Any, tag_names: list[str], exc: Exception, state: DeviceState
) -> Batch:
    """``read`` raised, which the contract forbids: log it (with its traceback once until
    it changes), close the link (the next cycle reconnects) and make the cycle's readings
    bad, saying why."""
    why = f"driver error: {type(exc).__name__}: {exc}"
    if why != state.last_error:
        log.error("device %s: read raised %s", driver.name, why, exc_info=exc)
    try:
        await driver.close()
    except Exception as close_exc:
        log.error("device %s: close failed too: %r", driver.name, close_exc)
    return Batch(driver.name, bad_readings(tag_names, time.time_ns(), Quality.BAD_COMM, why), why)


def failed_batch(name: str, tag_names: list[str], exc: BaseException) -> Batch:
    """The readings of a device whose task failed (see gateway.supervisor): bad, with
    the reason, so the platform sees the device is not being read and why."""
    why = f"poll task failed: {type(exc).__name__}: {exc}"
    return Batch(name, bad_readings(tag_names, time.time_ns(), Quality.BAD_COMM, why), why)


def _down(state: DeviceState, why: str) -> None:
    if state.up or state.last_error != why:
        log.warning("device %s: down: %s", state.name, why)
    state.up = False
    state.last_error = why
