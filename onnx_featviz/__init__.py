"""onnx-featviz: see inside any CNN exported to ONNX, exactly as it will be deployed."""

__version__ = "0.1.0"

from onnx_featviz.api import (  # noqa: E402
    Inspector,
    PrepOptions,
    compute_activations,
    inspect_model,
    load_model,
    predict,
    read_model_filters,
)
from onnx_featviz.errors import (  # noqa: E402
    FeatvizError,
    InputError,
    LayerNotFoundError,
    ModelError,
    ProviderError,
)

__all__ = [
    "FeatvizError", "InputError", "Inspector", "LayerNotFoundError", "ModelError", "PrepOptions",
    "ProviderError", "__version__", "compute_activations", "inspect_model", "load_model",
    "predict", "read_model_filters",
]
