"""Read conv filters and biases from a model as float32 ``(O, I/groups, kH, kW)`` arrays.

Pure functions of a ``ModelProto`` and a ``Layer``: no session, no disk. A weight is followed
from the conv's weight input back to constant data through ``Identity``, ``Cast``,
``DequantizeLinear``, ``Transpose``, ``Reshape``, ``Constant`` and ``ConstantOfShape`` nodes;
anything else means the weight is computed at run time, which is reported as a ``ModelError``.

Orientation of the returned ``Filters.weight`` (axis names: O output channels, I input channels,
g groups):

- ``Conv`` / ``QLinearConv`` / ``ConvInteger``: as ONNX stores them, ``(O, I/g, kH, kW)``.
- ``ConvTranspose``: ONNX stores ``(I, O/g, kH, kW)``; it is returned as ``(O, I/g, kH, kW)``
  (``transposed=True``) by reshaping to ``(g, I/g, O/g, kH, kW)``, swapping the two channel axes
  and reshaping to ``(O, I/g, kH, kW)``. There is no spatial flip: ``weight[o, i]`` is exactly the
  ``kH x kW`` patch a one-hot input at input channel ``g_i * I/g + i`` scatters into output
  channel ``o`` (for ``o`` in that input channel's group).
- 1-D convs (kernel ``(kW,)``) are returned as ``(O, I/g, 1, kW)``.
- 3-D convs (kernel ``(kD, kH, kW)``) are refused with a ``ModelError``: a volumetric kernel is
  not a 2-D filter; read the initializer directly with ``onnx.numpy_helper.to_array``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import external_data_helper, helper, numpy_helper

from onnx_featviz.errors import ModelError
from onnx_featviz.structs import Layer, html_table

logger = logging.getLogger(__name__)

#: Nodes a weight may pass through and still count as constant data.
CONSTANT_PATH_OPS = frozenset(
    {"Constant", "ConstantOfShape", "Identity", "Cast", "DequantizeLinear", "Transpose",
     "Reshape"}
)
#: Op types whose weights ``read_filters`` reads.
FILTER_OPS = frozenset({"Conv", "ConvTranspose", "QLinearConv", "ConvInteger"})
_MAX_DEPTH = 64  # longest chain of pass-through nodes followed before giving up


@dataclass(frozen=True, slots=True)
class Filters:
    """The filters and bias of one conv layer (arrays are read-only).

    Attributes:
        weight: float32 ``(O, I/groups, kH, kW)``, dequantized; see the module docstring for the
            ConvTranspose orientation and 1-D kernels. NaN/Inf are kept as they are.
        bias: float32 ``(O,)`` or ``None`` when the layer has no bias.
        groups: the ``group`` attribute (1 for a plain conv, ``O`` for a depthwise one).
        transposed: ``True`` for ConvTranspose (weight re-oriented from ONNX's ``(I, O/g, ...)``).
        layer: the layer's node name.
        nonfinite: number of NaN/Inf values in ``weight`` and ``bias`` together.
        stored_dtype: numpy dtype name of the stored weight data (``"float16"``, ``"int8"``...).
    """

    weight: NDArray[np.float32]
    bias: NDArray[np.float32] | None
    groups: int
    transposed: bool
    layer: str
    nonfinite: int = 0
    stored_dtype: str = "float32"

    def __repr__(self) -> str:
        return (f"Filters({self.layer!r}, weight {'x'.join(map(str, self.weight.shape))} "
                f"(stored {self.stored_dtype}), bias {'none' if self.bias is None else 'yes'}, "
                f"groups {self.groups}{', transposed' if self.transposed else ''})")

    def _repr_html_(self) -> str:
        finite = self.weight[np.isfinite(self.weight)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        return html_table(("filters", ""), [
            ("layer", self.layer), ("weight", "x".join(map(str, self.weight.shape))),
            ("stored as", self.stored_dtype), ("groups", self.groups),
            ("transposed", self.transposed), ("bias", self.bias is not None),
            ("range", f"{low:.4g} .. {high:.4g}"), ("NaN/Inf", self.nonfinite)])


@dataclass(frozen=True, slots=True)
class _Graph:
    """Lookup tables over the main graph and its subgraphs (outer names win)."""

    initializers: dict[str, onnx.TensorProto]
    producers: dict[str, tuple[int, onnx.NodeProto]]
    inputs: frozenset[str]
    nodes: tuple[onnx.NodeProto, ...]


def read_filters(model: onnx.ModelProto, layer: Layer) -> Filters:
    """Read the filters and bias of one conv layer as float32.

    Args:
        model: the model holding the layer (not modified). External data must be loaded.
        layer: a Conv, ConvTranspose, QLinearConv or ConvInteger layer (float Conv of a QDQ
            model included: its weight is followed through DequantizeLinear).

    Returns:
        ``Filters`` with ``weight`` float32 ``(O, I/groups, kH, kW)`` and ``bias`` float32
        ``(O,)`` or ``None``. Quantized weights are ``(w - zero_point) * scale`` per tensor or
        per output channel; ConvInteger weights are ``w - zero_point`` in integer units (the op
        has no scale); a QLinearConv int32 bias is scaled by ``x_scale * w_scale``.

    Raises:
        ModelError: the layer is not a conv, its node is not in the model, its weight (or bias)
            is computed at run time or is a graph input, its external data is not loaded, or the
            kernel is not 1-D or 2-D.
    """
    return _read(_index(model), layer)


def read_all_filters(model: onnx.ModelProto, layers: Sequence[Layer]) -> dict[str, Filters]:
    """Read the filters of several conv layers, keyed by layer name, in the given order.

    Args:
        model: the model holding the layers (not modified).
        layers: conv layers, e.g. ``ModelInfo.conv_layers``.

    Returns:
        Layer name -> ``Filters`` (see ``read_filters``).

    Raises:
        ModelError: as ``read_filters``, for the first layer that fails.
    """
    graph = _index(model)
    return {layer.name: _read(graph, layer) for layer in layers}


def _read(graph: _Graph, layer: Layer) -> Filters:
    if layer.op_type not in FILTER_OPS:
        raise ModelError(
            f"layer {layer.name!r} is a {layer.op_type}, which has no filters; filters exist "
            f"for {', '.join(sorted(FILTER_OPS))} layers (see ModelInfo.conv_layers)"
        )
    node = _find_node(graph, layer)
    weight_index = 3 if layer.op_type == "QLinearConv" else 1
    raw = _constant(graph, _input(node, weight_index), layer, "weight")
    stored = _source_dtype(graph, _input(node, weight_index))
    weight, bias = _dequantized(graph, node, layer, raw)
    groups = _int_attr(node, "group", 1)
    weight = _as_2d_kernel(weight, layer)
    if layer.op_type == "ConvTranspose":
        weight = _transpose_kernel(weight, groups, layer)
    if bias is not None:
        bias = bias.reshape(-1)
    nonfinite = int(np.count_nonzero(~np.isfinite(weight)))
    nonfinite += 0 if bias is None else int(np.count_nonzero(~np.isfinite(bias)))
    if nonfinite:
        logger.warning("layer %r has %d NaN/Inf filter values", layer.name, nonfinite)
    return Filters(
        weight=_frozen(weight), bias=None if bias is None else _frozen(bias), groups=groups,
        transposed=layer.op_type == "ConvTranspose", layer=layer.name, nonfinite=nonfinite,
        stored_dtype=stored,
    )


def _dequantized(
    graph: _Graph, node: onnx.NodeProto, layer: Layer, raw: NDArray[np.generic]
) -> tuple[NDArray[np.float32], NDArray[np.float32] | None]:
    """Return (weight, bias) as float32 for the op type; ``raw`` is the stored weight."""
    if layer.op_type == "QLinearConv":
        w_scale = _constant(graph, _input(node, 4), layer, "weight scale")
        w_zero = _optional(graph, node, 5, layer, "weight zero point")
        weight = _dequantize(raw, w_scale, w_zero, axis=0)
        bias_raw = _optional(graph, node, 8, layer, "bias")
        if bias_raw is None:
            return weight, None
        x_scale = _constant(graph, _input(node, 1), layer, "input scale")
        scale = x_scale.astype(np.float64) * w_scale.astype(np.float64)
        return weight, _dequantize(bias_raw, scale.reshape(-1), None, axis=0)
    if layer.op_type == "ConvInteger":
        w_zero = _optional(graph, node, 3, layer, "weight zero point")
        return _dequantize(raw, np.ones((), np.float32), w_zero, axis=0), None
    bias = _optional(graph, node, 2, layer, "bias")
    return raw.astype(np.float32), None if bias is None else bias.astype(np.float32)


def _dequantize(
    x: NDArray[np.generic], scale: NDArray[np.generic], zero: NDArray[np.generic] | None,
    *, axis: int, block_size: int = 0,
) -> NDArray[np.float32]:
    """``(x - zero) * scale`` in float64, per tensor or along ``axis`` (blocked if asked)."""
    values = x.astype(np.float64)
    axis = axis % max(values.ndim, 1)

    def spread(param: NDArray[np.generic]) -> NDArray[np.float64]:
        out = param.astype(np.float64)
        if out.ndim == 0 or values.ndim == 0:
            return out
        if block_size > 0:  # blocked quantization (opset 21): one parameter per block
            out = np.repeat(out, block_size, axis=axis)
            return np.take(out, np.arange(values.shape[axis]), axis=axis)
        shape = [1] * values.ndim
        shape[axis] = -1
        return out.reshape(shape)

    if zero is not None:
        values = values - spread(zero)
    return (values * spread(scale)).astype(np.float32)


def _index(model: onnx.ModelProto) -> _Graph:
    initializers: dict[str, onnx.TensorProto] = {}
    producers: dict[str, tuple[int, onnx.NodeProto]] = {}
    nodes: list[onnx.NodeProto] = []
    inputs: set[str] = set()
    for depth, graph in enumerate(_graphs(model.graph)):
        for init in graph.initializer:
            initializers.setdefault(init.name, init)
        inputs.update(i.name for i in graph.input if depth == 0)
        for node in graph.node:
            for out in node.output:
                producers.setdefault(out, (len(nodes), node))
            nodes.append(node)
    inputs.difference_update(initializers)
    return _Graph(initializers, producers, frozenset(inputs), tuple(nodes))


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph, then every subgraph of If/Loop/Scan attributes, depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.HasField("g") else list(attr.graphs)
            for sub in subs:
                yield from _graphs(sub)


def _find_node(graph: _Graph, layer: Layer) -> onnx.NodeProto:
    outputs = [o for o in layer.outputs if o]
    for node in graph.nodes:
        if node.op_type == layer.op_type and tuple(node.input) == tuple(layer.inputs) and (
            not outputs or [o for o in node.output if o] == outputs
        ):
            return node
    raise ModelError(
        f"layer {layer.name!r} ({layer.op_type}, inputs {list(layer.inputs)}) is not a node of "
        "this model; take the layer from read_catalog of the same model"
    )


def _input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if index < len(node.input) else ""


def _optional(
    graph: _Graph, node: onnx.NodeProto, index: int, layer: Layer, what: str
) -> NDArray[np.generic] | None:
    name = _input(node, index)
    return _constant(graph, name, layer, what) if name else None


def _constant(graph: _Graph, name: str, layer: Layer, what: str, depth: int = 0) -> NDArray[Any]:
    """Follow ``name`` back to constant data; the array keeps its stored dtype."""
    if not name:
        raise ModelError(f"layer {layer.name!r} has no {what} input; the model is malformed")
    if name in graph.initializers:
        return _tensor_array(graph.initializers[name], layer)
    if name in graph.inputs:
        raise ModelError(
            f"{what} of layer {layer.name!r} is the graph input {name!r}, fed at run time; "
            "store it as an initializer or pass the weights explicitly"
        )
    if name not in graph.producers or depth > _MAX_DEPTH:
        raise ModelError(
            f"{what} {name!r} of layer {layer.name!r} has no initializer or producing node; "
            "the model is malformed (check it with onnx.checker.check_model)"
        )
    index, node = graph.producers[name]
    if node.op_type not in CONSTANT_PATH_OPS or node.domain not in ("", "ai.onnx"):
        node_name = node.name or f"{node.op_type}_{index}"
        raise ModelError(
            f"{what} of layer {layer.name!r} is computed at run time by node {node_name!r} "
            f"({node.op_type}); export with constant folding (do_constant_folding=True) or pass "
            "the weights explicitly"
        )
    return _through(graph, node, layer, what, depth + 1)


def _through(
    graph: _Graph, node: onnx.NodeProto, layer: Layer, what: str, depth: int
) -> NDArray[Any]:
    """Evaluate one constant-path node whose inputs are constants."""
    def arg(i: int) -> NDArray[Any]:
        return _constant(graph, node.input[i], layer, what, depth)

    if node.op_type == "Constant":
        return _constant_value(node, layer)
    if node.op_type == "Identity":
        return arg(0)
    if node.op_type == "Cast":
        return arg(0).astype(helper.tensor_dtype_to_np_dtype(_int_attr(node, "to", 1)))
    if node.op_type == "ConstantOfShape":
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        fill = numpy_helper.to_array(value) if value is not None else np.zeros(1, np.float32)
        return np.full(tuple(int(d) for d in arg(0)), fill.reshape(-1)[0], dtype=fill.dtype)
    if node.op_type == "Transpose":
        perm = [int(p) for a in node.attribute if a.name == "perm" for p in a.ints]
        return np.transpose(arg(0), perm or None)
    if node.op_type == "Reshape":
        return _reshape(arg(0), arg(1), _int_attr(node, "allowzero", 0))
    # DequantizeLinear: x, scale[, zero point]; axis default 1, block_size (opset 21)
    zero = arg(2) if len(node.input) > 2 and node.input[2] else None
    return _dequantize(arg(0), arg(1), zero, axis=_int_attr(node, "axis", 1),
                       block_size=_int_attr(node, "block_size", 0))


def _source_dtype(graph: _Graph, name: str) -> str:
    """Numpy dtype name of the data a (resolvable) constant path starts from."""
    for _ in range(_MAX_DEPTH):
        if name in graph.initializers:
            return str(helper.tensor_dtype_to_np_dtype(graph.initializers[name].data_type))
        node = graph.producers[name][1]
        tensors = [a.t for a in node.attribute if a.name == "value" and a.HasField("t")]
        if node.op_type in ("Constant", "ConstantOfShape"):
            return str(helper.tensor_dtype_to_np_dtype(tensors[0].data_type)) if tensors else (
                "int64" if any("int" in a.name for a in node.attribute) else "float32")
        name = node.input[0]
    return "float32"


def _reshape(data: NDArray[Any], shape: NDArray[Any], allowzero: int) -> NDArray[Any]:
    dims = [int(d) for d in shape.reshape(-1)]
    if not allowzero:  # ONNX: 0 copies the input dimension
        dims = [data.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return data.reshape(dims)


def _constant_value(node: onnx.NodeProto, layer: Layer) -> NDArray[Any]:
    for attr in node.attribute:
        if attr.name == "value":
            return _tensor_array(attr.t, layer)
        if attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
            value = helper.get_attribute_value(attr)
            dtype = np.float32 if "float" in attr.name else np.int64
            return np.asarray(value, dtype=dtype)
    raise ModelError(
        f"Constant node {node.name!r} feeding layer {layer.name!r} has no dense value "
        "(sparse or string constants are not filters); store the weight as an initializer"
    )


def _tensor_array(tensor: onnx.TensorProto, layer: Layer) -> NDArray[Any]:
    if external_data_helper.uses_external_data(tensor) and not tensor.HasField("raw_data"):
        raise ModelError(
            f"tensor {tensor.name!r} of layer {layer.name!r} is stored in an external file that "
            "was not loaded; load the model with its external data (io.external.load_model, or "
            "onnx.load with load_external_data=True)"
        )
    return numpy_helper.to_array(tensor)


def _int_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


def _as_2d_kernel(weight: NDArray[np.float32], layer: Layer) -> NDArray[np.float32]:
    """Return a 4-D ``(O, I, kH, kW)`` array: a 1-D kernel gets ``kH = 1``."""
    if weight.ndim == 4:
        return weight
    if weight.ndim == 3:
        return weight[:, :, np.newaxis, :]
    if weight.ndim == 5:
        raise ModelError(
            f"layer {layer.name!r} is a 3-D conv with kernel shape {weight.shape} "
            "(O, I, kD, kH, kW); 3-D kernels are not drawable as 2-D filters; read the "
            "initializer directly with onnx.numpy_helper.to_array"
        )
    raise ModelError(
        f"weight of layer {layer.name!r} has shape {weight.shape}; expected a conv kernel "
        "(O, I, kW) or (O, I, kH, kW)"
    )


def _transpose_kernel(
    weight: NDArray[np.float32], groups: int, layer: Layer
) -> NDArray[np.float32]:
    """ONNX ConvTranspose ``(I, O/g, kH, kW)`` -> ``(O, I/g, kH, kW)``, no spatial flip."""
    c_in, c_out_g, k_h, k_w = weight.shape
    if groups < 1 or c_in % groups:
        raise ModelError(
            f"ConvTranspose {layer.name!r} has {c_in} input channels and group={groups}, "
            "which does not divide them; fix the group attribute of the model"
        )
    grouped = weight.reshape(groups, c_in // groups, c_out_g, k_h, k_w)
    return grouped.transpose(0, 2, 1, 3, 4).reshape(groups * c_out_g, c_in // groups, k_h, k_w)


def _frozen(array: NDArray[np.float32]) -> NDArray[np.float32]:
    out = np.ascontiguousarray(array, dtype=np.float32)
    if out is array or out.base is not None:
        out = out.copy()
    out.setflags(write=False)
    return out
