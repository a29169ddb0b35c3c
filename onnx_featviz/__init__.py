"""onnx-featviz: see inside any CNN exported to ONNX, exactly as it will be deployed.

The names of the audit (``audit``), dataset (``io.data``) and feature-visualization
(``synthesis``) packages are re-exported lazily, so ``import onnx_featviz`` stays as cheap
as the core engine (those modules pull in matplotlib figures and thread pools).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from onnx_featviz.api import (  # noqa: E402
    CamOptions,
    CamReport,
    Inspector,
    PrepOptions,
    compute_activations,
    inspect_model,
    load_model,
    predict,
    read_model_filters,
    render_backprop,
    render_cam,
)
from onnx_featviz.errors import (  # noqa: E402
    FeatvizError,
    InputError,
    LayerNotFoundError,
    ModelError,
    ProviderError,
)

_LAZY = {
    "CompareOptions": "audit.compare", "CompareResult": "audit.compare", "compare_models": "audit.compare",
    "StatsOptions": "audit.stats", "StatsResult": "audit.stats", "dataset_stats": "audit.stats",
    "open_data": "io.data",
    "MaximizeOptions": "synthesis.run", "MaximizeResult": "synthesis.run",
    "maximize": "synthesis.run", "InvertOptions": "synthesis.run",
    "InvertResult": "synthesis.run", "invert": "synthesis.run",
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
    "MaximizeResult", "ModelError", "PrepOptions", "ProviderError", "StatsOptions", "StatsResult",
    "__version__", "compare_models", "compute_activations", "dataset_stats", "inspect_model",
    "invert", "load_model", "maximize", "open_data", "predict", "read_model_filters",
    "render_backprop", "render_cam",
]
