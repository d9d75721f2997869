"""ONNX anomaly models on live data (issue 6).

A model binding names the tags that form a model's input, the sample rate, the window
and stride, and a threshold with hysteresis. The gateway feeds every batch of readings
to :meth:`InferenceEngine.observe`; :meth:`InferenceEngine.run` scores complete windows
off the event loop and reports :class:`AnomalyEvent` starts and ends. See README.md.

Importing this package (and :mod:`inference.config`) is cheap: numpy and onnxruntime
(~33 MiB) are imported only when the engine is, on first use of ``InferenceEngine``,
``ModelRefused`` or ``AnomalyEvent`` from here, or ``import inference.engine``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import InferenceConfig, ModelBinding, Scaling, Threshold
    from .engine import InferenceEngine
    from .hysteresis import AnomalyEvent
    from .model import ModelRefused

__all__ = [
    "AnomalyEvent",
    "InferenceConfig",
    "InferenceEngine",
    "ModelBinding",
    "ModelRefused",
    "Scaling",
    "Threshold",
]

# The engine imports numpy and onnxruntime, the config models pydantic (the daemon runs on
# plain copies of them: gateway/plainconfig.py): each on first use.
_LAZY = {
    "InferenceEngine": "engine",
    "ModelRefused": "model",
    "AnomalyEvent": "hysteresis",
    **dict.fromkeys(("InferenceConfig", "ModelBinding", "Scaling", "Threshold"), "config"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
