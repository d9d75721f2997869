"""The inference config: precise refusals, path rules, and a cheap import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from inference.config import SHIPPED_MODELS, InferenceConfig, ModelBinding

from .conftest import REPO

OK: dict[str, Any] = {
    "name": "m",
    "model": "m.onnx",
    "sha256": "ab" * 32,
    "inputs": ["d/a", "d/b"],
    "sample_ms": 1000,
    "window": 4,
    "threshold": {"enter": 2.0, "exit": 1.0},
}


def refused(**change: Any) -> str:
    with pytest.raises(ValidationError) as info:
        ModelBinding.model_validate({**OK, **change})
    return str(info.value)


def test_a_minimal_binding_has_documented_defaults() -> None:
    b = ModelBinding.model_validate(OK)
    assert (b.stride, b.output, b.missing, b.max_age_ms, b.publish_scores) == (
        1,
        "score",
        "skip",
        None,
        False,
    )
    assert b.threshold.min_duration_ms == 0 and b.scaling is None
    cfg = InferenceConfig()
    assert (cfg.models, cfg.threads, cfg.queue_windows) == ([], 1, 64)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sha256": "abc"}, "sha256 'abc' is not a SHA-256 digest; accepted: 64 hex digits"),
        ({"name": "bad name"}, "model name 'bad name' is not allowed"),
        ({"inputs": []}, "inputs is empty"),
        ({"inputs": ["temperature"]}, "inputs[0] 'temperature' is not a full tag name"),
        ({"inputs": ["d/a", "d/a"]}, "inputs[1] 'd/a' is listed twice"),
        ({"window": 0}, "window 0; accepted: 1..100000"),
        ({"stride": 5}, "stride 5; accepted: 1..4 (the window)"),
        (
            {"output": "logits"},
            "unknown output 'logits'; accepted: 'score', 'reconstruction_error'",
        ),
        ({"missing": "zero"}, "unknown missing policy 'zero'; accepted: 'skip', 'hold_last'"),
        ({"missing": "hold_last"}, "missing 'hold_last' needs max_age_ms"),
        ({"missing": "hold_last", "max_age_ms": 10}, "max_age_ms 10; accepted: 1000..86400000"),
        ({"max_age_ms": 3000}, "max_age_ms 3000 has no effect with missing 'skip'"),
        ({"threshold": {"enter": 1, "exit": 2}}, "exit 2.0 is above enter 1.0; accepted: exit"),
        ({"threshold": {"enter": 1, "exit": 0, "min_duration_ms": -1}}, "min_duration_ms -1"),
        ({"scaling": {"mean": [0], "std": [1]}}, "scaling has 1 values but there are 2 inputs"),
        ({"scaling": {"mean": [0, 0], "std": [1, 0]}}, "std[1] is 0.0; accepted: a number > 0"),
        ({"scaling": {"mean": [0], "std": [1, 1]}}, "mean has 1 values but std has 2"),
        ({"model": ""}, "model is empty"),
        ({"window_ms": 3}, "Extra inputs are not permitted"),
    ],
)
def test_bad_values_are_quoted_with_what_is_accepted(change: dict[str, Any], message: str) -> None:
    assert message in refused(**change)


def test_model_names_are_unique_and_limits_are_checked() -> None:
    with pytest.raises(ValidationError, match="model name 'm' is used twice"):
        InferenceConfig.model_validate({"models": [OK, OK]})
    with pytest.raises(ValidationError, match=r"threads 0; accepted: 1\.\.16"):
        InferenceConfig(threads=0)
    with pytest.raises(ValidationError, match=r"queue_windows 0; accepted: 1\.\.100000"):
        InferenceConfig(queue_windows=0)


def test_sha256_is_normalised_and_case_insensitive() -> None:
    b = ModelBinding.model_validate({**OK, "sha256": "  " + "AB" * 32 + "\n"})
    assert b.sha256 == "ab" * 32


def test_model_paths_bare_names_are_shipped_models(tmp_path: Path) -> None:
    def path(model: str) -> Path:
        return ModelBinding.model_validate({**OK, "model": model}).model_path(tmp_path)

    assert path("default") == SHIPPED_MODELS / "default.onnx"
    assert path("default.onnx") == tmp_path / "default.onnx"  # a suffix: a file here
    assert path("models/x.onnx") == tmp_path / "models" / "x.onnx"
    assert path("/abs/x.onnx") == Path("/abs/x.onnx")
    assert (SHIPPED_MODELS / "default.onnx").is_file()


def test_input_tags_lists_what_the_gateway_must_check() -> None:
    cfg = InferenceConfig.model_validate(
        {"models": [OK, {**OK, "name": "n", "inputs": ["d/b", "e/c"]}]}
    )
    assert cfg.input_tags() == {"d/a", "d/b", "e/c"}


def test_importing_the_package_and_config_does_not_import_numpy_or_onnxruntime() -> None:
    code = (
        "import sys, inference, inference.config, inference.window, inference.hysteresis;"
        "print(sorted(m for m in ('numpy', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_package_imports_no_other_edgegw_package() -> None:
    """A leaf: readings are plain tuples, so nothing from gateway, drivers, buffer or
    security is needed."""
    for f in (REPO / "inference").glob("*.py"):
        text = f.read_text()
        for pkg in ("gateway", "drivers", "buffer", "security"):
            assert f"from {pkg}" not in text and f"import {pkg}" not in text, (f.name, pkg)
