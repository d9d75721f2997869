"""Write ``<name>.prom``: what a prometheus_client-based gateway/metrics.py (main before
this module's own writer, commit 84af8aa) renders for each fixed snapshot.

Run once from a checkout of that commit, with prometheus_client installed::

    python tests/gateway/metrics_golden/make_golden.py

The clocks are fixed (snapshots.NOW_NS, MONO_NS) so the ages come out the same each run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
sys.path.insert(0, str(HERE))

from prometheus_client.exposition import generate_latest  # noqa: E402
from snapshots import MONO_NS, NOW_NS, SNAPSHOTS  # noqa: E402

import gateway.metrics as metrics  # noqa: E402

metrics.time = SimpleNamespace(time_ns=lambda: NOW_NS, monotonic_ns=lambda: MONO_NS)  # type: ignore[assignment]
for name, make in SNAPSHOTS.items():
    snap = make()
    text = generate_latest(metrics.build_registry(lambda s=snap: s, process=False))
    (HERE / f"{name}.prom").write_bytes(text)
    print(name, len(text), "bytes")
