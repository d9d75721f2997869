"""Build ``inference/models/default.onnx``: a small autoencoder of the demo's normal behaviour.

    .venv/bin/python scripts/build_default_model.py [--out DIR]

Training data are the Modbus simulator's own waveforms (``waveform_value``) for six
float tags of the demo (``gateway/demo.py``), sampled once a second, each sample taken
up to 0.3 s early (as the last poll of a period is), with a fixed seed. Nothing is
downloaded. The autoencoder (96-48-12-48-96, tanh) is trained with plain numpy Adam;
its parameters are rounded to a 2**-20 grid after every step, so rounding differences
between BLAS kernels do not grow over the steps, and each output is float32 anyway.
Running the script twice writes byte-identical files (a test checks it).

The graph takes raw values ``x [batch, 16, 6]`` (standardisation is inside it) and
outputs ``score [batch]``: for each input, the mean squared reconstruction error over
the window in standard deviations squared, and the score is the largest of the six (so
one bad sensor is not averaged away by five good ones). Writes ``default.onnx`` and
``default.onnx.sha256`` (``sha256sum`` format), then prints the binding to put in a
config, with the threshold chosen here from held-out normal data.
"""

from __future__ import annotations

import os

# One BLAS thread: the same sums in the same order on every run.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import hashlib  # noqa: E402
import itertools  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drivers.modbus.config import ModbusTag  # noqa: E402
from drivers.modbus.simulator import waveform_value  # noqa: E402

# The demo's float tags that follow a sine (see gateway/demo.py; a test keeps them equal).
TAGS: tuple[tuple[str, ModbusTag], ...] = (
    ("boiler", ModbusTag(name="temperature", address=0, type="float32", unit="degC")),
    ("boiler", ModbusTag(name="pressure", address=2, type="float32", unit="bar")),
    ("pump", ModbusTag(name="flow", address=0, type="float32", unit="m3/h")),
    ("pump", ModbusTag(name="speed", address=2, type="uint16", unit="rpm")),
    ("meter", ModbusTag(name="voltage", table="input", address=0, type="float32", unit="V")),
    ("meter", ModbusTag(name="current", table="input", address=2, type="float32", unit="A")),
)
INPUTS = [f"{d}/{t.name}" for d, t in TAGS]
SAMPLE_MS = 1000
WINDOW = 16
HIDDEN = 48
LATENT = 12
SEED = 6
TRAIN_ROWS = 24_000
HELDOUT_ROWS = 12_000
MAX_LAG_S = 0.3
STEPS = 3000
BATCH = 256
GRID = 2.0**-20
OPSET = 17
IR_VERSION = 8  # readable by onnxruntime >= 1.14


def series(rng: np.random.Generator, t0: float, rows: int) -> np.ndarray:
    """[rows, inputs]: row k is each tag's value at the end of second k, taken up to
    MAX_LAG_S early, as the last poll of a period is."""
    lag = rng.uniform(0.0, MAX_LAG_S, size=(rows, len(TAGS)))
    out = np.empty((rows, len(TAGS)))
    for j, (device, tag) in enumerate(TAGS):
        for k in range(rows):
            out[k, j] = float(waveform_value(device, tag, t0 + k - lag[k, j]))
    return out


def windows(s: np.ndarray) -> np.ndarray:
    """Every WINDOW-row window of a series: [n, WINDOW, inputs]."""
    idx = np.arange(WINDOW)[None, :] + np.arange(len(s) - WINDOW + 1)[:, None]
    return np.asarray(s[idx])


def init(rng: np.random.Generator) -> list[np.ndarray]:
    sizes = [WINDOW * len(TAGS), HIDDEN, LATENT, HIDDEN, WINDOW * len(TAGS)]
    params = []
    for a, b in itertools.pairwise(sizes):
        params += [rng.normal(0.0, 1.0 / np.sqrt(a), size=(a, b)), np.zeros(b)]
    return [quantize(p) for p in params]


def quantize(p: np.ndarray) -> np.ndarray:
    return np.asarray(np.round(p / GRID) * GRID)


def forward(params: list[np.ndarray], x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """x [n, 96] scaled -> reconstruction, and each layer's output for backprop."""
    w1, b1, w2, b2, w3, b3, w4, b4 = params
    h1 = np.tanh(x @ w1 + b1)
    z = h1 @ w2 + b2
    h3 = np.tanh(z @ w3 + b3)
    return h3 @ w4 + b4, [x, h1, z, h3]


def grads(params: list[np.ndarray], x: np.ndarray) -> tuple[float, list[np.ndarray]]:
    _, _, w2, _, w3, _, w4, _ = params
    y, (x0, h1, z, h3) = forward(params, x)
    d = 2.0 * (y - x) / y.size
    g4 = h3.T @ d
    d3 = (d @ w4.T) * (1.0 - h3**2)
    g3 = z.T @ d3
    dz = d3 @ w3.T
    g2 = h1.T @ dz
    d1 = (dz @ w2.T) * (1.0 - h1**2)
    g1 = x0.T @ d1
    loss = float(np.mean((y - x) ** 2))
    return loss, [g1, d1.sum(0), g2, dz.sum(0), g3, d3.sum(0), g4, d.sum(0)]


def train(rng: np.random.Generator, x: np.ndarray) -> list[np.ndarray]:
    params = init(rng)
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    b1, b2, eps = 0.9, 0.999, 1e-8
    for step in range(1, STEPS + 1):
        lr = 1e-4 + (3e-3 - 1e-4) * 0.5 * (1 + np.cos(np.pi * step / STEPS))
        batch = x[rng.integers(0, len(x), BATCH)]
        loss, g = grads(params, batch)
        for i, p in enumerate(params):
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            mh, vh = m[i] / (1 - b1**step), v[i] / (1 - b2**step)
            params[i] = quantize(p - lr * mh / (np.sqrt(vh) + eps))
        if step % 500 == 0:
            print(f"  step {step}: loss {loss:.5f}", file=sys.stderr)
    return [p.astype(np.float32) for p in params]


def scores(
    params: list[np.ndarray], mean: np.ndarray, std: np.ndarray, w: np.ndarray
) -> np.ndarray:
    """What the graph computes, in numpy (float32 like onnxruntime): [n] scores."""
    x = ((w.astype(np.float32) - mean) / std).reshape(len(w), -1)
    y, _ = forward(params, x)
    err = ((y - x) ** 2).reshape(len(w), WINDOW, len(TAGS)).mean(axis=1)
    return np.asarray(err.max(axis=1))


def graph(params: list[np.ndarray], mean: np.ndarray, std: np.ndarray, doc: str) -> onnx.ModelProto:
    n, flat = len(TAGS), WINDOW * len(TAGS)
    w1, b1, w2, b2, w3, b3, w4, b4 = params
    init_ = [
        numpy_helper.from_array(a.astype(np.float32), name)
        for name, a in (
            ("mean", mean),
            ("std", std),
            ("w1", w1),
            ("b1", b1),
            ("w2", w2),
            ("b2", b2),
            ("w3", w3),
            ("b3", b3),
            ("w4", w4),
            ("b4", b4),
        )
    ] + [
        numpy_helper.from_array(np.array([-1, flat], dtype=np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([-1, WINDOW, n], dtype=np.int64), "window_shape"),
    ]
    node = helper.make_node
    nodes = [
        node("Sub", ["x", "mean"], ["centred"]),
        node("Div", ["centred", "std"], ["scaled"]),
        node("Reshape", ["scaled", "flat_shape"], ["flat"]),
        node("MatMul", ["flat", "w1"], ["a1"]),
        node("Add", ["a1", "b1"], ["p1"]),
        node("Tanh", ["p1"], ["h1"]),
        node("MatMul", ["h1", "w2"], ["a2"]),
        node("Add", ["a2", "b2"], ["z"]),
        node("MatMul", ["z", "w3"], ["a3"]),
        node("Add", ["a3", "b3"], ["p3"]),
        node("Tanh", ["p3"], ["h3"]),
        node("MatMul", ["h3", "w4"], ["a4"]),
        node("Add", ["a4", "b4"], ["recon_flat"]),
        node("Reshape", ["recon_flat", "window_shape"], ["recon"]),
        node("Sub", ["recon", "scaled"], ["residual"]),
        node("Mul", ["residual", "residual"], ["squared"]),
        node("ReduceMean", ["squared"], ["per_input"], axes=[1], keepdims=0),
        node("ReduceMax", ["per_input"], ["score"], axes=[1], keepdims=0),
    ]
    g = helper.make_graph(
        nodes,
        "edgegw_default_autoencoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WINDOW, n])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        init_,
    )
    model = helper.make_model(
        g,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edgegw scripts/build_default_model.py",
        producer_version="1",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    meta = {
        "edgegw.inputs": ",".join(INPUTS),
        "edgegw.sample_ms": str(SAMPLE_MS),
        "edgegw.window": str(WINDOW),
        "edgegw.output": "score",
    }
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    return model


def build(out_dir: Path) -> dict[str, object]:
    """Train, write the model and its .sha256; returns what a binding needs."""
    rng = np.random.default_rng(SEED)
    train_s = series(rng, 1_700_000_000.0, TRAIN_ROWS)
    held_s = series(rng, 1_800_000_000.0, HELDOUT_ROWS)
    # Rounded, so they read well in the doc string and do not depend on the last bits.
    mean = np.round(train_s.mean(axis=0), 3).astype(np.float32)
    std = np.round(train_s.std(axis=0), 3).astype(np.float32)
    x = ((windows(train_s) - mean) / std).reshape(-1, WINDOW * len(TAGS))
    params = train(rng, x)
    held = scores(params, mean, std, windows(held_s))
    top = float(held.max())
    # Enter at twice the worst held-out normal window, exit at the worst: normal data
    # stays below exit, so an anomaly that has passed ends promptly.
    enter = float(f"{2 * top:.2g}")
    exit_ = float(f"{top:.2g}")
    doc = (
        f"edgegw default model: autoencoder {WINDOW * len(TAGS)}-{HIDDEN}-{LATENT}-{HIDDEN}-"
        f"{WINDOW * len(TAGS)} of the demo's simulator waveforms, window {WINDOW} x "
        f"{SAMPLE_MS} ms; inputs {', '.join(INPUTS)}; score = max over inputs of the mean "
        f"squared reconstruction error (in std units); suggested threshold enter {enter}, "
        f"exit {exit_}; mean {[round(float(v), 3) for v in mean]}, "
        f"std {[round(float(v), 3) for v in std]}"
    )
    model = graph(params, mean, std, doc)
    data = model.SerializeToString()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "default.onnx").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    (out_dir / "default.onnx.sha256").write_text(f"{digest}  default.onnx\n")
    return {
        "sha256": digest,
        "enter": enter,
        "exit": exit_,
        "heldout_max": top,
        "heldout_p99": float(np.quantile(held, 0.99)),
        "mean": [round(float(v), 3) for v in mean],
        "std": [round(float(v), 3) for v in std],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "inference" / "models")
    args = ap.parse_args(argv)
    r = build(args.out)
    print(f"wrote {args.out / 'default.onnx'} (sha256 {r['sha256']})")
    print(f"held-out normal windows: max score {r['heldout_max']:.4g}, p99 {r['heldout_p99']:.4g}")
    print(f"scaling: inside the model (mean {r['mean']}, std {r['std']}): none in the config")
    print(
        "binding:\n"
        "  - name: demo\n"
        "    model: default\n"
        f"    sha256: {r['sha256']}\n"
        f"    inputs: [{', '.join(INPUTS)}]\n"
        f"    sample_ms: {SAMPLE_MS}\n"
        f"    window: {WINDOW}\n"
        "    stride: 1\n"
        f"    threshold: {{enter: {r['enter']}, exit: {r['exit']}, min_duration_ms: 2000}}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
