"""Config models of the ``inference:`` section (pydantic v2).

Cheap to import on purpose: the gateway validates these at config load, long before
(and whether or not) onnxruntime is imported. Every message quotes the bad value and
lists what is accepted; the gateway adds the file, line and field.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .derived import SHIPPED_MODELS, BindingDerived, InferenceDerived

__all__ = [
    "SHIPPED_MODELS",
    "InferenceConfig",
    "ModelBinding",
    "Scaling",
    "Threshold",
]


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_INPUT = re.compile(r"^[A-Za-z0-9_.-]+/\S(?:.*\S)?$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_OUTPUTS = ("score", "reconstruction_error")
_MISSING = ("skip", "hold_last")  # (the Literal types below say the same)


class _Model(BaseModel):
    # defer_build: no validator of its own until one is used directly; the gateway's
    # config validator holds this model's checks too (0.6 MiB for every protocol's models)
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


def _choice(value: Any, accepted: tuple[str, ...], what: str) -> str:
    if isinstance(value, str) and value.lower() in accepted:
        return value.lower()
    raise ValueError(f"unknown {what} {value!r}; accepted: {', '.join(map(repr, accepted))}")


class Scaling(_Model):
    """Standardisation applied before the model: ``(value - mean) / std`` per input."""

    mean: list[float] = Field(description="one per input, in input order")
    std: list[float] = Field(description="one per input, each > 0")

    @field_validator("mean", "std")
    @classmethod
    def _finite(cls, v: list[float], info: Any) -> list[float]:
        for i, x in enumerate(v):
            if not math.isfinite(x) or (info.field_name == "std" and x <= 0):
                need = "a number > 0" if info.field_name == "std" else "a finite number"
                raise ValueError(f"{info.field_name}[{i}] is {x!r}; accepted: {need}")
        return v

    @model_validator(mode="after")
    def _same_length(self) -> Scaling:
        if len(self.mean) != len(self.std):
            raise ValueError(
                f"mean has {len(self.mean)} values but std has {len(self.std)}; "
                "give one of each per input"
            )
        return self


class Threshold(_Model):
    """When the score makes an anomaly: hysteresis, so a score hovering near one
    threshold does not flap."""

    enter: float = Field(description="a window scoring >= enter starts (or keeps) an anomaly")
    exit: float = Field(description="an anomaly ends when windows score < exit; exit <= enter")
    min_duration_ms: int = Field(
        0,
        description="the score must stay >= enter (to start) or < exit (to end) for this "
        "long, measured between window ends; 0: one window decides",
    )

    @field_validator("enter", "exit")
    @classmethod
    def _finite(cls, v: float, info: Any) -> float:
        if not math.isfinite(v):
            raise ValueError(f"{info.field_name} {v!r}; accepted: a finite number")
        return v

    @field_validator("min_duration_ms")
    @classmethod
    def _duration(cls, v: int) -> int:
        if not 0 <= v <= 86_400_000:
            raise ValueError(f"min_duration_ms {v}; accepted: 0..86400000 (one day)")
        return v

    @model_validator(mode="after")
    def _band(self) -> Threshold:
        if self.exit > self.enter:
            raise ValueError(
                f"exit {self.exit!r} is above enter {self.enter!r}; accepted: exit <= enter "
                "(the band between them is what stops flapping)"
            )
        return self


class ModelBinding(BindingDerived, _Model):
    """One ONNX model bound to live tags."""

    name: str = Field(description="model name, unique; [A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
    model: Path = Field(
        description="ONNX file. Relative paths are taken against the config file's folder. "
        "A bare name without a suffix or folder (e.g. 'default') names a model shipped in "
        "inference/models/<name>.onnx"
    )
    sha256: str = Field(
        description="SHA-256 of the file (64 hex digits, `sha256sum` output); a file with "
        "another hash is refused, not loaded"
    )
    inputs: list[str] = Field(
        description="full tag names '<device>/<tag>', in the model's input order"
    )
    sample_ms: int = Field(
        description="one row of the window per sample_ms: each input's last value in each "
        "period; must match the rate the model was trained at"
    )
    window: int = Field(description="rows per window (window * sample_ms of history)")
    stride: int = Field(1, description="rows between the starts of two windows; 1..window")
    scaling: Scaling | None = Field(
        None, description="standardisation, when the model does not include it"
    )
    output: Literal["score", "reconstruction_error"] = Field(
        "score",
        description="'score': the model outputs one score per window; "
        "'reconstruction_error': it outputs a reconstruction of its input and the score is "
        "the mean squared difference (in scaled units)",
    )
    output_name: str | None = Field(None, description="model output to read; default the first")
    threshold: Threshold
    missing: Literal["skip", "hold_last"] = Field(
        "skip",
        description="'skip': a window is scored only if every input had a new good reading "
        "in each of its sample periods; 'hold_last': the last good value stands in while "
        "it is at most max_age_ms old",
    )
    max_age_ms: int | None = Field(None, description="staleness bound of 'hold_last'")
    publish_scores: bool = Field(False, description="publish every window's score, too")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(
                f"model name {v!r} is not allowed; accepted: letters, digits and _ . - "
                "(first a letter or digit), at most 64"
            )
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: Path) -> Path:
        if not str(v).strip() or str(v) == ".":
            raise ValueError("model is empty; give an .onnx path or 'default'")
        return v

    @field_validator("sha256", mode="before")
    @classmethod
    def _sha256(cls, v: Any) -> str:
        s = v.strip().lower() if isinstance(v, str) else v
        if not isinstance(s, str) or not _HEX64.match(s):
            raise ValueError(
                f"sha256 {v!r} is not a SHA-256 digest; accepted: 64 hex digits, as "
                "printed by `sha256sum model.onnx`"
            )
        return s

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("inputs is empty; list the tags the model reads, '<device>/<tag>'")
        seen: set[str] = set()
        for i, tag in enumerate(v):
            if not _INPUT.match(tag):
                raise ValueError(
                    f"inputs[{i}] {tag!r} is not a full tag name; accepted: "
                    "'<device>/<tag>', e.g. 'boiler/temperature'"
                )
            if tag in seen:
                raise ValueError(f"inputs[{i}] {tag!r} is listed twice; each input once")
            seen.add(tag)
        return v

    @field_validator("sample_ms", "window")
    @classmethod
    def _positive(cls, v: int, info: Any) -> int:
        hi = {"sample_ms": 3_600_000, "window": 100_000}[info.field_name]
        if not 1 <= v <= hi:
            raise ValueError(f"{info.field_name} {v}; accepted: 1..{hi}")
        return v

    @field_validator("output", mode="before")
    @classmethod
    def _output(cls, v: Any) -> str:  # before the Literal: our message, not pydantic's
        return _choice(v, _OUTPUTS, "output")

    @field_validator("missing", mode="before")
    @classmethod
    def _missing(cls, v: Any) -> str:
        return _choice(v, _MISSING, "missing policy")

    @model_validator(mode="after")
    def _combination(self) -> ModelBinding:
        if not 1 <= self.stride <= self.window:
            raise ValueError(f"stride {self.stride}; accepted: 1..{self.window} (the window)")
        if self.scaling is not None and len(self.scaling.mean) != len(self.inputs):
            raise ValueError(
                f"scaling has {len(self.scaling.mean)} values but there are "
                f"{len(self.inputs)} inputs; give one mean and one std per input"
            )
        if self.missing == "hold_last":
            if self.max_age_ms is None:
                raise ValueError(
                    "missing 'hold_last' needs max_age_ms, how old a held value may get "
                    f"(e.g. {3 * self.sample_ms}, three sample periods)"
                )
            if not self.sample_ms <= self.max_age_ms <= 86_400_000:
                raise ValueError(
                    f"max_age_ms {self.max_age_ms}; accepted: {self.sample_ms}..86400000 "
                    "(at least one sample period)"
                )
        elif self.max_age_ms is not None:
            raise ValueError(
                f"max_age_ms {self.max_age_ms} has no effect with missing 'skip'; remove it "
                "or set missing: hold_last"
            )
        return self


class InferenceConfig(InferenceDerived, _Model):
    """The ``inference:`` section: models and how hard they may work."""

    models: list[ModelBinding] = Field(default_factory=list, description="model bindings")
    threads: int = Field(
        1,
        description="onnxruntime threads per model call (1..16); scoring never runs on "
        "the event loop either way",
    )
    queue_windows: int = Field(
        64,
        description="windows waiting to be scored (1..100000); when full the oldest is "
        "dropped and counted as windows_skipped_queue_full",
    )

    @field_validator("threads", "queue_windows")
    @classmethod
    def _range(cls, v: int, info: Any) -> int:
        hi = {"threads": 16, "queue_windows": 100_000}[info.field_name]
        if not 1 <= v <= hi:
            raise ValueError(f"{info.field_name} {v}; accepted: 1..{hi}")
        return v

    @field_validator("models")
    @classmethod
    def _unique(cls, v: list[ModelBinding]) -> list[ModelBinding]:
        seen: set[str] = set()
        for b in v:
            if b.name in seen:
                raise ValueError(f"model name {b.name!r} is used twice; names must be unique")
            seen.add(b.name)
        return v
