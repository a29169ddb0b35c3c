"""onnx-featviz: see inside any CNN exported to ONNX, exactly as it will be deployed.

Every public name is re-exported lazily, on first use, so ``import onnx_featviz`` (and the
``featviz`` command line's start) imports neither onnx, onnxruntime, numpy nor matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API_NAMES = (
    "CamOptions", "CamReport", "Inspector", "PrepOptions", "compute_activations",
    "inspect_model", "load_model", "predict", "read_model_filters", "render_backprop",
    "render_cam",
)
_ERROR_NAMES = ("FeatvizError", "InputError", "LayerNotFoundError", "ModelError", "ProviderError")
_LAZY = {
    **dict.fromkeys(_API_NAMES, "api"), **dict.fromkeys(_ERROR_NAMES, "errors"),
    "CompareOptions": "audit.compare", "CompareResult": "audit.compare",
    "compare_models": "audit.compare",
    "StatsOptions": "audit.stats", "StatsResult": "audit.stats", "dataset_stats": "audit.stats",
    "open_data": "io.data",
    "MaximizeOptions": "synthesis.run", "MaximizeResult": "synthesis.run",
    "maximize": "synthesis.run", "InvertOptions": "synthesis.run",
    "InvertResult": "synthesis.run", "invert": "synthesis.run",
    "ReportOptions": "reporting", "build_report": "reporting", "save_report": "reporting",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'onnx_featviz' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"onnx_featviz.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CamOptions", "CamReport", "CompareOptions", "CompareResult", "FeatvizError", "InputError",
    "Inspector", "InvertOptions", "InvertResult", "LayerNotFoundError", "MaximizeOptions",
    "MaximizeResult", "ModelError", "PrepOptions", "ProviderError", "ReportOptions",
    "StatsOptions", "StatsResult",
    "__version__", "compare_models", "compute_activations", "dataset_stats", "inspect_model",
    "invert", "load_model", "maximize", "open_data", "predict", "read_model_filters",
    "render_backprop", "render_cam", "build_report", "save_report",
]
