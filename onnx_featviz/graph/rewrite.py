"""Rewrite a ModelProto into a new one (the input is never modified): expose tensors as outputs,
cut the graph at a layer, prune what no output needs, pick conv and activation tensors.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

from onnx_featviz.errors import InputError, LayerNotFoundError, ModelError
from onnx_featviz.graph import catalog as catalog
from onnx_featviz.structs import Layer, ModelInfo, Shape

log = logging.getLogger(__name__)


STAGES = ("conv", "act", "both")


_QLINEAR_OUTPUT_QPARAMS = catalog.QLINEAR_OUTPUT_QPARAMS


_QUANT_DTYPES = frozenset({"int8", "uint8"})


_FLOAT_DTYPES = frozenset({"float32", "float16", "float64", "bfloat16"})


_CONST = "featviz/const/"


@dataclass(frozen=True, slots=True)
class _Context:
    """What the rewrite needs to know about the (copied) model."""

    types: Mapping[str, tuple[str, Shape | None]]
    producers: Mapping[str, onnx.NodeProto]
    known: frozenset[str]
    nested: frozenset[str]
    opset: int
    made: set[str]
    """Every node output of the copy, kept current as nodes are appended (fast existence test)."""


@dataclass(frozen=True, slots=True)
class _QParams:
    """Scale / zero point / attributes for a DequantizeLinear of a quantized tensor."""

    scale: str
    zero_point: str | None
    attrs: tuple[tuple[str, int], ...]


def dequantized_name(tensor: str) -> str:
    """Return the name of the float tensor that ``expose_tensors`` adds for an int8 tensor."""
    return f"featviz/dequant/{tensor}"


def float16_name(tensor: str) -> str:
    """Return the name of the float16 copy ``expose_tensors(..., float16=True)`` outputs."""
    return f"featviz/fp16/{tensor}"


def expose_tensors(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    *,
    shapes: Mapping[str, Shape] | None = None,
    dtypes: Mapping[str, str] | None = None,
    float16: bool = False,
) -> onnx.ModelProto:
    """Return a copy of ``model`` with ``tensors`` added as graph outputs.

    With ``float16=True`` every float32 tensor is exposed through a Cast to float16 named
    ``float16_name(tensor)`` instead (half the bytes to move off the device; the caller converts
    back to float32, exact to float16 rounding).

    The model's own outputs stay first and unchanged; new outputs follow in the order given,
    declared with the dtype and shape shape inference found (``shapes``/``dtypes`` from a real run
    fill gaps; a tensor of unknown rank is declared with its dtype only, which onnxruntime accepts
    but ``onnx.checker`` rejects). An int8/uint8 tensor made by QuantizeLinear or a QLinear op is
    also exposed as float through a DequantizeLinear ``dequantized_name(tensor)``.

    Args:
        model: the model (not modified).
        tensors: graph input, initializer or main-graph node output names.
        shapes: tensor -> shape from a real run, for tensors inference leaves unknown.
        dtypes: tensor -> numpy dtype name from a real run, likewise.

    Returns:
        The rewritten copy (same ``ir_version`` and opsets).

    Raises:
        LayerNotFoundError: a tensor is not in the model (close matches in the message).
        ModelError: a tensor lives inside an If/Loop/Scan subgraph.
    """
    out = _copy(model)
    ctx = _context(out, shapes, dtypes)
    for tensor in dict.fromkeys(tensors):
        _check_tensor(tensor, ctx)
        if float16 and ctx.types.get(tensor, ("", None))[0] == "float32":
            half = float16_name(tensor)
            out.graph.node.append(helper.make_node(
                "Cast", [tensor], [half], name=half, to=TensorProto.FLOAT16))
            shape = ctx.types[tensor][1]
            out.graph.output.append(
                helper.make_tensor_value_info(half, TensorProto.FLOAT16, _shape_list(shape)))
            continue
        _add_output(out.graph, tensor, ctx)
        deq = _ensure_dequant(out.graph, tensor, ctx)
        if deq is not None:
            _add_output(out.graph, deq, ctx, like=tensor)
    return out


def fix_input_shape(model: onnx.ModelProto, name: str, shape: Sequence[int]
                    ) -> onnx.ModelProto:
    """Return a copy of ``model`` whose input ``name`` has the concrete ``shape``.

    The copy drops the declared ``value_info`` (symbolic shapes that no longer hold) so that
    shape inference on it gives every tensor the dims of that one input size.

    Raises:
        ModelError: no graph input ``name``, or ``shape`` has another rank.
    """
    out = _copy(model)
    found = [v for v in out.graph.input if v.name == name]
    if not found or len(found[0].type.tensor_type.shape.dim) != len(shape):
        raise ModelError(f"cannot fix input {name!r} to shape {tuple(shape)}: the graph inputs "
                         f"are {[v.name for v in out.graph.input]} with other ranks; give the "
                         "input's name and one dim per axis")
    for dim, size in zip(found[0].type.tensor_type.shape.dim, shape, strict=True):
        dim.Clear()
        dim.dim_value = int(size)
    del out.graph.value_info[:]
    return out


def cut_name(tensor: str) -> str:
    """Return the name ``cut_at`` gives the original producer output of ``tensor``."""
    return f"featviz/cut/{tensor}"


def cut_at(model: onnx.ModelProto, tensor: str) -> onnx.ModelProto:
    """Return a copy of ``model`` in which ``tensor`` is a new graph input (its consumers read it).

    The node that made ``tensor`` now writes ``cut_name(tensor)`` instead, so every consumer of
    ``tensor`` reads the new input; it is declared with ``tensor``'s dtype and shape, batch axis
    dynamic. Nodes no graph output needs any more (those only needed to compute ``tensor``) are
    removed, then unused initializers and graph inputs. An original input that some remaining
    node still reads (a skip connection from before ``tensor``) stays an input: feed it the image
    each row of ``tensor`` came from, so such tensors are computed as in the uncut model.

    Args:
        model: the model (not modified).
        tensor: a main-graph node output with known dtype (e.g. a conv layer's activation).

    Returns:
        The rewritten copy (same ``ir_version`` and opsets).

    Raises:
        LayerNotFoundError: no such tensor (close matches in the message).
        InputError: ``tensor`` is a graph input or initializer, not a node output.
        ModelError: ``tensor`` lives in a subgraph, or its dtype is unknown.
    """
    out = _copy(model)
    ctx = _context(out, None, None)
    _check_tensor(tensor, ctx)
    producer = ctx.producers.get(tensor)
    if producer is None:
        raise InputError(f"tensor {tensor!r} is a graph input or initializer, not a node output; "
                         "cut at a layer output instead")
    dtype, shape = ctx.types.get(tensor, ("", None))
    elem = _elem_type(dtype) if dtype else TensorProto.UNDEFINED
    if elem == TensorProto.UNDEFINED:
        raise ModelError(f"the dtype of tensor {tensor!r} is unknown (shape inference found "
                         f"{dtype or 'nothing'}); cannot declare it as a graph input")
    graph = out.graph
    for node in graph.node:
        if tensor in node.output:
            node.output[list(node.output).index(tensor)] = cut_name(tensor)
    dims = _shape_list(shape)
    if dims:
        dims[0] = "featviz_cut_batch"
    graph.input.append(helper.make_tensor_value_info(tensor, elem, dims))
    kept = [v for v in graph.value_info if v.name != tensor]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    prune_graph(graph)
    return out


def prune_graph(graph: onnx.GraphProto) -> None:
    """Drop nodes no graph output needs, then unused initializers and non-output inputs (in place).

    A node inside an If/Loop/Scan subgraph keeps every name it reads alive.
    """
    needed = {o.name for o in graph.output}
    live: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output if o):
            live.append(node)
            needed.update(_node_reads(node))
    live.reverse()
    del graph.node[:]
    graph.node.extend(live)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    inputs = [v for v in graph.input if v.name in needed]
    del graph.input[:]
    graph.input.extend(inputs)


def _node_reads(node: onnx.NodeProto) -> set[str]:
    """Inputs of ``node`` plus every name its subgraphs read (over-inclusive, never missing)."""
    reads = {i for i in node.input if i}
    pending = [g for a in node.attribute for g in (*([a.g] if a.HasField("g") else []), *a.graphs)]
    while pending:
        sub = pending.pop()
        for inner in sub.node:
            reads.update(i for i in inner.input if i)
            pending.extend(g for a in inner.attribute
                           for g in (*([a.g] if a.HasField("g") else []), *a.graphs))
        reads.update(o.name for o in sub.output)
    return reads


def conv_tensors(info: ModelInfo, stage: str = "conv") -> list[str]:
    """Return the tensors of every exposable conv layer for a stage, in graph order.

    Args:
        info: ``catalog.read_catalog`` result.
        stage: ``"conv"`` (conv outputs), ``"act"`` (the linked activation, else the conv output)
            or ``"both"``.

    Raises:
        InputError: unknown stage.
    """
    if stage not in STAGES:
        raise InputError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    tensors: dict[str, None] = {}
    for layer in info.conv_layers:
        act = layer.activation or layer.output
        picked = {"conv": [layer.output], "act": [act], "both": [layer.output, act]}[stage]
        tensors.update(dict.fromkeys(picked))
    return list(tensors)


def all_tensors(info: ModelInfo) -> list[str]:
    """Return every exposable node's first output that is a float (or QLinear int8) activation.

    Keras-style "every layer": pooling, concat, add... included. Excluded: Constant nodes,
    integer (shape) tensors, nodes computed only from weights (e.g. DequantizeLinear of a weight)
    and float tensors consumed only by QuantizeLinear (their DequantizeLinear output is listed).
    """
    live = {spec.name for spec in info.inputs}
    users: dict[str, list[str]] = {}
    for layer in info.layers:
        for name in layer.inputs:
            users.setdefault(name, []).append(layer.op_type)
    found: list[str] = []
    for layer in info.layers:
        if not layer.exposable or not any(i in live for i in layer.inputs):
            continue
        live.update(o for o in layer.outputs if o)
        if _is_activation_tensor(layer, users) and layer.outputs[0] not in found:
            found.append(layer.outputs[0])
    return found


# -- shared helpers ------------------------------------------------------------------------------
def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _is_activation_tensor(layer: Layer, users: Mapping[str, list[str]]) -> bool:
    tensor = layer.outputs[0] if layer.outputs else ""
    if not tensor or layer.op_type == "Constant":
        return False
    ops = users.get(tensor, [])
    if ops and all(op == "QuantizeLinear" for op in ops):
        return False
    if layer.op_type in _QLINEAR_OUTPUT_QPARAMS:
        return True
    return layer.output == tensor and layer.dtype in _FLOAT_DTYPES


def _context(model: onnx.ModelProto, shapes: Mapping[str, Shape] | None,
             dtypes: Mapping[str, str] | None) -> _Context:
    graph = model.graph
    known = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    known |= {o for n in graph.node for o in n.output if o}
    nested = catalog.subgraph_tensors(model)
    types = _with_qlinear_dtypes(catalog.tensor_types(model), graph)
    return _Context(
        types=catalog.merge_types(types, shapes or {}, dtypes or {}),
        producers={o: n for n in graph.node for o in n.output if o},
        known=frozenset(known),
        nested=frozenset(nested - known),
        opset=catalog.default_opset(model),
        made={o for n in graph.node for o in n.output if o},
    )


def _with_qlinear_dtypes(types: Mapping[str, tuple[str, Shape | None]], graph: onnx.GraphProto
                         ) -> dict[str, tuple[str, Shape | None]]:
    """Give untyped QLinear outputs (contrib ops onnx cannot infer) their zero point's dtype."""
    filled = dict(types)
    for node in graph.node:  # graph order: a producer is filled before its users
        if not node.output or not node.output[0] or node.output[0] in filled:
            continue
        if node.op_type in catalog.SCALE_PRESERVING_OPS and node.input and node.input[0]:
            source = filled.get(node.input[0])  # int8 moved on untouched (after a contrib op)
            if source is not None and source[0] in _QUANT_DTYPES:
                moved = node.output if node.op_type == "Split" else node.output[:1]  # not Indices
                for out in (o for o in moved if o and o not in filled):
                    filled[out] = (source[0], None)
            continue
        slots = _QLINEAR_OUTPUT_QPARAMS.get(node.op_type)
        if slots is None:
            continue
        zero_point = node.input[slots[1]] if len(node.input) > slots[1] else ""
        if zero_point in filled:
            filled[node.output[0]] = (filled[zero_point][0], None)
    return filled


def _check_tensor(tensor: str, ctx: _Context) -> None:
    if tensor in ctx.known:
        return
    if tensor in ctx.nested:
        raise ModelError(f"tensor {tensor!r} is inside an If/Loop/Scan subgraph and cannot be a "
                         "graph output; choose a tensor of the main graph")
    near = difflib.get_close_matches(tensor, sorted(ctx.known), n=5, cutoff=0.5)
    hint = f"close matches: {', '.join(near)}" if near else "no close matches"
    raise LayerNotFoundError(f"no tensor named {tensor!r} in the model; {hint}; all names are "
                             "in ModelInfo.layers (Layer.outputs) and ModelInfo.inputs")


def _elem_type(dtype: str) -> int:
    for elem in TensorProto.DataType.values():
        if catalog.dtype_name(int(elem)) == dtype:
            return int(elem)
    return TensorProto.UNDEFINED


def _add_output(graph: onnx.GraphProto, tensor: str, ctx: _Context, *,
                like: str | None = None) -> None:
    """Append ``tensor`` as a graph output unless it already is one (``like``: take its shape)."""
    if any(o.name == tensor for o in graph.output):
        return
    dtype, shape = ctx.types.get(like or tensor, (None, None))
    if like is not None:
        dtype = _dequant_dtype(like, ctx)
    elem = _elem_type(dtype) if dtype else TensorProto.UNDEFINED
    if elem == TensorProto.UNDEFINED:
        log.debug("no dtype known for %r; it is exposed untyped (onnxruntime infers it)", tensor)
        value = onnx.ValueInfoProto()
        value.name = tensor
        graph.output.append(value)
        return
    graph.output.append(helper.make_tensor_value_info(tensor, elem, _shape_list(shape)))


def _shape_list(shape: Shape | None) -> list[int | str | None] | None:
    return None if shape is None else list(shape)


def _channels(tensor: str, ctx: _Context) -> int | str | None:
    shape = ctx.types.get(tensor, ("", None))[1]
    if shape is not None and len(shape) < 2:
        raise ModelError(f"tensor {tensor!r} has shape {shape}; per-channel statistics need at "
                         "least 2 dims (N, C, ...); choose a feature-map tensor")
    return None if shape is None else shape[1]


# -- dequantization ------------------------------------------------------------------------------
def _qparams(tensor: str, ctx: _Context) -> _QParams | None:
    """Scale/zero point of an int8/uint8 tensor made by QuantizeLinear or a quantized op, or
    moved on from one by scale-preserving ops (``catalog.quant_params_node``)."""
    if ctx.types.get(tensor, ("", None))[0] not in _QUANT_DTYPES:
        return None
    node = catalog.quant_params_node(tensor, ctx.producers)
    if node is None:
        return None
    inputs = list(node.input) + [""] * 9
    if node.op_type == "QuantizeLinear":
        keep = ("axis", "block_size") if ctx.opset >= 13 else ()
        attrs = tuple((a.name, int(a.i)) for a in node.attribute if a.name in keep)
        return _QParams(inputs[1], inputs[2] or None, attrs)
    slots = _QLINEAR_OUTPUT_QPARAMS[node.op_type]
    return _QParams(inputs[slots[0]], inputs[slots[1]] or None, ())


def _ensure_dequant(graph: onnx.GraphProto, tensor: str, ctx: _Context) -> str | None:
    """Add (once) a DequantizeLinear of a quantized tensor; return its output or None."""
    params = _qparams(tensor, ctx)
    if params is None:
        return None
    name = dequantized_name(tensor)
    if name not in ctx.made:
        inputs = [tensor, params.scale] + ([params.zero_point] if params.zero_point else [])
        _append(graph, ctx, _make_node("DequantizeLinear", inputs, name, dict(params.attrs)))
    return name


def _dequant_dtype(tensor: str, ctx: _Context) -> str:
    """Dtype of DequantizeLinear(tensor): float32 before opset 19, the scale's dtype from 19."""
    params = _qparams(tensor, ctx)
    if ctx.opset < 19 or params is None:
        return "float32"
    return ctx.types.get(params.scale, ("float32", None))[0]


def _float32_source(graph: onnx.GraphProto, tensor: str, ctx: _Context) -> str:
    """Return a float32 view of ``tensor``: itself, its dequantized form, and/or a Cast."""
    source, dtype = tensor, ctx.types.get(tensor, ("float32", None))[0]
    deq = _ensure_dequant(graph, tensor, ctx)
    if deq is not None:
        source, dtype = deq, _dequant_dtype(tensor, ctx)
    if dtype == "float32":
        return source
    cast = f"featviz/cast/{tensor}"
    if cast not in ctx.made:
        _append(graph, ctx, _make_node("Cast", [source], cast, {"to": TensorProto.FLOAT}))
    return cast



# -- statistics ----------------------------------------------------------------------------------
def _make_node(op: str, inputs: list[str], out: str, attrs: Mapping[str, int]) -> onnx.NodeProto:
    """A node named like its single output, with int attributes in sorted order."""
    node = helper.make_node(op, inputs, [out], name=out)
    node.attribute.extend(helper.make_attribute(k, v) for k, v in sorted(attrs.items()))
    return node


def _append(graph: onnx.GraphProto, ctx: _Context, node: onnx.NodeProto) -> None:
    graph.node.append(node)
    ctx.made.update(node.output)
