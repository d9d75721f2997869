"""Loading a model: the hash pin, readable and runnable files, shapes that fit."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from inference.config import SHIPPED_MODELS, InferenceConfig
from inference.engine import InferenceEngine
from inference.model import ModelRefused, load_model

from .conftest import binding, recon_model, save, score_model


def test_a_model_session_keeps_no_memory_arena(score_file: tuple[Path, str]) -> None:
    """onnxruntime's CPU arena held 6.7 MiB for the shipped model's few-KiB tensors and
    made no run faster: a loaded model runs without it, and still scores."""
    path, sha = score_file
    m = load_model(binding(path, sha), path.parent)
    assert m.session.get_session_options().enable_cpu_mem_arena is False
    assert m.score([[[1.0, 3.0]] * 4]).tolist() == [2.0]


def test_a_pinned_model_loads_and_scores(score_file: tuple[Path, str]) -> None:
    path, sha = score_file
    m = load_model(binding(path, sha), path.parent)
    assert (m.sha256, m.input_name, m.output_name, m.flat, m.one_at_a_time) == (
        sha,
        "x",
        "score",
        False,
        False,
    )
    windows = [[[1.0, 3.0]] * 4, [[0.0, 0.0]] * 3 + [[8.0, 8.0]]]
    assert m.score(windows).tolist() == [2.0, 2.0]


def test_a_changed_byte_is_refused_naming_file_and_both_hashes(
    score_file: tuple[Path, str],
) -> None:
    path, sha = score_file
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of the last byte
    path.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(ModelRefused) as info:
        load_model(binding(path, sha), path.parent)
    msg = str(info.value)
    assert msg.startswith(f"model 'm': {path}: sha256 is {actual} but the config pins {sha}")
    assert "not loaded" in msg
    # and the engine refuses to start with it
    with pytest.raises(ModelRefused, match=re.escape(actual)):
        InferenceEngine(InferenceConfig(models=[binding(path, sha)]), base_dir=path.parent)


def test_a_wrong_pin_is_refused_even_for_a_good_file(score_file: tuple[Path, str]) -> None:
    path, _ = score_file
    with pytest.raises(ModelRefused, match=f"but the config pins {'0' * 64}"):
        load_model(binding(path, "0" * 64), path.parent)


def test_relative_paths_are_taken_against_base_dir(score_file: tuple[Path, str]) -> None:
    path, sha = score_file
    m = load_model(binding(Path(path.name), sha), path.parent)
    assert m.path == path


def test_missing_and_unparsable_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelRefused, match=r"nope\.onnx: cannot read it \(No such file"):
        load_model(binding(tmp_path / "nope.onnx", "0" * 64), tmp_path)
    with pytest.raises(ModelRefused, match=r"cannot read it .*; shipped models: default"):
        load_model(binding(Path("nosuch"), "0" * 64), tmp_path)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    sha = hashlib.sha256(junk.read_bytes()).hexdigest()
    with pytest.raises(ModelRefused, match=r"junk\.onnx: not a usable ONNX model"):
        load_model(binding(junk, sha), tmp_path)


@pytest.mark.parametrize(
    ("model_args", "message"),
    [
        ((5, 2), r"input 'x' has shape \['batch', 5, 2\]; this binding needs \[batch, 4, 2\]"),
        ((4, 3), r"this binding needs \[batch, 4, 2\] or \[batch, 8\] \(window 4 x 2 inputs\)"),
    ],
)
def test_a_model_of_another_shape_is_refused(
    tmp_path: Path, model_args: tuple[int, int], message: str
) -> None:
    path = tmp_path / "m.onnx"
    sha = save(score_model(*model_args), path)
    with pytest.raises(ModelRefused, match=message):
        load_model(binding(path, sha), tmp_path)


def test_fixed_batch_dimensions(tmp_path: Path) -> None:
    path = tmp_path / "one.onnx"
    sha = save(score_model(4, 2, batch=1), path)
    m = load_model(binding(path, sha), tmp_path)
    assert m.one_at_a_time
    assert m.score([[[1.0, 1.0]] * 4, [[3.0, 3.0]] * 4]).tolist() == [1.0, 3.0]
    sha = save(score_model(4, 2, batch=8), path)
    with pytest.raises(ModelRefused, match="batch dimension is fixed to 8"):
        load_model(binding(path, sha), tmp_path)


def test_output_kind_and_name_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "r.onnx"
    sha = save(recon_model(4, 2, factor=0.5), path)
    # a reconstruction read as a score: refused by the dry run, with the reason
    with pytest.raises(ModelRefused, match="gives 8 values per window; a score is one"):
        load_model(binding(path, sha), tmp_path)
    with pytest.raises(ModelRefused, match="has no output 'y'; outputs: recon"):
        load_model(binding(path, sha, output="reconstruction_error", output_name="y"), tmp_path)


@pytest.mark.parametrize("flat", [False, True])
def test_reconstruction_error_is_the_mean_squared_difference_after_scaling(
    tmp_path: Path, flat: bool
) -> None:
    """recon = 0.5 * x', x' = (x - mean) / std: error = mean((0.5 x')^2)."""
    path = tmp_path / "r.onnx"
    sha = save(recon_model(4, 2, factor=0.5, flat=flat), path)
    b = binding(
        path,
        sha,
        output="reconstruction_error",
        scaling={"mean": [10.0, 0.0], "std": [2.0, 1.0]},
    )
    m = load_model(b, tmp_path)
    assert m.flat is flat
    w = np.array([[[14.0, 1.0]] * 4])  # scaled: [2, 1] -> halves [1, 0.5]
    assert m.score(w).tolist() == [pytest.approx((1.0 + 0.25) / 2)]


def test_a_model_trained_at_another_rate_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    sha = save(score_model(4, 2, meta={"edgegw.sample_ms": "500"}), path)
    with pytest.raises(ModelRefused, match="trained at sample_ms 500 but the binding says 1000"):
        load_model(binding(path, sha), tmp_path)
    assert load_model(binding(path, sha, sample_ms=500), tmp_path).binding.sample_ms == 500


def test_the_shipped_default_model_matches_its_sha256_file() -> None:
    digest, name = (SHIPPED_MODELS / "default.onnx.sha256").read_text().split()
    assert name == "default.onnx"
    assert hashlib.sha256((SHIPPED_MODELS / "default.onnx").read_bytes()).hexdigest() == digest
