"""onnx-featviz: see inside any CNN exported to ONNX, exactly as it will be deployed."""

from typing import Any

__version__ = "0.1.0"
_API = ("Inspector", "PrepOptions", "compute_activations", "inspect_model", "load_model",
        "predict", "read_model_filters")


def __getattr__(name: str) -> Any:  # TEMPORARY while modules are being written
    if name in _API:
        from onnx_featviz import api

        return getattr(api, name)
    raise AttributeError(name)
