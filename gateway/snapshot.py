"""The status snapshot: one typed model for its writer (``Daemon.snapshot``) and its
readers (``edgegw status``, the metrics, ``/livez`` ``/readyz`` ``/healthz``, ``doctor``,
the demo). It travels as JSON (status.json) and as the dict the metrics thread reads, so
it is a ``TypedDict``: the same keys for everyone, checked by the type checker, and a
test that builds one from a running daemon checks what the readers read.

Losses (``drops``) come from the outbox's durable per-reason totals, so they survive a
restart, every point is counted once (a refused window is one drop record, nothing
else), and whether a loss was intentional follows from its reason alone (a reload that
changes the policy does not rewrite history).
"""

from __future__ import annotations

from typing import Any, TypedDict

# Losses the configuration asked for (the byte cap under either policy) vs the ones the
# environment caused (disk full, damage, crashes, a broker that refuses a message, a key
# that does not sign).
INTENTIONAL = frozenset({"outbox_full", "refused_outbox_full"})


class DropTotals(TypedDict):
    messages: int  # messages evicted or set aside (0 for points refused before a seq)
    points: int
    intentional: bool


class TaskHealthDict(TypedDict):
    restarts: int
    failures: int
    failing: bool
    last_error: str | None
    last_failure_ns: int | None


class Snapshot(TypedDict, total=False):
    gateway: str
    version: str
    pid: int
    boot: int
    final: bool  # the last snapshot, written after the drain
    stopping: bool  # a stop was asked for: polling ended, the outbox drains (not ready)
    time_ns: int
    monotonic_ns: int
    started_ns: int
    tasks: dict[str, bool]  # task name -> alive
    task_health: dict[str, TaskHealthDict]
    pipeline: dict[str, Any]  # gateway.pipeline.PipelineStats
    uplink: dict[str, Any]  # gateway.forwarder.ForwarderStats
    outbox: dict[str, Any]  # buffer.OutboxStats
    drops: dict[str, DropTotals]  # by reason (buffer: outbox_full, disk_full, ...)
    devices: dict[str, dict[str, Any]]  # gateway.poller.DeviceState
    host: dict[str, Any]  # gateway.metrics.host_facts
    reload: dict[str, Any]  # what the last SIGHUP reload did (gateway.reloadplan)
    inference: dict[str, dict[str, Any]]
    inference_stats: dict[str, Any]
    anomalies: list[dict[str, Any]]


def drops_by_reason(totals: dict[str, tuple[int, int]]) -> dict[str, DropTotals]:
    """``buffer.Outbox.drop_totals()`` as the snapshot shows it."""
    return {
        reason: DropTotals(messages=rows, points=points, intentional=reason in INTENTIONAL)
        for reason, (rows, points) in totals.items()
    }
