"""Library pages only the start-up touched leave the RSS (gateway/pageout.py): only clean,
read-only file mappings are advised, and everything still runs the same afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gateway.pageout import clean_file_mappings, under_emulation

from .upstream import REPO


def mapping(head: str, size: int, rss: int, dirty: int, anon: int) -> str:
    """One mapping as the kernel writes it in smaps (the counts the code reads, in kB)."""
    return (
        f"{head}\nSize: {size:>14} kB\nKernelPageSize: 4 kB\nRss: {rss:>15} kB\n"
        f"Pss: {rss:>15} kB\nPrivate_Dirty: {dirty:>5} kB\nAnonymous: {anon:>9} kB\n"
        "VmFlags: rd mr mw me\n"
    )


SMAPS = "".join(
    [
        mapping(
            "55d0c0a00000-55d0c0a10000 r--p 00000000 fd:01 100 /usr/bin/python3.11", 64, 64, 0, 0
        ),
        mapping(
            "55d0c0a10000-55d0c0b00000 r-xp 00010000 fd:01 100 /usr/bin/python3.11", 960, 700, 0, 0
        ),
        # relocated, then made read-only (RELRO): private pages
        mapping(
            "55d0c0b00000-55d0c0b10000 r--p 00100000 fd:01 100 /usr/bin/python3.11", 64, 64, 64, 64
        ),
        mapping(
            "55d0c0b10000-55d0c0b20000 rw-p 00110000 fd:01 100 /usr/bin/python3.11", 64, 12, 12, 12
        ),
        mapping(
            "55d0c1000000-55d0c2000000 rw-p 00000000 00:00 0 [heap]", 16384, 16384, 16384, 16384
        ),
        mapping("7f0000000000-7f0000100000 r--p 00000000 00:00 0", 1024, 1024, 1024, 1024),
        mapping(
            "7f0000100000-7f0000200000 r-xp 00000000 fd:01 200 /opt/lib/libgone.so (deleted)",
            1024,
            8,
            0,
            0,
        ),
        mapping(
            "7f0000200000-7f0000300000 r--s 00000000 fd:01 300 /var/lib/edgegw/outbox.db",
            1024,
            40,
            0,
            0,
        ),
        # nothing resident: nothing to release
        mapping(
            "7f0000300000-7f0000400000 r--p 00000000 fd:01 400 /usr/lib/libcold.so", 1024, 0, 0, 0
        ),
        # dirty though not counted as anonymous (a kernel that counts it so): kept
        mapping(
            "7f0000400000-7f0000410000 r--p 00000000 fd:01 500 /usr/lib/libodd.so", 64, 64, 4, 0
        ),
        mapping("7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0 [vdso]", 4, 4, 0, 0),
    ]
)


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


# An smaps that counts nothing resident (what some qemu-user versions answer a guest):
# nothing in it can be told clean, so nothing is chosen.
QEMU_SMAPS = "".join(
    mapping(head, size, 0, 0, anon)
    for head, size, anon in [
        ("00400000-00410000 r--p 00000000 fd:01 100 /usr/bin/python3.11", 64, 0),
        ("00410000-00500000 r-xp 00010000 fd:01 100 /usr/bin/python3.11", 960, 0),
        ("00500000-00510000 r--p 00100000 fd:01 100 /usr/bin/python3.11", 64, 0),
        (
            "40000000-40020000 r--p 00019000 fd:01 600 /usr/lib/ld-linux-armhf.so.3",
            128,
            0,
        ),
        ("01000000-02000000 rw-p 00000000 00:00 0 [heap]", 16384, 16384),
    ]
)


def test_nothing_is_chosen_from_an_emulators_smaps(tmp_path: Path) -> None:
    f = tmp_path / "smaps"
    f.write_text(QEMU_SMAPS)
    assert clean_file_mappings(str(f)) == []


def test_natively_this_is_not_emulation() -> None:
    """(Under qemu-user it is: the armhf and arm64 package tests run the daemon there,
    where a page release once killed it; tests/appliance/test_packaging.py.)"""
    assert under_emulation() is False


def test_a_mapping_whose_counts_are_missing_is_not_chosen(tmp_path: Path) -> None:
    f = tmp_path / "smaps"
    f.write_text(
        "00400000-00410000 r--p 00000000 fd:01 100 /usr/bin/python3.11\nSize: 64 kB\nRss: 64 kB\n"
    )
    assert clean_file_mappings(str(f)) == []


def test_the_real_smaps_of_this_process_gives_clean_mappings() -> None:
    """The kernel's own file, parsed: python's text is resident and clean."""
    chosen = clean_file_mappings()
    assert chosen and all(length > 0 and path.startswith("/") for _, length, path in chosen)


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
