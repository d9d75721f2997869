"""Loading a model (the hash pin, the onnxruntime session, the checks that make a model
that loads usable) and scoring windows with it.

The file is read once: the bytes that are hashed are the bytes onnxruntime parses, so a
file swapped between the check and the load cannot slip through. A refused model raises
:class:`ModelRefused`, whose message names the binding, the file and, for a hash
mismatch, both digests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from .derived import SHIPPED_MODELS

if TYPE_CHECKING:
    from .config import ModelBinding

__all__ = ["LoadedModel", "ModelRefused", "load_model", "sha256_file"]

SAMPLE_MS_KEY = "edgegw.sample_ms"
"""Model metadata key: the sample rate a model was trained at (checked when present)."""


class ModelRefused(Exception):
    """A model that is not loaded: unreadable, another hash than the pin, not ONNX, or a
    shape that does not fit its binding."""


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(slots=True)
class LoadedModel:
    """A verified model and how to feed it."""

    binding: ModelBinding
    path: Path
    sha256: str
    session: ort.InferenceSession
    input_name: str
    output_name: str
    flat: bool
    """Input is [batch, window * inputs] (else [batch, window, inputs])."""
    one_at_a_time: bool
    """The batch dimension is fixed to 1."""
    mean: np.ndarray | None
    std: np.ndarray | None

    def score(self, windows: Sequence[Sequence[Sequence[float]]] | np.ndarray) -> np.ndarray:
        """One score per window (float64). Runs onnxruntime: call it off the event loop."""
        x = np.asarray(windows, dtype=np.float32)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        b = x.shape[0]
        feed = x.reshape(b, -1) if self.flat else x
        names = [self.output_name]
        if self.one_at_a_time:
            parts = [
                self.session.run(names, {self.input_name: feed[i : i + 1]})[0] for i in range(b)
            ]
            out = np.concatenate([np.reshape(p, (1, -1)) for p in parts])
        else:
            out = self.session.run(names, {self.input_name: feed})[0]
        out = np.asarray(out, dtype=np.float64).reshape(b, -1)
        if self.binding.output == "score":
            if out.shape[1] != 1:
                raise ValueError(
                    f"output {self.output_name!r} gives {out.shape[1]} values "
                    "per window; a score is one"
                )
            return out[:, 0]
        if out.shape[1] != x[0].size:
            raise ValueError(
                f"output {self.output_name!r} gives {out.shape[1]} values per "
                f"window; a reconstruction has {x[0].size}"
            )
        return np.asarray(np.mean((out - x.reshape(b, -1)) ** 2, axis=1), dtype=np.float64)


def _refuse(b: ModelBinding, path: Path, why: str) -> ModelRefused:
    return ModelRefused(f"model {b.name!r}: {path}: {why}")


def _read(b: ModelBinding, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        why = f"cannot read it ({exc.strerror or exc})"
        if path.parent == SHIPPED_MODELS:
            shipped = sorted(p.stem for p in SHIPPED_MODELS.glob("*.onnx"))
            why += f"; shipped models: {', '.join(shipped) or 'none'}"
        raise _refuse(b, path, why) from None


def load_model(b: ModelBinding, base_dir: Path, *, threads: int = 1) -> LoadedModel:
    """Read, verify and open one model; raises :class:`ModelRefused`."""
    path = b.model_path(base_dir)
    data = _read(b, path)
    actual = hashlib.sha256(data).hexdigest()
    if actual != b.sha256:
        raise _refuse(
            b,
            path,
            f"sha256 is {actual} but the config pins {b.sha256}: the file was changed or the "
            "pin is wrong, so it is not loaded (if you trust this file, pin it with "
            f"sha256: {actual})",
        )
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    # Idle pool threads sleep instead of spinning: an edge box has cores to spare for polling.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # No memory arena: after batches of 64 windows (a backlog) the arena held 6.7 MiB for
    # the shipped model's few-KiB tensors, and it ran no faster (one window ~10 us, 64 ~60 us
    # either way). One window a second never grew it: the daemon's RSS is the same.
    so.enable_cpu_mem_arena = False
    try:
        session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own classes for every parse failure
        raise _refuse(b, path, f"not a usable ONNX model: {exc}") from None
    return _check(b, path, actual, session)


def _check(b: ModelBinding, path: Path, digest: str, s: ort.InferenceSession) -> LoadedModel:
    n, w = len(b.inputs), b.window
    ins = s.get_inputs()
    if len(ins) != 1:
        raise _refuse(
            b,
            path,
            f"has {len(ins)} inputs ({', '.join(i.name for i in ins)}); "
            "accepted: one, [batch, window, inputs] or [batch, window * inputs]",
        )
    inp = ins[0]
    if inp.type != "tensor(float)":
        raise _refuse(b, path, f"input {inp.name!r} is {inp.type}; accepted: tensor(float)")
    shape = list(inp.shape)
    want = {3: [w, n], 2: [w * n]}.get(len(shape))
    if want is None or any(
        isinstance(d, int) and d != e for d, e in zip(shape[1:], want, strict=True)
    ):
        raise _refuse(
            b,
            path,
            f"input {inp.name!r} has shape {shape}; this binding needs [batch, {w}, {n}] or "
            f"[batch, {w * n}] (window {w} x {n} inputs)",
        )
    batch = shape[0]
    if isinstance(batch, int) and batch != 1:
        raise _refuse(
            b,
            path,
            f"input batch dimension is fixed to {batch}; accepted: 1 "
            "or a symbolic (dynamic) dimension",
        )
    outs = [o.name for o in s.get_outputs()]
    out = b.output_name or outs[0]
    if out not in outs:
        raise _refuse(b, path, f"has no output {out!r}; outputs: {', '.join(outs)}")
    meta = s.get_modelmeta().custom_metadata_map
    if SAMPLE_MS_KEY in meta and meta[SAMPLE_MS_KEY] != str(b.sample_ms):
        raise _refuse(
            b,
            path,
            f"was trained at sample_ms {meta[SAMPLE_MS_KEY]} but the "
            f"binding says {b.sample_ms}; accepted: {meta[SAMPLE_MS_KEY]}",
        )
    sc = b.scaling
    model = LoadedModel(
        binding=b,
        path=path,
        sha256=digest,
        session=s,
        input_name=inp.name,
        output_name=out,
        flat=len(shape) == 2,
        one_at_a_time=batch == 1,
        mean=None if sc is None else np.asarray(sc.mean, dtype=np.float32),
        std=None if sc is None else np.asarray(sc.std, dtype=np.float32),
    )
    try:  # a dry run catches what the declared shapes do not say
        model.score(np.zeros((2, w, n), dtype=np.float32))
    except Exception as exc:
        raise _refuse(b, path, f"does not run on [2, {w}, {n}] windows: {exc}") from None
    return model
