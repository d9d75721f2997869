"""Library pages only the start-up touched leave the RSS (gateway/pageout.py): only clean,
read-only file mappings are advised, and everything still runs the same afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gateway.pageout import clean_file_mappings

from .upstream import REPO

SMAPS = """\
55d0c0a00000-55d0c0a10000 r--p 00000000 fd:01 100 /usr/bin/python3.11
Size:                 64 kB
Anonymous:             0 kB
55d0c0a10000-55d0c0b00000 r-xp 00010000 fd:01 100 /usr/bin/python3.11
Size:                960 kB
Anonymous:             0 kB
55d0c0b00000-55d0c0b10000 r--p 00100000 fd:01 100 /usr/bin/python3.11
Size:                 64 kB
Anonymous:            64 kB
55d0c0b10000-55d0c0b20000 rw-p 00110000 fd:01 100 /usr/bin/python3.11
Size:                 64 kB
Anonymous:            12 kB
55d0c1000000-55d0c2000000 rw-p 00000000 00:00 0 [heap]
Size:              16384 kB
Anonymous:         16384 kB
7f0000000000-7f0000100000 r--p 00000000 00:00 0
Size:               1024 kB
Anonymous:          1024 kB
7f0000100000-7f0000200000 r-xp 00000000 fd:01 200 /opt/lib/libgone.so (deleted)
Size:               1024 kB
Anonymous:             0 kB
7f0000200000-7f0000300000 r--s 00000000 fd:01 300 /var/lib/edgegw/outbox.db
Size:               1024 kB
Anonymous:             0 kB
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0 [vdso]
Size:                  4 kB
Anonymous:             0 kB
"""


def test_only_clean_read_only_file_mappings_are_chosen(tmp_path: Path) -> None:
    """Never writable, anonymous, special or deleted mappings, and never one holding a
    private copy of a page (relocations: MADV_DONTNEED would throw them away)."""
    f = tmp_path / "smaps"
    f.write_text(SMAPS)
    chosen = clean_file_mappings(str(f))
    assert chosen == [
        (0x55D0C0A00000, 0x10000, "/usr/bin/python3.11"),
        (0x55D0C0A10000, 0xF0000, "/usr/bin/python3.11"),
        (0x7F0000200000, 0x100000, "/var/lib/edgegw/outbox.db"),
    ]


PROBE = """
import json, sys
import numpy as np
import onnxruntime as ort
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gateway.pageout import release_startup_pages
from inference.derived import SHIPPED_MODELS

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096

so = ort.SessionOptions()
s = ort.InferenceSession(str(SHIPPED_MODELS / "default.onnx"), so,
                         providers=["CPUExecutionProvider"])
inp = s.get_inputs()[0]
shape = [d if isinstance(d, int) else 1 for d in inp.shape]
x = np.linspace(-3, 3, int(np.prod(shape)), dtype=np.float32).reshape(shape)
key = Ed25519PrivateKey.generate()
before = (s.run(None, {inp.name: x})[0].tolist(), key.sign(b"m"), rss())
released = release_startup_pages()
after_rss = rss()
after = (s.run(None, {inp.name: x})[0].tolist(), key.sign(b"m"))
key.public_key().verify(after[1], b"m")
print(json.dumps({"released": released, "rss_before": before[2], "rss_after": after_rss,
                  "same_scores": before[0] == after[0], "same_sig": before[1] == after[1]}))
"""


def run_probe(**env: str) -> dict[str, object]:
    r = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO), **env),
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    out: dict[str, object] = json.loads(r.stdout.splitlines()[-1])
    return out


def test_pages_leave_the_rss_and_everything_runs_the_same() -> None:
    """With onnxruntime, numpy and cryptography loaded: the RSS falls by megabytes, and a
    model scores and a key signs exactly as before (Ed25519 is deterministic)."""
    out = run_probe()
    assert out["same_scores"] is True and out["same_sig"] is True, out
    assert isinstance(out["released"], int) and out["released"] > 10 * 2**20, out
    assert isinstance(out["rss_before"], int) and isinstance(out["rss_after"], int)
    assert out["rss_before"] - out["rss_after"] > 5 * 2**20, out


def test_it_can_be_turned_off() -> None:
    out = run_probe(EDGEGW_PAGEOUT="0")
    assert out["released"] == 0 and out["same_scores"] is True, out
