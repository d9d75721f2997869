"""The shipped default model: rebuilt byte for byte, trained on the demo's tags, and
the README's config pins it."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from types import ModuleType

import yaml

from inference.config import SHIPPED_MODELS, InferenceConfig

from .conftest import REPO

SCRIPT = REPO / "scripts" / "build_default_model.py"


def build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_default_model", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_config() -> InferenceConfig:
    """The YAML block of inference/README.md that uses the default model."""
    text = (REPO / "inference" / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    block = next(b for b in blocks if "model: default" in b)
    return InferenceConfig.model_validate(yaml.safe_load(block)["inference"])


def test_running_the_script_twice_gives_byte_identical_files(tmp_path: Path) -> None:
    """Two runs (in parallel, fresh processes) write the same bytes, and the same bytes
    as the committed model: the model in the repo is the one the script builds."""
    runs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), "--out", str(tmp_path / str(i))],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for i in (1, 2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in runs]
    assert [p.returncode for p in runs] == [0, 0]
    for name in ("default.onnx", "default.onnx.sha256"):
        first, second = ((tmp_path / i / name).read_bytes() for i in ("1", "2"))
        assert first == second, name
        assert first == (SHIPPED_MODELS / name).read_bytes(), (
            f"{name} differs from the committed one: rebuild with {SCRIPT.name} and update "
            "the pin in inference/README.md"
        )
    assert outputs[0].replace(str(tmp_path / "1"), "") == outputs[1].replace(
        str(tmp_path / "2"), ""
    )
    assert (
        "sha256: " + (SHIPPED_MODELS / "default.onnx.sha256").read_text().split()[0] in (outputs[0])
    )


def test_the_readme_config_pins_the_shipped_model_with_the_scripts_settings() -> None:
    cfg = readme_config()
    (b,) = cfg.models
    digest = (SHIPPED_MODELS / "default.onnx.sha256").read_text().split()[0]
    script = build_script()
    assert b.model_path(REPO) == SHIPPED_MODELS / "default.onnx"
    assert b.sha256 == digest
    assert b.inputs == script.INPUTS
    assert (b.sample_ms, b.window) == (script.SAMPLE_MS, script.WINDOW)


def test_the_models_tags_are_the_demos_tags() -> None:
    """The script declares the tags it trains on; they must be what the demo serves
    (same device, table, type, scale and offset), or the model learns something else."""
    from gateway.demo import DEMO_CONFIG

    filled = DEMO_CONFIG.format_map(defaultdict(lambda: "1"))
    devices = {d["name"]: d for d in yaml.safe_load(filled)["devices"]}
    for device, tag in build_script().TAGS:
        demo = next(t for t in devices[device]["tags"] if t["name"] == tag.name)
        assert demo.get("table", "holding") == tag.table.value, tag.name
        assert demo["type"] == tag.type.value, tag.name
        assert demo["address"] == tag.address, tag.name
        assert (demo.get("scale", 1.0), demo.get("offset", 0.0)) == (tag.scale, tag.offset)
