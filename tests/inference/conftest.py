"""Small ONNX models built with onnx's helper API, and binding factories.

Every model here is real ONNX run by real onnxruntime; the graphs are tiny so their
scores can be computed by hand.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inference.config import InferenceConfig, ModelBinding
from inference.engine import InferenceEngine

REPO = Path(__file__).resolve().parents[2]


def save(model: onnx.ModelProto, path: Path) -> str:
    """Write a model; returns its sha256."""
    data = model.SerializeToString()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _model(
    nodes: list[Any],
    inputs: list[Any],
    outputs: list[Any],
    inits: list[Any],
    meta: dict[str, str] | None = None,
) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "test", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    if meta:
        helper.set_model_props(m, meta)
    onnx.checker.check_model(m)
    return m


def score_model(
    window: int,
    n: int,
    *,
    factor: float = 1.0,
    slow: int = 0,
    batch: str | int = "batch",
    meta: dict[str, str] | None = None,
    invert: bool = False,
) -> onnx.ModelProto:
    """score = factor * mean of the window's values (``invert``: factor / mean, which is
    inf for a window of zeros). ``slow`` > 0 adds that many 512x512 matrix products that
    depend on the input (so they are not folded away), multiplied by 0: the score stays
    the same, the call gets slower (~3 ms each on the development VM)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, window, n])
    y = helper.make_tensor_value_info("score", TensorProto.FLOAT, [batch])
    inits = [numpy_helper.from_array(np.array(factor, dtype=np.float32), "factor")]
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2], keepdims=0),
        helper.make_node("Div", ["factor", "m"], ["scaled"])
        if invert
        else helper.make_node("Mul", ["m", "factor"], ["scaled"]),
    ]
    last = "scaled"
    if slow:
        inits += [
            numpy_helper.from_array(np.array([512, 512], dtype=np.int64), "big_shape"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        ]
        nodes += [  # zeros that depend on x: computed at run time, and never overflow
            helper.make_node("ReduceMean", ["x"], ["all"], keepdims=0),
            helper.make_node("Mul", ["all", "zero"], ["all0"]),
            helper.make_node("Expand", ["all0", "big_shape"], ["big0"]),
        ]
        for i in range(slow):
            nodes.append(helper.make_node("MatMul", [f"big{i}", "big0"], [f"big{i + 1}"]))
        nodes += [
            helper.make_node("ReduceSum", [f"big{slow}"], ["heavy"], keepdims=0),
            helper.make_node("Mul", ["heavy", "zero"], ["nothing"]),
            helper.make_node("Add", ["scaled", "nothing"], ["score_out"]),
        ]
        last = "score_out"
    nodes.append(helper.make_node("Identity", [last], ["score"]))
    return _model(nodes, [x], [y], inits, meta)


def recon_model(window: int, n: int, *, factor: float, flat: bool = False) -> onnx.ModelProto:
    """A 'reconstruction' of ``factor * x``, shaped like the input."""
    shape: list[str | int] = ["batch", window * n] if flat else ["batch", window, n]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("recon", TensorProto.FLOAT, shape)
    inits = [numpy_helper.from_array(np.array(factor, dtype=np.float32), "factor")]
    return _model([helper.make_node("Mul", ["x", "factor"], ["recon"])], [x], [y], inits)


def binding(path: Path, sha: str, **kw: Any) -> ModelBinding:
    """A binding with small defaults: two inputs, 1 s samples, window 4, stride 1."""
    d: dict[str, Any] = {
        "name": "m",
        "model": str(path),
        "sha256": sha,
        "inputs": ["d/a", "d/b"],
        "sample_ms": 1000,
        "window": 4,
        "stride": 1,
        "threshold": {"enter": 10.0, "exit": 5.0, "min_duration_ms": 0},
    }
    d.update(kw)
    return ModelBinding.model_validate(d)


def engine_for(*bindings: ModelBinding, tmp: Path, **cfg: Any) -> InferenceEngine:
    return InferenceEngine(InferenceConfig(models=list(bindings), **cfg), base_dir=tmp)


def rows(
    values: Sequence[Sequence[float]], tags: tuple[str, ...] = ("d/a", "d/b"), t0_s: int = 1_000
) -> list[list[tuple[Any, ...]]]:
    """One batch per second: row k of ``values`` at t0 + k + 0.5 s, good quality."""
    return [
        [(tag, (t0_s + k) * 10**9 + 500_000_000, v, 0) for tag, v in zip(tags, vals, strict=True)]
        for k, vals in enumerate(values)
    ]


async def drain(engine: InferenceEngine, timeout: float = 10.0) -> None:
    """Wait until every queued window is scored and delivered."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while engine.pending:
        if loop.time() > deadline:
            raise TimeoutError(f"engine still has {engine.pending} windows: {engine.stats}")
        await asyncio.sleep(0.002)


@pytest.fixture
def score_file(tmp_path: Path) -> tuple[Path, str]:
    """The mean-of-window score model for the default binding (window 4, two inputs)."""
    path = tmp_path / "score.onnx"
    return path, save(score_model(4, 2), path)
