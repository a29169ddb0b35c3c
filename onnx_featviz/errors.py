"""Exception hierarchy: every error the library raises is a ``FeatvizError``."""

from __future__ import annotations


class FeatvizError(Exception):
    """Base class of every error raised by onnx_featviz."""


class ModelError(FeatvizError):
    """The model is unreadable, invalid, or uses something this tool does not support."""


class LayerNotFoundError(FeatvizError, LookupError):
    """A layer or tensor name (or index) does not exist in the model."""


class InputError(FeatvizError):
    """A batch, image or input file does not fit the model (shape, dtype, range, format)."""


class ProviderError(FeatvizError):
    """The requested onnxruntime execution provider is not the one in use."""
