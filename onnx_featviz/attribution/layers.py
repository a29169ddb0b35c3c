"""Which tensor a CAM explains and which one scores its targets: the default CAM layer (the
tensor the classifier head's pooling reads), layer checks, the score tensor and its class scores.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

import onnx_featviz.graph.catalog as catalog
from onnx_featviz.errors import InputError
from onnx_featviz.inspector import (
    Inspector,
    check_exposable,
    module_tensor,
    spatial_size,
    stage_tensors,
)
from onnx_featviz.structs import (
    ModelInfo,
    Shape,
)


def cam_layer(inspector: Inspector, layer: str | int | None = None) -> str:
    """Return the tensor a CAM uses: a module's output, a conv layer's activation output, else
    the layer output.

    Default (``head_input``): the tensor the head's global pooling or flatten reads, i.e. the
    output of the last block that still has spatial dims (``layer4`` on ResNet, ``features``
    on VGG and DenseNet, ``stages.3`` on ConvNeXt); without such a head, the last conv layer
    whose output has spatial size > 1.

    Raises:
        InputError: the layer has no spatial dims; LayerNotFoundError: no such layer.
    """
    info = inspector.info
    if layer is None:
        found = head_input(info) or _last_spatial_conv(info)
        if found is None:
            raise InputError("the model has no conv layer with spatial size > 1; name a layer "
                             "with spatial dims (N, C, h, w) via layer=")
        return found
    lay = inspector.layer(layer)
    check_exposable(lay)
    tensor = module_tensor(info, layer) or stage_tensors(lay, "act")[0]
    shape = _tensor_shape(info, tensor)
    layout = info.layout(tensor)
    if shape is not None and (len(shape) != 4 or spatial_size(shape, layout) == 1):
        raise InputError(f"layer {lay.name!r} (tensor {tensor!r}, shape {shape}) has no "
                         "spatial dims; a CAM needs an (N, C, h, w) or (N, h, w, C) layer "
                         "with h*w > 1: pick a conv layer or a block's output")
    return tensor


#: Ops of a classifier head that read the last spatial block (global pooling, flatten).
_HEAD_OPS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax",
                       "Flatten", "Reshape", "AveragePool"})


def head_input(info: ModelInfo) -> str | None:
    """Return the tensor the head's global pooling or flatten reads, or None.

    That is the input of the last (graph order) pooling, mean or flatten node whose input is a
    4-D ``NCHW`` / ``NHWC`` tensor with spatial size > 1 and whose output has no spatial extent
    left (rank below 4, or spatial size 1).
    """
    producers = {o: lay for lay in info.layers for o in lay.outputs if o}
    for lay in reversed(info.layers):
        if lay.op_type not in _HEAD_OPS or not lay.inputs or not lay.exposable:
            continue
        source = lay.inputs[0]
        layout = info.layout(source)
        shape = _tensor_shape(info, source)
        if source not in producers or layout not in ("NCHW", "NHWC") or shape is None:
            continue
        if len(shape) != 4 or spatial_size(shape, layout) <= 1:
            continue
        out = lay.shape
        if out is not None and (len(out) < 4 or spatial_size(out, info.layout(lay.output)) == 1):
            return source
    return None


def _last_spatial_conv(info: ModelInfo) -> str | None:
    """Return the activation output of the last conv layer with spatial size > 1, or None."""
    for lay in reversed(info.conv_layers):
        tensor = stage_tensors(lay, "act")[0]
        if spatial_size(_tensor_shape(info, tensor), info.layout(tensor)) > 1:
            return tensor
    return None


def _tensor_shape(info: ModelInfo, tensor: str) -> Shape | None:
    """Return the shape of ``tensor`` when it is a layer's output, else None."""
    return next((lay.shape for lay in info.layers if lay.output == tensor), None)


def score_tensor(inspector: Inspector, score: str | int | None = None) -> str:
    """Return the tensor CAM targets are scored on.

    Args:
        score: a layer or tensor holding one score per class, (N, classes); None: the
            pre-softmax logits when the graph ends in Softmax, else output 0.
    """
    if score is None:
        return catalog.find_softmax_logits(inspector.model) or inspector.info.outputs[0].name
    if isinstance(score, str) and score in [o.name for o in inspector.info.outputs]:
        return score
    return inspector.layer(score).output


def _scores(inspector: Inspector, batch: NDArray[np.generic], score: str | int | None = None
            ) -> tuple[str, NDArray[np.float32], tuple[int, ...]]:
    """Return the score tensor's name, its values as (N, classes) and its real shape."""
    name = score_tensor(inspector, score)
    values = inspector.run(batch, [name], exposed=_score_exposure(inspector, name))[name]
    return name, _class_scores(values, name), tuple(values.shape)


def _score_exposure(inspector: Inspector, score: str) -> tuple[str, ...] | None:
    """The plain session serves a model output; any other score tensor must be exposed."""
    return () if score in [o.name for o in inspector.info.outputs] else None


def _class_scores(values: NDArray[np.generic], name: str) -> NDArray[np.float32]:
    """Return (N, classes) float32 scores; trailing size-1 axes ((N, C, 1, 1) heads) are dropped.

    Raises:
        InputError: the tensor is not one score per class (a feature map, a detection head).
    """
    arr = np.asarray(values, np.float32)
    shape = arr.shape
    while arr.ndim > 2 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(f"tensor {name!r} has shape {shape}, not one score per class "
                         "(N, classes); CAM targets need a classifier score: pass score= with "
                         "the name of an (N, classes) tensor or layer (ModelInfo.layers lists "
                         "every tensor with its shape)")
    return arr

