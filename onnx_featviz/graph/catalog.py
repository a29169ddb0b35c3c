"""Read a ModelProto: inputs, outputs, opset and every node as a ``Layer`` (pure functions).

Names: a node keeps its own name when it is non-empty and the first with that name; every other
node gets ``<op_type>_<index>`` (``_1``, ``_2``... appended on a clash). Main-graph nodes come first
(``Layer.index`` = position in ``graph.node``), then the nodes of If/Loop/Scan subgraphs, which are
listed with ``exposable=False``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import AttributeProto, helper

from onnx_featviz.structs import ACTIVATION_OPS, CONV_OPS, Layer, ModelInfo, Shape, TensorSpec

log = logging.getLogger(__name__)

#: Nodes an activation link may pass through (one input, same values up to scale/shift).
_PASSTHROUGH_OPS = frozenset({"BatchNormalization", "Identity"})
#: com.microsoft quantized activations that may follow a QLinearConv.
_QLINEAR_ACTIVATIONS = frozenset({"QLinearLeakyRelu", "QLinearSigmoid", "QLinearSoftmax"})
#: Ops a final Softmax may pass through on its way to a graph output.
_SHAPE_OPS = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Dropout"})
#: ``x * gate(x)`` activations written as two nodes: gate op -> activation name.
_GATED = {"Sigmoid": "SiLU", "HardSigmoid": "HardSwish"}
_MAX_LINK_STEPS = 8
#: Ops a conv weight may pass through between its initializer and the conv (params counting).
_WEIGHT_PATH_OPS = frozenset({"DequantizeLinear", "Identity", "Cast"})

TypeMap = dict[str, tuple[str, Shape | None]]
#: Quantized ops whose first output has a known (scale, zero point): input slots of y_scale, y_zp.
QLINEAR_OUTPUT_QPARAMS = {
    "QLinearConv": (6, 7), "QLinearMatMul": (6, 7), "QLinearAdd": (6, 7), "QLinearMul": (6, 7),
    "QLinearLeakyRelu": (3, 4), "QLinearSigmoid": (3, 4), "QLinearSoftmax": (3, 4),
    "QLinearAveragePool": (3, 4), "QLinearGlobalAveragePool": (3, 4), "QLinearConcat": (0, 1),
    "QGemm": (7, 8),
}
#: Ops that move or select int8 values without changing them, so their output keeps the input's
#: scale and zero point (QOperator graphs run MaxPool, Flatten, Reshape... on int8 directly).
SCALE_PRESERVING_OPS = frozenset({
    "MaxPool", "GlobalMaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
    "Identity", "Slice", "Split", "DepthToSpace", "SpaceToDepth",
})


def quant_params_node(tensor: str, producers: Mapping[str, onnx.NodeProto]
                      ) -> onnx.NodeProto | None:
    """The node whose inputs hold ``tensor``'s scale / zero point, or None.

    That is the QuantizeLinear or quantized op (``QLINEAR_OUTPUT_QPARAMS``, with a y_scale) that
    makes ``tensor`` as its first output, reached back through ``SCALE_PRESERVING_OPS`` (the
    int8 output of a MaxPool after a QLinearConv has the QLinearConv's y_scale). The caller
    checks that ``tensor`` is an integer tensor.
    """
    for _ in range(64):  # scale-preserving chains are short; bounded against cycles
        node = producers.get(tensor)
        if node is None:
            return None
        if node.op_type in SCALE_PRESERVING_OPS and node.input and node.input[0]:
            tensor = node.input[0]
            continue
        if node.output[0] != tensor:
            return None
        if node.op_type == "QuantizeLinear":
            return node
        slots = QLINEAR_OUTPUT_QPARAMS.get(node.op_type)
        if slots is None or len(node.input) <= slots[0] or not node.input[slots[0]]:
            return None
        return node
    return None


@dataclass(frozen=True, slots=True)
class _Graph:
    """Lookup tables of the main graph used while building layers."""

    nodes: tuple[onnx.NodeProto, ...]
    consumers: Mapping[str, tuple[onnx.NodeProto, ...]]
    producers: Mapping[str, onnx.NodeProto]
    const_sizes: Mapping[str, int]


def read_catalog(
    model: onnx.ModelProto,
    *,
    shapes: Mapping[str, Shape] | None = None,
    dtypes: Mapping[str, str] | None = None,
) -> ModelInfo:
    """List the model's inputs, outputs and every node as a ``Layer``.

    Args:
        model: the model (not modified).
        shapes: tensor -> shape from a real run; fills what shape inference could not give.
        dtypes: tensor -> numpy dtype name from a real run; fills gaps likewise.

    Returns:
        ``ModelInfo`` with layers in graph order (subgraph nodes last, not exposable).
    """
    types = merge_types(_all_types(model), shapes or {}, dtypes or {})
    graph = _index_graph(model.graph)
    names = _assign_names([n for n in model.graph.node], set())
    layers = [_main_layer(i, node, names[i], graph, types) for i, node in enumerate(graph.nodes)]
    layers += _subgraph_layers(model.graph, names, set(names), len(layers),
                               graph.const_sizes, types)
    init = {t.name for t in model.graph.initializer}
    return ModelInfo(
        inputs=tuple(_spec(v, types) for v in model.graph.input if v.name not in init),
        outputs=tuple(_spec(v, types) for v in model.graph.output),
        layers=tuple(layers),
        opset=default_opset(model),
        ir_version=int(model.ir_version),
        producer=" ".join(p for p in (model.producer_name, model.producer_version) if p),
        metadata=tuple((p.key, p.value) for p in model.metadata_props),
    )


def model_names(model: onnx.ModelProto) -> list[str]:
    """Return the stable names of the main graph's nodes, aligned with ``graph.node``."""
    return _assign_names(list(model.graph.node), set())


def tensor_types(model: onnx.ModelProto) -> dict[str, tuple[str, Shape | None]]:
    """Return tensor -> (numpy dtype name, shape or None) for the main graph after inference.

    Covers graph inputs, initializers, Constant outputs and every tensor shape inference typed;
    symbolic dims are strings, unknown dims ``None``; a tensor of unknown rank has shape ``None``.
    """
    inferred = _infer(model)
    types: TypeMap = {}
    _collect_types(inferred.graph if inferred is not None else model.graph, types, recurse=False)
    return types


def find_softmax_logits(model: onnx.ModelProto) -> str | None:
    """Return the input tensor of a Softmax whose output is (reshaped into) a graph output."""
    producers = {o: n for n in model.graph.node for o in n.output if o}
    for output in model.graph.output:
        node = producers.get(output.name)
        while node is not None and node.op_type in _SHAPE_OPS and node.input:
            node = producers.get(node.input[0])
        if node is not None and node.op_type == "Softmax" and node.input:
            return str(node.input[0])
    return None


def subgraph_tensors(model: onnx.ModelProto) -> set[str]:
    """Return the names of tensors made inside If/Loop/Scan subgraphs (at any depth)."""
    found: set[str] = set()
    pending = [sub for _, _, sub in _subgraphs(model.graph)]
    while pending:
        sub = pending.pop()
        found.update(o for n in sub.node for o in n.output if o)
        found.update(v.name for v in sub.input)
        pending.extend(s for _, _, s in _subgraphs(sub))
    return found


def default_opset(model: onnx.ModelProto) -> int:
    """Return the default (ai.onnx) domain's opset version, 1 when the model imports none."""
    versions = [int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return max(versions, default=1)


def dtype_name(elem_type: int) -> str | None:
    """Return the numpy dtype name of an ONNX elem type (``"float32"``), None when undefined.

    An elem type ONNX does not define (a corrupt or future file) also gives None.
    """
    if elem_type == onnx.TensorProto.UNDEFINED:
        return None
    if elem_type == onnx.TensorProto.STRING:
        return "str"
    try:
        return str(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)))
    except (KeyError, TypeError, ValueError):
        pass
    try:
        return str(onnx.TensorProto.DataType.Name(elem_type)).lower()
    except ValueError:
        return None


def constant_sizes(graph: onnx.GraphProto) -> dict[str, int]:
    """Return tensor -> element count for initializers and Constant node outputs of a graph."""
    sizes = {t.name: int(np.prod(t.dims, dtype=np.int64)) for t in graph.initializer}
    sizes.update({t.values.name: int(np.prod(t.dims, dtype=np.int64))
                  for t in graph.sparse_initializer})
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            sizes[node.output[0]] = _constant_size(node)
    return sizes


# -- names ------------------------------------------------------------------------------------
def _assign_names(nodes: Sequence[onnx.NodeProto], taken: set[str], start: int = 0) -> list[str]:
    """Keep first-seen non-empty names; generate ``<op>_<index>`` for the rest, avoiding clashes."""
    keep: list[bool] = []
    used = set(taken)
    for node in nodes:
        first = bool(node.name) and node.name not in used
        keep.append(first)
        if first:
            used.add(node.name)
    names = []
    for i, (node, kept) in enumerate(zip(nodes, keep, strict=True)):
        name = node.name if kept else _fresh(f"{node.op_type}_{start + i}", used)
        used.add(name)
        names.append(name)
    return names


def _fresh(base: str, used: set[str]) -> str:
    name, k = base, 0
    while name in used:
        k += 1
        name = f"{base}_{k}"
    return name


# -- types -----------------------------------------------------------------------------------
def _infer(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """Run onnx shape inference; None (with a log line) when it fails."""
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as err:  # inference raises many types; a failure only loses shapes
        log.warning("onnx shape inference failed (%s); shapes come from the model's "
                    "declarations and the caller", err)
        return None


def _all_types(model: onnx.ModelProto) -> TypeMap:
    """Types of every tensor, subgraphs included, from inference or the declared value_info."""
    inferred = _infer(model)
    types: TypeMap = {}
    if inferred is None:
        _collect_types(model.graph, types, recurse=True)
    else:
        _collect_types(inferred.graph, types, recurse=True)
    return types


def _collect_types(graph: onnx.GraphProto, types: TypeMap, *, recurse: bool) -> None:
    for tensor in graph.initializer:
        dtype = dtype_name(tensor.data_type)
        if dtype is not None:
            types[tensor.name] = (dtype, tuple(int(d) for d in tensor.dims))
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            found = _constant_type(node)
            if found is not None:
                types[node.output[0]] = found
    for value in (*graph.input, *graph.value_info, *graph.output):
        found = _value_type(value)
        if found is not None and not (value.name in types and found[1] is None):
            types[value.name] = found
    if recurse:
        for _, _, sub in _subgraphs(graph):
            _collect_types(sub, types, recurse=True)


def _value_type(value: onnx.ValueInfoProto) -> tuple[str, Shape | None] | None:
    if not value.type.HasField("tensor_type"):
        return None
    ttype = value.type.tensor_type
    dtype = dtype_name(ttype.elem_type)
    if dtype is None:
        return None
    if not ttype.HasField("shape"):
        return dtype, None
    return dtype, tuple(_dim(d) for d in ttype.shape.dim)


def _dim(dim: onnx.TensorShapeProto.Dimension) -> int | str | None:
    if dim.HasField("dim_value"):
        return int(dim.dim_value)
    if dim.HasField("dim_param") and dim.dim_param:
        return str(dim.dim_param)
    return None


def _constant_type(node: onnx.NodeProto) -> tuple[str, Shape | None] | None:
    for attr in node.attribute:
        if attr.name == "value" and attr.type == AttributeProto.TENSOR:
            dtype = dtype_name(attr.t.data_type)
            return (dtype, tuple(int(d) for d in attr.t.dims)) if dtype else None
        if attr.name in ("value_float", "value_int"):
            return ("float32" if attr.name == "value_float" else "int64"), ()
        if attr.name in ("value_floats", "value_ints"):
            size = len(attr.floats) if attr.name == "value_floats" else len(attr.ints)
            return ("float32" if attr.name == "value_floats" else "int64"), (size,)
    return None


def _constant_size(node: onnx.NodeProto) -> int:
    found = _constant_type(node)
    if found is None or found[1] is None:
        return 0
    return int(np.prod([d for d in found[1] if isinstance(d, int)], dtype=np.int64))


def merge_types(types: Mapping[str, tuple[str, Shape | None]], shapes: Mapping[str, Shape],
                dtypes: Mapping[str, str]) -> dict[str, tuple[str, Shape | None]]:
    """Fill unknown dtypes, shapes and None dims of ``types`` from a real run.

    Symbolic dims from inference are kept; a run shape of another rank replaces the inferred one.
    """
    merged = dict(types)
    for name in set(shapes) | set(dtypes):
        dtype, shape = merged.get(name, (None, None))
        run_shape = shapes.get(name)
        if shape is None or (run_shape is not None and len(run_shape) != len(shape)):
            shape = run_shape
        elif run_shape is not None:
            shape = tuple(r if d is None else d for d, r in zip(shape, run_shape, strict=True))
        chosen = dtype or dtypes.get(name)
        if chosen is not None:
            merged[name] = (chosen, shape)
    return merged


def _spec(value: onnx.ValueInfoProto, types: TypeMap) -> TensorSpec:
    dtype, shape = types.get(value.name, (None, None))
    return TensorSpec(value.name, dtype or "unknown", shape if shape is not None else ())


# -- graph walking ---------------------------------------------------------------------------
def _index_graph(graph: onnx.GraphProto) -> _Graph:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in dict.fromkeys(i for i in node.input if i):
            consumers.setdefault(name, []).append(node)
    return _Graph(
        nodes=tuple(graph.node),
        consumers={k: tuple(v) for k, v in consumers.items()},
        producers={o: n for n in graph.node for o in n.output if o},
        const_sizes=constant_sizes(graph),
    )


def _subgraphs(graph: onnx.GraphProto
               ) -> Iterator[tuple[onnx.NodeProto, str, onnx.GraphProto]]:
    """Yield (owner node, attribute name, subgraph) for the graph's direct subgraphs."""
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield node, attr.name, attr.g
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield node, attr.name, sub


def _subgraph_layers(graph: onnx.GraphProto, graph_names: Sequence[str], taken: set[str],
                     start: int, const_sizes: Mapping[str, int], types: TypeMap) -> list[Layer]:
    """Layers for every node nested in If/Loop/Scan bodies (recursively), not exposable."""
    layers: list[Layer] = []
    owner_names = dict(zip((id(n) for n in graph.node), graph_names, strict=True))
    for owner, attr, sub in _subgraphs(graph):
        sizes = {**const_sizes, **constant_sizes(sub)}
        sub_names = _assign_names(list(sub.node), taken, start + len(layers))
        taken.update(sub_names)
        reason = (f"inside the {attr!r} subgraph of {owner.op_type} node "
                  f"{owner_names[id(owner)]!r}; subgraph tensors cannot be graph outputs")
        for node, name in zip(sub.node, sub_names, strict=True):
            layer = _plain_layer(start + len(layers), node, name, sizes, types)
            layers.append(replace(layer, exposable=False, reason=reason))
        layers += _subgraph_layers(sub, sub_names, taken, start + len(layers), sizes, types)
    return layers


# -- layers ----------------------------------------------------------------------------------
def _plain_layer(index: int, node: onnx.NodeProto, name: str, const_sizes: Mapping[str, int],
                 types: TypeMap) -> Layer:
    output = node.output[0] if node.output else ""
    dtype, shape = types.get(output, (None, None))
    return Layer(
        index=index, name=name, op_type=node.op_type, output=output,
        inputs=tuple(node.input), outputs=tuple(node.output), dtype=dtype, shape=shape,
        params=sum(const_sizes.get(i, 0) for i in dict.fromkeys(node.input) if i),
        is_conv=node.op_type in CONV_OPS,
    )


def _main_layer(index: int, node: onnx.NodeProto, name: str, graph: _Graph,
                types: TypeMap) -> Layer:
    layer = _plain_layer(index, node, name, graph.const_sizes, types)
    if not layer.is_conv or not layer.output:
        return layer
    weight, bias = _conv_weight_bias(node)
    output, raw = layer.output, None
    if node.op_type == "QLinearConv":
        raw = output
    else:
        pair = _qdq_after(output, graph)
        if pair is not None:
            raw, output = pair
    link = _find_activation(output, graph)
    dtype, shape = types.get(output, (layer.dtype, layer.shape))
    return replace(
        layer, output=output, raw_output=raw, weight=weight, bias=bias, dtype=dtype,
        shape=shape, params=_conv_params((weight, bias), graph),
        activation=link[0] if link else None, activation_op=link[1] if link else None,
    )


def _conv_weight_bias(node: onnx.NodeProto) -> tuple[str | None, str | None]:
    """Return the weight and bias input tensors of a conv-like node (None when absent)."""
    slots = {"QLinearConv": (3, 8), "ConvInteger": (1, -1)}.get(node.op_type, (1, 2))
    inputs = list(node.input)

    def pick(i: int) -> str | None:
        return inputs[i] if 0 <= i < len(inputs) and inputs[i] else None

    return pick(slots[0]), pick(slots[1])


def _conv_params(names: Sequence[str | None], graph: _Graph) -> int:
    """Count weight + bias elements, through DequantizeLinear / Identity / Cast to constants.

    Quantization scales and zero points are not parameters and are left out.
    """
    total = 0
    for name in (n for n in names if n):
        for _ in range(_MAX_LINK_STEPS):
            producer = graph.producers.get(name)
            if name in graph.const_sizes or producer is None or \
                    producer.op_type not in _WEIGHT_PATH_OPS:
                break
            name = producer.input[0]
        total += graph.const_sizes.get(name, 0)
    return total


def _qdq_after(tensor: str, graph: _Graph) -> tuple[str, str] | None:
    """Return (int tensor, float tensor) when ``tensor`` feeds only a QuantizeLinear -> DQ pair."""
    users = graph.consumers.get(tensor, ())
    if len(users) != 1 or users[0].op_type != "QuantizeLinear" or users[0].input[0] != tensor:
        return None
    quant = users[0].output[0]
    deqs = [n for n in graph.consumers.get(quant, ()) if n.op_type == "DequantizeLinear"]
    return (quant, deqs[0].output[0]) if deqs and deqs[0].input[0] == quant else None


def _find_activation(tensor: str, graph: _Graph) -> tuple[str, str] | None:
    """Follow ``tensor`` through BN / Identity / Q-DQ to an activation: (output, op name)."""
    for _ in range(_MAX_LINK_STEPS):
        users = graph.consumers.get(tensor, ())
        gated = _gated_activation(tensor, users)
        if gated is not None:
            return _float_after(gated[0], graph), gated[1]
        if len(users) != 1 or not users[0].output or users[0].input[0] != tensor:
            return None
        node = users[0]
        if node.op_type in ACTIVATION_OPS or node.op_type in _QLINEAR_ACTIVATIONS:
            return _float_after(node.output[0], graph), node.op_type
        pair = _qdq_after(tensor, graph)
        if pair is not None:
            tensor = pair[1]
        elif node.op_type in _PASSTHROUGH_OPS:
            tensor = node.output[0]
        else:
            return None
    return None


def _gated_activation(tensor: str, users: Sequence[onnx.NodeProto]) -> tuple[str, str] | None:
    """Recognize ``x * Sigmoid(x)`` (SiLU) and ``x * HardSigmoid(x)`` (HardSwish)."""
    if len(users) != 2:
        return None
    gates = [n for n in users if n.op_type in _GATED and n.input[0] == tensor]
    muls = [n for n in users if n.op_type == "Mul"]
    if len(gates) != 1 or len(muls) != 1:
        return None
    if sorted(muls[0].input) != sorted([tensor, gates[0].output[0]]):
        return None
    return muls[0].output[0], _GATED[gates[0].op_type]


def _float_after(tensor: str, graph: _Graph) -> str:
    """Return the DequantizeLinear output after a Q-DQ pair on ``tensor``, else ``tensor``."""
    pair = _qdq_after(tensor, graph)
    return pair[1] if pair is not None else tensor
