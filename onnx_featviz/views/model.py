"""One-call views of a model: its description, activations, filters, predictions; a hand-made
conv model from a filter bank.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

import onnx_featviz.graph.catalog as catalog
import onnx_featviz.graph.construction as construction
import onnx_featviz.graph.weights as weights
import onnx_featviz.io.files as fileio
import onnx_featviz.render.text as report
import onnx_featviz.runtime as runtime
from onnx_featviz.errors import InputError, ModelError
from onnx_featviz.inspector import Images, Inspector, ModelSource, PrepOptions, load_model
from onnx_featviz.io import external as model_files
from onnx_featviz.structs import (
    ModelInfo,
    Prediction,
)


def describe(inspector: Inspector) -> dict[str, Any]:
    """Return a JSON-ready summary of the inspector's model (see ``report.describe_model``).

    ``"warning"`` says when the installed onnxruntime cannot run the model as it is (an IR
    version newer than it reads), else it is None.
    """
    summary = report.describe_model(inspector.info, inspector.spec, inspector.preprocessing,
                                    inspector.labels)
    return {**summary, "warning": ir_warning(inspector.model)}


def ir_warning(model: onnx.ModelProto) -> str | None:
    """Return why onnxruntime cannot run ``model`` as it is (its IR version), else None."""
    try:
        fitted = runtime.fit_ir_version(model)
    except ModelError as err:
        return str(err)
    if fitted is None:
        return None
    return (f"IR version {model.ir_version} is newer than onnxruntime reads (<= {fitted}); "
            f"featviz runs the model as IR {fitted}")


def build_conv(filters_file: Path | None, *, preset: str | None, out: Path,
               activation: str = "relu") -> Path:
    """Write a one-conv model built from a filter file or the ``edges`` preset; return ``out``."""
    bank: NDArray[np.generic]
    if preset == "edges":
        bank = construction.edge_filters()
    elif filters_file is not None:
        bank = _read_filter_file(filters_file)
    else:
        raise InputError("give a filter file or the 'edges' preset")
    model_files.save_model(construction.build_conv_model(bank, activation=activation), out)
    return out


def _read_filter_file(path: Path) -> NDArray[np.generic]:
    if path.suffix.lower() in (".npy", ".npz"):
        return next(iter(fileio.load_array_file(path).values()))
    return construction.parse_filter_text(fileio.read_text(path), source=str(path))


# -- one-shot functions -------------------------------------------------------------------
def inspect_model(model: ModelSource) -> ModelInfo:
    """Return the layer catalog of a model (shape inference only; no session)."""
    return catalog.read_catalog(load_model(model))


def compute_activations(model: ModelSource, images: Images,
                        layers: Sequence[str | int] | None = None, *, stage: str = "conv",
                        provider: str = "auto", prep: PrepOptions | None = None
                        ) -> dict[str, NDArray[np.generic]]:
    """Return the tensors of ``layers`` for ``images`` (see ``Inspector.activations``)."""
    with Inspector(model, provider, prep=prep) as inspector:
        return inspector.activations(images, layers, stage=stage)


def read_model_filters(model: ModelSource, layer: str | int) -> weights.Filters:
    """Return the filters of one conv layer (see ``weights.read_filters``)."""
    proto = load_model(model)
    return weights.read_filters(proto, catalog.read_catalog(proto).layer(layer))


def predict(model: ModelSource, images: Images, *, top_k: int = 5, provider: str = "auto",
            prep: PrepOptions | None = None) -> list[Prediction]:
    """Return the top-k classes per input (see ``Inspector.predict``)."""
    with Inspector(model, provider, prep=prep) as inspector:
        return inspector.predict(images, top_k)

