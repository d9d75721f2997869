"""gateway.exposition, our own Prometheus text writer, against prometheus_client: the
golden files are what main's prometheus_client-based code wrote for fixed snapshots
(tests/gateway/metrics_golden), and prometheus_client's own parser reads ours."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

import gateway.metrics as metrics
from gateway.exposition import (
    CounterFamily,
    Family,
    GaugeFamily,
    HistogramFamily,
    ProcessMetrics,
    format_value,
    render,
)

from .metrics_golden.snapshots import MONO_NS, NOW_NS, ODD, SNAPSHOTS

GOLDEN = Path(__file__).parent / "metrics_golden"
# Metrics added after the golden files were made (they cannot be made again: the old
# writer is gone): test_our_writer_is_prometheus_clients_for_the_same_families covers
# them, the golden files the rest.
ADDED_SINCE_GOLDEN: set[str] = set()


def parsed(text: str) -> list[tuple[Any, ...]]:
    """Every family (name, type, help) and its samples (name, labels, value), in order;
    NaN as a string so that it compares equal."""
    return [
        (
            f.name,
            f.type,
            f.documentation,
            [
                (s.name, s.labels, "NaN" if math.isnan(s.value) else s.value, s.timestamp)
                for s in f.samples
            ],
        )
        for f in text_string_to_metric_families(text)
    ]


@pytest.fixture
def fixed_clocks(monkeypatch: pytest.MonkeyPatch) -> None:
    clocks = SimpleNamespace(time_ns=lambda: NOW_NS, monotonic_ns=lambda: MONO_NS)
    monkeypatch.setattr(metrics, "time", clocks)


@pytest.mark.parametrize("name", sorted(SNAPSHOTS))
def test_the_metrics_are_what_prometheus_client_wrote(name: str, fixed_clocks: None) -> None:
    snap = SNAPSHOTS[name]()
    ours = metrics.render_metrics(lambda: snap).decode()
    golden = (GOLDEN / f"{name}.prom").read_text()
    assert parsed(ours) == parsed(golden)  # every family and sample, read independently
    assert ours == golden  # and byte for byte: nothing a scraper could tell apart


def test_the_golden_snapshot_covers_every_family_escaping_and_odd_values(
    fixed_clocks: None,
) -> None:
    """The comparison above means something only if the full snapshot exercises it."""
    text = (GOLDEN / "full.prom").read_text()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme.split("<!-- metrics -->", 1)[1].split("<!-- /metrics -->", 1)[0]
    exported = {n + ("_total" if f.type == "counter" else "") for n, f in fams.items()}
    listed = {line.split("`")[1] for line in table.splitlines() if "`edgegw_" in line}
    assert exported == listed - ADDED_SINCE_GOLDEN
    devices = {s.labels.get("device") for s in fams["edgegw_device_up"].samples}
    assert ODD in devices  # quote, backslash, newline and non-ASCII came back as they were
    assert '\\"' in text and "\\\\" in text and "\\n" in text
    assert "e+" in text and "NaN" in text and "+Inf" in text and "-Inf" in text
    hist = fams["edgegw_device_read_duration_seconds"].samples
    odd = [s.name for s in hist if s.labels.get("device") == ODD]
    assert odd and not any(n.endswith(("_count", "_sum")) for n in odd)  # a negative bound


def as_prometheus_client(fam: Family) -> Any:
    """The same family built with prometheus_client's classes."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}.get(fam.type)
    if cls is not None:
        ref = cls(fam.name, fam.documentation, labels=fam.labelnames)
        for _, labels, value in fam.samples:
            ref.add_metric([v for _, v in labels], value)
        return ref
    assert fam.type == "histogram"
    ref = HistogramMetricFamily(fam.name, fam.documentation, labels=fam.labelnames)
    series: dict[Any, dict[str, Any]] = {}
    for suffix, labels, value in fam.samples:
        key = tuple(v for k, v in labels if k != "le")
        one = series.setdefault(key, {"buckets": [], "sum": None})
        if suffix == "_bucket":
            one["buckets"].append((dict(labels)["le"], value))
        elif suffix == "_sum":
            one["sum"] = value
    for key, one in series.items():
        ref.add_metric(list(key), one["buckets"], one["sum"])
    return ref


@pytest.mark.parametrize("name", sorted(SNAPSHOTS))
def test_our_writer_is_prometheus_clients_for_the_same_families(
    name: str, fixed_clocks: None
) -> None:
    """Whatever families the snapshot gives (also ones added after the golden files),
    prometheus_client writes them as we do."""
    snap = SNAPSHOTS[name]()
    fams = list(metrics.SnapshotCollector(lambda: snap).collect())
    fams += ProcessMetrics().families()
    ours = render(fams).decode()
    ref = generate_latest(_Registry([as_prometheus_client(f) for f in fams])).decode()
    # process_* values move between two reads: compare those by name only
    cut = ours.index("# HELP process_")
    assert ours[:cut] == ref[: ref.index("# HELP process_")]
    assert [f[:3] for f in parsed(ours)[-6:]] == [f[:3] for f in parsed(ref)[-6:]]


@pytest.mark.parametrize(
    "value",
    [
        0.0,
        -0.0,
        1.0,
        0.1 + 0.2,
        1e-9,
        123456.0,
        1234567.0,
        12345678.0,
        1e7,
        2.0**40,
        1.5e12,
        1e22,
        -12345678.9,
        math.inf,
        -math.inf,
        math.nan,
        5e-324,
        1.7976931348623157e308,
    ],
)
def test_values_are_written_as_prometheus_client_writes_them(value: float) -> None:
    fam = GaugeFamily("g", "help", value=value)
    ref = generate_latest(_Registry([_ref_gauge(value)])).decode()
    assert render([fam]).decode() == ref
    assert format_value(value) == ref.rsplit(" ", 1)[1].strip()


class _Registry(CollectorRegistry):
    def __init__(self, families: list[Any]) -> None:
        super().__init__()
        self._families = families

    def collect(self) -> Any:
        return iter(self._families)


def _ref_gauge(value: float) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily("g", "help", value=value)


def test_help_and_label_escaping_and_label_order_match_prometheus_client() -> None:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    doc = 'a \\ backslash, a\nnewline and "quotes"'
    values = ['x"y', "back\\slash", "new\nline", "ünï", "", "\\n literally"]
    ours = [CounterFamily("c", doc, labels=["zeta", "alpha"])]
    ref = [CounterMetricFamily("c", doc, labels=["zeta", "alpha"])]
    for v in values:
        ours[0].add_metric([v, v[::-1]], 3)
        ref[0].add_metric([v, v[::-1]], 3)
    ours.append(GaugeFamily("empty", "a family without samples", labels=["x"]))
    ref.append(GaugeMetricFamily("empty", "a family without samples", labels=["x"]))
    buckets = [("0.5", 1.0), ("1", 2.0), ("+Inf", 4.0)]
    ours.append(HistogramFamily("h", doc, labels=["dev"]))
    ref.append(HistogramMetricFamily("h", doc, labels=["dev"]))
    ours[-1].add_metric(['d\n"1"'], buckets, 2.25)  # type: ignore[call-arg]
    ref[-1].add_metric(['d\n"1"'], buckets, 2.25)
    text = render(ours).decode()
    assert text == generate_latest(_Registry(ref)).decode()
    back = text_string_to_metric_families(text)
    samples = [s for f in back for s in f.samples]
    assert [s.labels["zeta"] for s in samples[: len(values)]] == values


def fake_proc(tmp: Path, comm: str) -> Path:
    """A /proc with one process (pid 4242) whose stat, limits and fds are fixed: a copy
    of ours, with a command name that has spaces and a ")" in it."""
    pid = tmp / "4242"
    (pid / "fd").mkdir(parents=True)
    for i in range(7):
        (pid / "fd" / str(i)).touch()
    stat = Path("/proc/self/stat").read_bytes()
    rest = stat.split(b")")[-1]
    (pid / "stat").write_bytes(b"4242 (" + comm.encode() + b")" + rest)
    shutil.copy("/proc/self/limits", pid / "limits")
    shutil.copy("/proc/stat", tmp / "stat")
    return tmp


def test_process_metrics_are_what_process_collector_reads(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "python3 (x) y")
    ours = render(ProcessMetrics(str(proc), "4242").families()).decode()
    registry = CollectorRegistry()
    ProcessCollector(pid=lambda: 4242, proc=str(proc), registry=registry)
    assert ours == generate_latest(registry).decode()
    names = [f.name for f in text_string_to_metric_families(ours)]
    assert names == [
        "process_virtual_memory_bytes",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_cpu_seconds",
        "process_open_fds",
        "process_max_fds",
    ]


def test_process_metrics_of_this_process_are_plausible() -> None:
    """The real /proc/self: the same families as ProcessCollector's, values close (read a
    moment apart; the bounds only catch a wrong field or unit)."""
    ours = {
        s.name: s.value
        for f in text_string_to_metric_families(render(ProcessMetrics().families()).decode())
        for s in f.samples
    }
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    ref = {
        s.name: s.value
        for f in text_string_to_metric_families(generate_latest(registry).decode())
        for s in f.samples
    }
    assert ours.keys() == ref.keys() and len(ours) == 6
    assert ours["process_start_time_seconds"] == ref["process_start_time_seconds"]
    assert ours["process_max_fds"] == ref["process_max_fds"]
    assert abs(ours["process_open_fds"] - ref["process_open_fds"]) <= 2
    assert abs(ours["process_resident_memory_bytes"] - ref["process_resident_memory_bytes"]) < 2**26
    assert 0 < ours["process_cpu_seconds_total"] <= ref["process_cpu_seconds_total"]


def test_no_proc_means_no_process_metrics(tmp_path: Path) -> None:
    assert ProcessMetrics(str(tmp_path / "missing")).families() == []


def test_the_daemon_does_not_import_prometheus_client_or_http_server() -> None:
    """What this writer and gateway.httpserve are for (issue 18: RSS). gateway.metrics
    alone pulls in none of http.client, email, urllib.request; the daemon still gets
    those three from paho-mqtt's client (it imports urllib.request), but not the rest."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "def bad(names):\n"
        "    return sorted(m for m in sys.modules if m.split('.')[0] in names)\n"
        "import gateway.metrics\n"
        "print(bad(('prometheus_client', 'http', 'email', 'wsgiref', 'mimetypes', 'html',"
        " 'socketserver')) + sorted({'urllib.request'} & set(sys.modules)))\n"
        "import gateway.daemon\n"
        "print(bad(('prometheus_client', 'wsgiref', 'mimetypes', 'html', 'socketserver'))"
        " + sorted({'http.server'} & set(sys.modules)))\n"
    )
    root = Path(__file__).parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=60,  # a bound only: importing the daemon takes about a second
    )
    assert out.stdout.splitlines() == ["[]", "[]"], out.stdout
