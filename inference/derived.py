"""What the running gateway derives from a validated model binding: written once for
the pydantic models (config.py) and the daemon's plain copies of them
(gateway/plainconfig.py), which run without pydantic. Pure: no pydantic, no numpy, no
onnxruntime."""

from __future__ import annotations

from pathlib import Path

SHIPPED_MODELS = Path(__file__).resolve().with_name("models")
"""Folder of the models that ship with the package (``model: default`` names one)."""


class BindingDerived:
    """Of a model binding."""

    __slots__ = ()

    def model_path(self, base_dir: Path) -> Path:
        """The file to load: a shipped model for a bare name, else against ``base_dir``."""
        m = self.model
        if not m.is_absolute() and len(m.parts) == 1 and not m.suffix:
            return SHIPPED_MODELS / f"{m}.onnx"
        return m if m.is_absolute() else base_dir / m

    @property
    def period_ns(self) -> int:
        return self.sample_ms * 1_000_000


class InferenceDerived:
    """Of the inference section."""

    __slots__ = ()

    def input_tags(self) -> set[str]:
        """Every tag some model reads: the gateway checks they are configured tags."""
        return {t for b in self.models for t in b.inputs}
