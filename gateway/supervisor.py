"""One supervisor for every long-running task of the daemon.

A task that raises is logged at once (its name, the exception and, the first time a
given error occurs, the traceback), then started again after a backoff with jitter; the
backoff starts over once the task has run ``stable_s`` without failing. A task that
returns has ended on purpose (e.g. the pipeline after ``close()``) and is not restarted.
Cancellation is never caught: stopping a task is the caller's decision.

What a task had taken when it failed is the task's own business: each one keeps it where
its next start finds it (the pipeline's held window, the forwarder's outbox rows, the
inference queue), and ``on_failure`` lets the caller add what only it knows (a device's
bad-quality readings saying why).

What the supervisor knows per task (:class:`TaskHealth`) goes into the status snapshot:
a task failing again and again is visible in ``edgegw status``, the metrics
(``edgegw_task_restarts_total``) and ``/healthz``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .backoff import Backoff

log = logging.getLogger("edgegw.supervisor")

FAILING_AFTER = 3
"""Failures in a row (each within ``stable_s`` of its start) that make a task *failing*."""


@dataclass(slots=True)
class TaskHealth:
    """What the supervisor knows of one task (copied into the status snapshot)."""

    restarts: int = 0
    """Times the task failed and was started again, since the daemon started."""
    failures: int = 0
    """Failures in a row: reset once the task runs ``stable_s`` without failing."""
    last_error: str | None = None
    last_failure_ns: int | None = None
    ended: bool = False
    """The task returned or was stopped (not restarted)."""

    @property
    def failing(self) -> bool:
        return self.failures >= FAILING_AFTER


OnFailure = Callable[[str, BaseException], Awaitable[None] | None]


class Supervisor:
    """Starts named tasks and restarts the ones that fail. Runs on the event loop."""

    def __init__(
        self,
        *,
        on_failure: Callable[[str, BaseException], None] | None = None,
        first_s: float = 0.5,
        cap_s: float = 30.0,
        stable_s: float = 60.0,
    ) -> None:
        self.on_failure = on_failure  # every failure, e.g. an audit record
        self.first_s, self.cap_s, self.stable_s = first_s, cap_s, stable_s
        self.health: dict[str, TaskHealth] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._logged: dict[str, str] = {}  # name -> error whose traceback was logged

    def start(
        self,
        name: str,
        factory: Callable[[], Awaitable[None]],
        *,
        on_failure: OnFailure | None = None,
    ) -> asyncio.Task[None]:
        """Run ``factory()`` as task ``name``; again after each failure. ``on_failure``
        (the task's own) runs after the failure is logged, before the backoff."""
        old = self.tasks.get(name)
        if old is not None and not old.done():
            raise RuntimeError(f"task {name} is already running")
        # A name started again (a device changed by a reload) keeps its counters.
        h = self.health.setdefault(name, TaskHealth())
        h.ended = False
        task = asyncio.create_task(self._guard(name, h, factory, on_failure), name=name)
        self.tasks[name] = task
        return task

    def forget(self, name: str) -> None:
        """A task that is gone for good (a device removed by a reload)."""
        self.tasks.pop(name, None)
        self.health.pop(name, None)
        self._logged.pop(name, None)

    async def _guard(
        self,
        name: str,
        h: TaskHealth,
        factory: Callable[[], Awaitable[None]],
        on_failure: OnFailure | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(first=self.first_s, cap=self.cap_s)
        try:
            while True:
                started = loop.time()
                try:
                    await factory()
                    return
                except Exception as exc:
                    if loop.time() - started >= self.stable_s:
                        backoff.reset()
                        h.failures = 0
                    delay = backoff.next()
                    self._failed(name, h, exc, delay)
                    if on_failure is not None:
                        try:
                            res = on_failure(name, exc)
                            if res is not None:
                                await res
                        except Exception:
                            log.exception("task %s: handling its failure failed too", name)
                    await asyncio.sleep(delay)
        finally:
            h.ended = True

    def _failed(self, name: str, h: TaskHealth, exc: BaseException, delay: float) -> None:
        h.restarts += 1
        h.failures += 1
        h.last_error = f"{type(exc).__name__}: {exc}"
        h.last_failure_ns = time.time_ns()
        # The traceback once per distinct error; its repetitions as one line each.
        first = self._logged.get(name) != h.last_error
        self._logged[name] = h.last_error
        log.error(
            "task %s failed: %s; restarting in %.1f s (restart %d%s)",
            name,
            h.last_error,
            delay,
            h.restarts,
            ", failing repeatedly" if h.failing else "",
            exc_info=exc if first else None,
        )
        if self.on_failure is not None:
            try:
                self.on_failure(name, exc)
            except Exception:
                log.exception("task %s: reporting its failure failed", name)

    def failing(self) -> dict[str, TaskHealth]:
        return {n: h for n, h in self.health.items() if h.failing}

    async def stop(self, names: list[str] | None = None) -> None:
        """Cancel these tasks (all by default) until each has ended, logging anything
        other than cancellation they ended with."""
        chosen = list(self.tasks) if names is None else names
        await cancel_all([self.tasks[n] for n in chosen if n in self.tasks])


async def cancel_all(tasks: list[asyncio.Task[None]] | list[asyncio.Task[object]]) -> None:
    """Cancel until every task has ended: a cancellation can be lost in a race on
    Python 3.11 (CPython gh-86296, see poller.poll_device). Whatever a task ended with,
    other than its cancellation, is logged with the task's name."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
    for t in tasks:
        if not t.cancelled() and t.exception() is not None:
            exc = t.exception()
            log.error("task %s ended with %r", t.get_name(), exc, exc_info=exc)
