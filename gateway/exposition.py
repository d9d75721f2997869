"""Prometheus text exposition format 0.0.4, written by hand (no prometheus_client).

The daemon exports a few dozen families computed at scrape time from its status
snapshot; prometheus_client and the stdlib's ``http.server`` it served them with cost
about 4.5 MiB of RSS in a process that must fit in 60 (issue 18). What we need of the
format is small, and written here to give, sample for sample, what
``prometheus_client.exposition.generate_latest`` gave (the tests parse our output with
prometheus_client's own parser and compare it with what it made):

- ``# HELP name text`` (backslash and newline escaped) and ``# TYPE name type``, also for
  a family without samples;
- a counter is named ``<name>_total`` in HELP, TYPE and samples;
- labels sorted by name, values escaped (backslash, double quote, newline);
- a histogram's ``_bucket`` samples (cumulative, ``le`` last, ``+Inf`` included), then
  ``_count`` (the ``+Inf`` bucket) and ``_sum``;
- values as Go prints floats: ``+Inf``, ``-Inf``, ``NaN``, an exponent from 1e7 up.

:func:`process_families` reads what prometheus_client's ``ProcessCollector`` exported
(``process_*``: CPU, memory, file descriptors, start time) from ``/proc/self``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


class Family:
    """One metric family: its samples as (name suffix, labels, value)."""

    type = "untyped"
    suffix = ""  # what the type adds to the family's name (a counter's "_total")

    def __init__(
        self,
        name: str,
        documentation: str,
        value: float | None = None,
        labels: Sequence[str] | None = None,
    ) -> None:
        if labels is not None and value is not None:
            raise ValueError("give a value or label names, not both")
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labels or ())
        self.samples: list[tuple[str, Labels, float]] = []
        if value is not None:
            self.add_metric([], value)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self.samples.append((self.suffix, self._labels(labels), float(value)))

    def _labels(self, values: Sequence[str]) -> Labels:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: labels {self.labelnames}, got values {values}")
        return tuple(zip(self.labelnames, values, strict=True))


class CounterFamily(Family):
    """A counter; give its name without ``_total`` (added on output)."""

    type = "counter"
    suffix = "_total"


class GaugeFamily(Family):
    type = "gauge"


class HistogramFamily(Family):
    type = "histogram"

    def add_metric(  # type: ignore[override]
        self, labels: Sequence[str], buckets: Sequence[tuple[str, float]], sum_value: float
    ) -> None:
        """``buckets``: (upper bound as written in ``le``, cumulative count), sorted, the
        last one ``+Inf``."""
        pairs = self._labels(labels)
        for le, count in buckets:
            self.samples.append(("_bucket", (*pairs, ("le", le)), float(count)))
        # As prometheus_client: no _count/_sum when a bucket bound is negative.
        if float(buckets[0][0]) >= 0:
            self.samples.append(("_count", pairs, float(buckets[-1][1])))
            self.samples.append(("_sum", pairs, float(sum_value)))


def format_value(value: float) -> str:
    """A sample value as Prometheus (Go) writes it."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    s = repr(float(value))
    dot = s.find(".")
    # Go switches to an exponent sooner than Python (from 1e7, not 1e16).
    if value > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def render(families: Iterable[Family]) -> bytes:
    """The text format of every family, in order."""
    out: list[str] = []
    for fam in families:
        name = fam.name + fam.suffix
        out.append(f"# HELP {name} {_escape_help(fam.documentation)}\n")
        out.append(f"# TYPE {name} {fam.type}\n")
        for suffix, labels, value in fam.samples:
            sample = fam.name + suffix
            if labels:
                pairs = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in sorted(labels))
                sample += "{" + pairs + "}"
            out.append(f"{sample} {format_value(value)}\n")
    return "".join(out).encode("utf-8")


class ProcessMetrics:
    """The standard ``process_*`` families from ``/proc``, as prometheus_client's
    ``ProcessCollector`` reads them; none where ``/proc`` cannot be read."""

    def __init__(self, proc: str = "/proc", pid: str = "self") -> None:
        self._proc = proc
        self._pid = pid
        try:
            self._ticks = float(os.sysconf("SC_CLK_TCK"))
        except (ValueError, OSError):
            self._ticks = 100.0
        try:
            self._pagesize = os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            self._pagesize = 4096
        self._btime = 0.0  # the system's boot time: 0 when /proc is not there
        try:
            with open(os.path.join(proc, "stat"), "rb") as f:
                for line in f:
                    if line.startswith(b"btime "):
                        self._btime = float(line.split()[1])
                        break
        except OSError:
            pass

    def families(self) -> list[Family]:
        if not self._btime:
            return []
        base = os.path.join(self._proc, self._pid)
        result: list[Family] = []
        try:
            with open(os.path.join(base, "stat"), "rb") as f:
                # the fields after the command name, which may hold spaces and ")"
                parts = f.read().split(b")")[-1].split()
            result += [
                GaugeFamily(
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes.",
                    value=float(parts[20]),
                ),
                GaugeFamily(
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes.",
                    value=float(parts[21]) * self._pagesize,
                ),
                GaugeFamily(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    value=float(parts[19]) / self._ticks + self._btime,
                ),
                CounterFamily(
                    "process_cpu_seconds",
                    "Total user and system CPU time spent in seconds.",
                    value=float(parts[11]) / self._ticks + float(parts[12]) / self._ticks,
                ),
            ]
        except OSError:
            pass
        try:
            max_fds = None
            with open(os.path.join(base, "limits"), "rb") as f:
                for line in f:
                    if line.startswith(b"Max open file"):
                        soft = line.split()[3]
                        max_fds = math.inf if soft == b"unlimited" else float(soft)
                        break
            open_fds = len(os.listdir(os.path.join(base, "fd")))
            result.append(
                GaugeFamily("process_open_fds", "Number of open file descriptors.", value=open_fds)
            )
            if max_fds is not None:
                result.append(
                    GaugeFamily(
                        "process_max_fds",
                        "Maximum number of open file descriptors.",
                        value=max_fds,
                    )
                )
        except OSError:
            pass
        return result
