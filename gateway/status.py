"""A small JSON snapshot of the daemon's counters in the state directory, rewritten
atomically every second: what `edgegw demo` (and later `edgegw status`) read."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"


def write_status(state_dir: Path, data: dict[str, Any]) -> None:
    path = state_dir / STATUS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


def read_status(state_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((state_dir / STATUS_FILE).read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None
