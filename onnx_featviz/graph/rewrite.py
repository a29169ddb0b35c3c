"""Copies of a model with chosen tensors exposed as outputs, or reduced per channel on the device.

Every function returns a new ``ModelProto`` (the caller's model is never changed), keeps the
model's ``ir_version`` and opsets, appends new nodes after the existing ones and names them
``featviz/<purpose>/<source tensor>``, so the same call gives the same bytes, and calling again on
the result adds nothing. The opset is never raised: every added op exists at opset 7 (see
``append_channel_stats`` for what changes below opset 11 and 13/18).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper

from onnx_featviz.errors import InputError, LayerNotFoundError, ModelError
from onnx_featviz.graph import catalog as catalog
from onnx_featviz.structs import Layer, ModelInfo, Shape

log = logging.getLogger(__name__)

#: Statistics ``append_channel_stats`` outputs for every tensor (see its docstring).
STAT_NAMES = ("shift", "sum", "sumsq", "min", "max", "zeros", "count")
#: Counts of values at a Clip's lower / upper bound, for tensors a Clip produces.
BOUND_STAT_NAMES = ("at_low", "at_high")
#: The count ``append_nonfinite_counts`` outputs.
NONFINITE_STAT = "nonfinite"
_ALL_STATS = (*STAT_NAMES, *BOUND_STAT_NAMES, NONFINITE_STAT)
STAGES = ("conv", "act", "both")
_QLINEAR_OUTPUT_QPARAMS = catalog.QLINEAR_OUTPUT_QPARAMS
_QUANT_DTYPES = frozenset({"int8", "uint8"})
_FLOAT_DTYPES = frozenset({"float32", "float16", "float64", "bfloat16"})
_CONST = "featviz/const/"
_DENORM_MIN = np.float32(np.finfo(np.float32).smallest_subnormal)


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


def stat_output(stat: str, tensor: str) -> str:
    """Return the output name of one per-channel statistic of ``tensor``.

    Raises:
        InputError: ``stat`` is not one of ``STAT_NAMES``, ``BOUND_STAT_NAMES`` or
            ``NONFINITE_STAT``.
    """
    if stat not in _ALL_STATS:
        raise InputError(f"unknown statistic {stat!r}; choose one of {', '.join(_ALL_STATS)}")
    return f"featviz/stats/{stat}/{tensor}"


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


def append_channel_stats(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """Return a copy of ``model`` that also outputs per-sample, per-channel reductions.

    The reductions are the few that a numerically stable merge on the host needs (11 nodes per
    tensor: 4 elementwise passes and 5 reductions over it). For x of shape (N, C, ...)
    (float16/int tensors cast to float32, int8 quantized ones dequantized first; a tensor of
    unknown rank viewed as (N, C, L)), the outputs ``stat_output(stat, x)`` are:

    - ``shift`` float32 (1, C, 1, ...): K = x[0, c, 0, ...], a value of each channel;
    - ``sum``, ``sumsq`` float32 (N, C): sums of (x - K) and (x - K)^2 over each sample's
      positions. Shifting by a value of the channel keeps the variance (sumsq - sum^2 / n) / n
      accurate when the mean is large and the spread small;
    - ``min``, ``max`` float32 (N, C);
    - ``zeros`` float32 (N, C): count of exact zeros (exact up to 2^24 positions);
    - ``count`` int64 scalar: number of values of x (N * C * positions);
    - ``at_low`` / ``at_high`` float32 (N, C), only for a tensor made by a Clip whose bound is
      a constant (``clip_bounds``): count of values equal to that bound (``at_low`` is left
      out for a bound of 0, where it equals ``zeros``).

    Sums run in float32 over one sample's positions (relative error below positions * 2^-24,
    typically sqrt(positions) * 2^-24); the caller sums over the batch in float64.
    NaN/Inf are not counted here (that would cost passes on every batch): a channel holding one
    has a non-finite ``sum``; ``append_nonfinite_counts`` counts them for such batches.
    The tensors themselves are not exposed. No opset is raised: below opset 11 (no float Equal)
    zeros are found as ``|x| < smallest float32 subnormal`` and bounds with Less/Greater;
    Reduce* take axes as an input from opset 18 (ReduceSum from 13), an attribute before.

    Raises:
        LayerNotFoundError: a tensor is not in the model.
        ModelError: a tensor lives in a subgraph or has fewer than 2 dims.
    """
    out = _copy(model)
    ctx = _context(out, None, None)
    present = {o.name for o in out.graph.output}
    for tensor in dict.fromkeys(tensors):
        _check_tensor(tensor, ctx)
        low, high = _clip_bounds(tensor, ctx, out.graph)
        stats = [*STAT_NAMES, *(["at_low"] if low not in (None, 0.0) else []),
                 *(["at_high"] if high is not None else [])]
        if all(stat_output(s, tensor) in present for s in stats):
            continue
        view = _stat_view(out.graph, ctx, tensor)
        _add_moment_nodes(out.graph, ctx, view)
        for op, stat in (("ReduceMin", "min"), ("ReduceMax", "max")):
            _reduce(out.graph, ctx, op, view.source, stat_output(stat, tensor), view.spatial)
        _add_count(out.graph, ctx, view, _equal_mask(out.graph, ctx, view, 0.0, "zero"), "zeros")
        for stat, bound in (("at_low", low), ("at_high", high)):
            if stat in stats and bound is not None:
                mask = _equal_mask(out.graph, ctx, view, bound, stat)
                _add_count(out.graph, ctx, view, mask, stat)
        _append(out.graph, ctx, _make_node("Size", [view.source], stat_output("count", tensor),
                                           {}))
        _declare_stats(out.graph, ctx, view, [s for s in stats
                                              if stat_output(s, tensor) not in present])
    return out


def append_nonfinite_counts(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """Return a copy of ``model`` that also outputs per-sample counts of NaN/Inf in ``tensors``.

    Outputs ``stat_output("nonfinite", x)``, float32 (N, C), for each tensor (cast / dequantized
    to float32 as in ``append_channel_stats``). Meant for the batches whose ``sum`` came out
    non-finite, so that clean data never pays for it.

    Raises:
        LayerNotFoundError: a tensor is not in the model.
        ModelError: a tensor lives in a subgraph or has fewer than 2 dims.
    """
    out = _copy(model)
    ctx = _context(out, None, None)
    present = {o.name for o in out.graph.output}
    for tensor in dict.fromkeys(tensors):
        _check_tensor(tensor, ctx)
        if stat_output(NONFINITE_STAT, tensor) in present:
            continue
        view = _stat_view(out.graph, ctx, tensor)
        inf = _const(out.graph, ctx, "inf", np.array(np.inf, np.float32))
        magnitude = _stat_node(out.graph, ctx, "Abs", [view.source], "stats_abs", tensor)
        finite = _stat_node(out.graph, ctx, "Less", [magnitude, inf], "stats_is_finite", tensor)
        bad = _stat_node(out.graph, ctx, "Not", [finite], "stats_is_nonfinite", tensor)
        _add_count(out.graph, ctx, view, bad, NONFINITE_STAT)
        _declare_stats(out.graph, ctx, view, [NONFINITE_STAT])
    return out


def clip_bounds(model: onnx.ModelProto, tensors: Sequence[str]
                ) -> dict[str, tuple[float | None, float | None]]:
    """Return, per tensor, the constant (lower, upper) bounds of the Clip that makes it.

    ``(None, None)`` when another op makes it; a bound is None when the Clip has none (or
    it is computed at run time). Read from the ``min``/``max`` inputs (opset 11+) or attributes.
    """
    producers = {o: n for n in model.graph.node for o in n.output if o}
    opset = catalog.default_opset(model)
    return {t: _bounds_of(producers.get(t), opset, model.graph) for t in tensors}


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


def _const(graph: onnx.GraphProto, ctx: _Context, key: str, value: NDArray[np.generic]) -> str:
    """Add (once) a Constant node ``featviz/const/<key>``; return its output name.

    Constant nodes rather than initializers: IR < 4 would need every initializer as an input.
    """
    name = _CONST + key
    if name not in ctx.made:
        tensor = onnx.numpy_helper.from_array(value, name)
        _append(graph, ctx, helper.make_node("Constant", [], [name], name=name, value=tensor))
    return name


def _reduce(graph: onnx.GraphProto, ctx: _Context, op: str, x: str, out: str,
            axes: Sequence[int]) -> None:
    """Append ``op`` over ``axes`` without keepdims, axes as input or attribute per opset."""
    if ctx.opset >= 18 or (op == "ReduceSum" and ctx.opset >= 13):
        key = "axes_" + "_".join(str(a) for a in axes)
        axes_in = _const(graph, ctx, key, np.array(list(axes), np.int64))
        node = helper.make_node(op, [x, axes_in], [out], name=out, keepdims=0)
    else:
        node = helper.make_node(op, [x], [out], name=out, axes=list(axes), keepdims=0)
    _append(graph, ctx, node)


def _stat_node(graph: onnx.GraphProto, ctx: _Context, op: str, inputs: list[str], purpose: str,
               tensor: str, **attrs: int) -> str:
    """Append one node named ``featviz/<purpose>/<tensor>``; return its output."""
    out = f"featviz/{purpose}/{tensor}"
    _append(graph, ctx, _make_node(op, inputs, out, attrs))
    return out


@dataclass(frozen=True, slots=True)
class _View:
    """A float32 (N, C, ...) view of the tensor a statistic reduces, and its shape."""

    tensor: str
    source: str
    shape: Shape

    @property
    def spatial(self) -> list[int]:
        """Axes after the channel axis."""
        return list(range(2, len(self.shape)))


def _stat_view(graph: onnx.GraphProto, ctx: _Context, tensor: str) -> _View:
    """Float32 source of ``tensor``; one of unknown rank or (N, C) is reshaped to (N, C, L)."""
    source = _float32_source(graph, tensor, ctx)
    shape = ctx.types.get(tensor, ("", None))[1]
    channels = _channels(tensor, ctx)
    if shape is not None and len(shape) >= 3:
        return _View(tensor, source, shape)
    shape_ncl = _const(graph, ctx, "shape_ncl", np.array([0, 0, -1], np.int64))
    flat = f"featviz/stats_flat/{tensor}"
    if flat not in ctx.made:
        _append(graph, ctx, _make_node("Reshape", [source, shape_ncl], flat, {}))
    return _View(tensor, flat, (shape[0] if shape else None, channels, None))


def _declare_stats(graph: onnx.GraphProto, ctx: _Context, view: _View, stats: Sequence[str]
                   ) -> None:
    """Declare the outputs of ``stats``: (N, C), the shift (1, C, 1...), the scalar count."""
    batch, channels = view.shape[0], view.shape[1]
    for stat in stats:
        elem, dims = TensorProto.FLOAT, [batch, channels]
        if stat == "count":
            elem, dims = TensorProto.INT64, []
        elif stat == "shift":
            dims = [1, channels, *[1] * len(view.spatial)]
        graph.output.append(
            helper.make_tensor_value_info(stat_output(stat, view.tensor), elem, dims))


def _add_moment_nodes(graph: onnx.GraphProto, ctx: _Context, view: _View) -> None:
    """Append ``shift`` K, and per-sample sums of (x - K) and (x - K)^2."""
    tensor = view.tensor
    axes = [0, *view.spatial]
    shift = stat_output("shift", tensor)
    if ctx.opset >= 10:
        starts = _const(graph, ctx, f"zeros_{len(axes)}", np.zeros(len(axes), np.int64))
        ends = _const(graph, ctx, f"ones_{len(axes)}", np.ones(len(axes), np.int64))
        slice_axes = _const(graph, ctx, "axes_" + "_".join(map(str, axes)),
                            np.array(axes, np.int64))
        _append(graph, ctx, _make_node("Slice", [view.source, starts, ends, slice_axes], shift,
                                       {}))
    else:
        _append(graph, ctx, helper.make_node("Slice", [view.source], [shift], name=shift,
                                             starts=[0] * len(axes), ends=[1] * len(axes),
                                             axes=axes))
    diff = _stat_node(graph, ctx, "Sub", [view.source, shift], "stats_diff", tensor)
    _reduce(graph, ctx, "ReduceSum", diff, stat_output("sum", tensor), view.spatial)
    # Mul + ReduceSum: onnxruntime's CPU ReduceSumSquare is not vectorized (2-3x slower)
    square = _stat_node(graph, ctx, "Mul", [diff, diff], "stats_diff_sq", tensor)
    _reduce(graph, ctx, "ReduceSum", square, stat_output("sumsq", tensor), view.spatial)


def _equal_mask(graph: onnx.GraphProto, ctx: _Context, view: _View, value: float,
                purpose: str) -> str:
    """Append a bool mask of ``x == value`` (float Equal needs opset 11: Less/Greater before)."""
    tensor, x = view.tensor, view.source
    key = "zero" if value == 0.0 else f"{purpose}/{tensor}"
    constant = _const(graph, ctx, key, np.array(value, np.float32))
    if ctx.opset >= 11:
        return _stat_node(graph, ctx, "Equal", [x, constant], f"stats_is_{purpose}", tensor)
    if value == 0.0:  # only 0 is below the smallest subnormal
        tiny = _const(graph, ctx, "smallest_subnormal", np.array(_DENORM_MIN, np.float32))
        magnitude = _stat_node(graph, ctx, "Abs", [x], "stats_abs", tensor)
        return _stat_node(graph, ctx, "Less", [magnitude, tiny], "stats_is_zero", tensor)
    below = _stat_node(graph, ctx, "Less", [x, constant], f"stats_below_{purpose}", tensor)
    above = _stat_node(graph, ctx, "Greater", [x, constant], f"stats_above_{purpose}", tensor)
    either = _stat_node(graph, ctx, "Or", [below, above], f"stats_not_{purpose}", tensor)
    return _stat_node(graph, ctx, "Not", [either], f"stats_is_{purpose}", tensor)


def _add_count(graph: onnx.GraphProto, ctx: _Context, view: _View, mask: str, stat: str
               ) -> None:
    """Count the true values of a bool (N, C, ...) mask per sample and channel (float32)."""
    as_float = _stat_node(graph, ctx, "Cast", [mask], f"stats_{stat}_f", view.tensor,
                          to=TensorProto.FLOAT)
    _reduce(graph, ctx, "ReduceSum", as_float, stat_output(stat, view.tensor), view.spatial)


def _clip_bounds(tensor: str, ctx: _Context, graph: onnx.GraphProto
                 ) -> tuple[float | None, float | None]:
    return _bounds_of(ctx.producers.get(tensor), ctx.opset, graph)


def _bounds_of(node: onnx.NodeProto | None, opset: int, graph: onnx.GraphProto
               ) -> tuple[float | None, float | None]:
    if node is None or node.op_type != "Clip" or node.domain not in ("", "ai.onnx"):
        return None, None
    if opset < 11:
        attrs = {a.name: float(a.f) for a in node.attribute}
        low, high = attrs.get("min"), attrs.get("max")
        limit = float(np.finfo(np.float32).max)
        return (None if low is None or low <= -limit else low,
                None if high is None or high >= limit else high)
    inputs = [*node.input, "", ""]
    return _constant_scalar(inputs[1], graph), _constant_scalar(inputs[2], graph)


def _constant_scalar(name: str, graph: onnx.GraphProto) -> float | None:
    """Value of a one-element initializer or Constant node output, else None."""
    if not name:
        return None
    found: NDArray[np.generic] | None = None
    for init in graph.initializer:
        if init.name == name:
            found = onnx.numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            value = next((a for a in node.attribute if a.name == "value"), None)
            found = None if value is None else onnx.numpy_helper.to_array(value.t)
    if found is None or found.size != 1:
        return None
    return float(np.asarray(found, np.float32).reshape(()))


# -- Score-CAM masking on the device ---------------------------------------------------------
MASK_IMAGES = "featviz/mask/images"
MASK_INDEX = "featviz/mask/index"
MASK_MAPS = "featviz/mask/maps"


def _interp_matrix(n_in: int, n_out: int) -> NDArray[np.float32]:
    """(n_out, n_in) 1-D linear interpolation, half-pixel centres, clamped at the edges."""
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.intp), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    mat = np.zeros((n_out, n_in))
    np.add.at(mat, (np.arange(n_out), lo), 1.0 - (src - lo))
    np.add.at(mat, (np.arange(n_out), hi), src - lo)
    return mat.astype(np.float32)


def mask_input(model: onnx.ModelProto, *, map_size: tuple[int, int],
               input_size: tuple[int, int], layout: str = "NCHW", eps: float = 1e-8
               ) -> onnx.ModelProto:
    """Return a copy whose input is computed as ``images[index] * minmax(upsample(maps))``.

    Score-CAM feeds one masked image per (image, channel) row. Built on the host that is
    ``rows x C x H x W`` floats per pass to copy to the device; here only the small layer maps
    (B, h, w), a row -> image index (B,) and the distinct images (M, C, H, W) are fed, and the
    masks are made by the session: bilinear upsampling with half-pixel centres as two MatMuls
    with constant interpolation matrices (exactly ``cam.upsample_bilinear``), then
    ``(m - min) / (max - min + eps)`` per row, Gather of each row's image, Mul, the transpose
    to NHWC / squeeze to NHW where the model wants it, and a Cast to the input's dtype. These
    nodes go before the existing ones (they feed the old input); ops used exist at opset 7.

    Args:
        model: a model with one image input (not modified).
        map_size: (h, w) of the layer maps; input_size: (H, W) of the model input.
        layout: the model input's layout, ``NCHW``, ``NHWC`` or ``NHW``.
        eps: added to the range in the min-max scaling.

    Returns:
        The copy; inputs ``MASK_IMAGES`` float32 (M, C, H, W), ``MASK_INDEX`` int64 (B,),
        ``MASK_MAPS`` float32 (B, h, w); same outputs, ``ir_version`` and opsets.

    Raises:
        InputError: the model has no single graph input to replace.
    """
    out = _copy(model)
    graph = out.graph
    inits = {t.name for t in graph.initializer}
    real = [v for v in graph.input if v.name not in inits]
    if len(real) != 1:
        raise InputError(f"masking needs a model with one image input, found "
                         f"{[v.name for v in real]}")
    image = real[0]
    ctx = _context(out, None, None)
    nodes: list[onnx.NodeProto] = []

    def const(key: str, value: NDArray[np.generic]) -> str:
        name = f"{_CONST}mask/{key}"
        tensor = onnx.numpy_helper.from_array(value, name)
        nodes.append(helper.make_node("Constant", [], [name], name=name, value=tensor))
        return name

    def node(op: str, inputs: list[str], purpose: str, **attrs: int | list[int]) -> str:
        name = f"featviz/mask/{purpose}"
        made = helper.make_node(op, inputs, [name], name=name)
        made.attribute.extend(helper.make_attribute(k, v) for k, v in sorted(attrs.items()))
        nodes.append(made)
        return name

    rows = const("rows", _interp_matrix(map_size[0], input_size[0]))
    cols = const("cols_t", _interp_matrix(map_size[1], input_size[1]).T.copy())
    up = node("MatMul", [node("MatMul", [rows, MASK_MAPS], "upsample_rows"), cols], "upsample")
    flat = node("Reshape", [up, const("flat", np.array([0, -1], np.int64))], "flat")
    if ctx.opset < 18:
        lo = node("ReduceMin", [flat], "min", axes=[1], keepdims=1)
        hi = node("ReduceMax", [flat], "max", axes=[1], keepdims=1)
    else:
        axes = const("axes", np.array([1], np.int64))
        lo = node("ReduceMin", [flat, axes], "min", keepdims=1)
        hi = node("ReduceMax", [flat, axes], "max", keepdims=1)
    span = node("Add", [node("Sub", [hi, lo], "range"), const("eps", np.array(eps, np.float32))],
                "range_eps")
    mask = node("Div", [node("Sub", [flat, lo], "shifted"), span], "mask_flat")
    shape = np.array([0, 1, input_size[0], input_size[1]], np.int64)
    mask4 = node("Reshape", [mask, const("shape", shape)], "mask")
    rows_img = node("Gather", [MASK_IMAGES, MASK_INDEX], "row_images", axis=0)
    masked = node("Mul", [rows_img, mask4], "masked")
    if layout == "NHWC":
        masked = node("Transpose", [masked], "nhwc", perm=[0, 2, 3, 1])
    elif layout == "NHW":
        masked = node("Reshape", [masked, const("nhw", np.array(
            [0, input_size[0], input_size[1]], np.int64))], "nhw")
    elem = image.type.tensor_type.elem_type
    if elem != TensorProto.FLOAT:
        masked = node("Cast", [masked], "cast", to=elem)
    nodes.append(helper.make_node("Identity", [masked], [image.name],
                                  name=f"featviz/mask/{image.name}"))
    channels = 1 if layout == "NHW" else None
    kept = [v for v in graph.input if v.name != image.name]
    del graph.input[:]
    graph.input.extend([
        helper.make_tensor_value_info(MASK_IMAGES, TensorProto.FLOAT,
                                      ["featviz_images", channels, *input_size]),
        helper.make_tensor_value_info(MASK_INDEX, TensorProto.INT64, ["featviz_rows"]),
        helper.make_tensor_value_info(MASK_MAPS, TensorProto.FLOAT, ["featviz_rows", *map_size]),
        *kept])
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *old])
    return out
