"""Tensor layouts (``NCHW``, ``NHWC``, ``NTC``) inferred from the graph, never from shapes alone.

Each axis of a tensor gets a label: ``N`` batch, ``C`` channels, ``c`` one factor of a channel
axis split in two (a channel shuffle's ``(N, g, C/g, H, W)``), ``S`` spatial, ``T`` tokens
(spatial axes merged into one), ``?`` unknown. Labels start at the graph inputs and at the ops
whose ONNX definition fixes an NCHW input and output (Conv, ConvTranspose, pools, BatchNorm,
InstanceNorm, ...), and flow forward through Transpose (permuted), Reshape / Flatten / Squeeze /
Unsqueeze (matched by grouping the inferred input and output dims: batch merges and splits keep
``N``, merged spatial axes become ``T``, a split channel axis merges back to ``C``), elementwise
and broadcasting ops (per-axis agreement of same-rank inputs), Concat, Slice, Split, Reduce*,
LayerNormalization over the last axis (that axis is ``C``: channel-last evidence) and
MatMul / Gemm by a constant 2-D weight (a channels-last linear layer: the last axis stays ``C``).
A graph input takes its labels from the first NCHW op it reaches through Transposes and
elementwise ops, else from the ``featviz.preprocess`` metadata ``layout``.

Reported names: ``"NCHW"`` is ``(N, C, S, ...)`` (channel axis 1, any number of spatial axes),
``"NHWC"`` is ``(N, S, ..., C)`` (channel last), ``"NTC"`` is a rank-3 token tensor
``(N, T, C)`` as in ViT and Swin attention; anything else is None.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import onnx
from onnx import ModelProto, NodeProto, shape_inference

from onnx_featviz.errors import ModelError
from onnx_featviz.structs import META_PREPROCESS, Shape

Labels = tuple[str, ...]

#: Ops whose input 0 and output are (N, C, spatial...) by their ONNX definition.
NCHW_OPS = frozenset({
    "Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool",
    "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "BatchNormalization",
    "InstanceNormalization", "GroupNormalization", "LRN", "DepthToSpace", "SpaceToDepth",
    "MaxUnpool", "QLinearAveragePool", "QLinearGlobalAveragePool",
})
#: Ops whose output has input 0's layout (unary, or extra inputs that are parameters).
SAME_OPS = frozenset({
    "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Gelu", "Elu",
    "Selu", "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Celu", "Identity", "Cast",
    "Dropout", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Erf", "Floor", "Ceil", "Round",
    "Sign", "Softmax", "LogSoftmax", "Hardmax", "QuantizeLinear", "DequantizeLinear", "Not",
    "IsNaN", "IsInf", "Pad", "Resize", "Upsample", "Slice", "Split", "CumSum", "Sin", "Cos",
    "Shrink", "Trilu", "Swish",
})
#: Elementwise ops with several same-shape (broadcast) tensor inputs.
BROADCAST_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Where", "Equal", "Less",
    "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "PRelu", "Concat",
})
RESHAPE_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
REDUCE_OPS = frozenset({
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
})


def tensor_layouts(model: ModelProto) -> dict[str, str | None]:
    """Infer the layout of every graph input and node output of rank >= 3.

    Args:
        model: the model; not modified (shape inference runs on a copy).

    Returns:
        tensor name -> ``"NCHW"`` (channel axis 1), ``"NHWC"`` (channel axis last), ``"NTC"``
        (rank-3 tokens, channel last) or None (unknown or not a spatial/token tensor), in
        graph order. Tensors of unknown rank are absent.

    Raises:
        ModelError: the model's graph cannot be read.
    """
    labels = tensor_labels(model)
    return {name: layout_name(lab) for name, lab in labels.items() if len(lab) >= 3}


def tensor_labels(model: ModelProto) -> dict[str, Labels]:
    """Return per-axis labels (see module doc) of every graph input and node output of known
    rank; the building block of ``tensor_layouts``."""
    shapes = _inferred_shapes(model)
    graph = model.graph
    consts = _constant_tensors(model)
    labels: dict[str, Labels] = {}
    producers = {name: node for node in graph.node for name in node.output}
    for inp in graph.input:
        if inp.name in consts or shapes.get(inp.name) is None:
            continue
        labels[inp.name] = _input_labels(model, inp.name, shapes)
    for node in graph.node:
        for name in node.output:
            shape = shapes.get(name)
            if shape is None or not name or name in consts:
                continue
            found = _node_labels(node, labels, shapes, consts)
            if node.op_type in RESHAPE_OPS and (found is None or "?" in found):
                found = _restored(node, labels, shapes, producers) or found
            labels[name] = found if found is not None and len(found) == len(shape) else (
                ("?",) * len(shape))
        if node.op_type in NCHW_OPS and node.input and shapes.get(node.input[0]) is not None:
            labels[node.input[0]] = _nchw(len(shapes[node.input[0]] or ()))
    return labels


def layout_name(labels: Sequence[str]) -> str | None:
    """Name a label tuple: ``NCHW``, ``NHWC``, ``NTC`` or None (see module doc)."""
    lab = tuple(labels)
    if len(lab) < 3 or lab[0] != "N":
        return None
    if lab[1] == "C" and set(lab[2:]) == {"S"}:
        return "NCHW"
    if lab[-1] == "C" and set(lab[1:-1]) == {"S"}:
        return "NHWC"
    if lab == ("N", "T", "C"):
        return "NTC"
    return None


def _inferred_shapes(model: ModelProto) -> dict[str, Shape | None]:
    """Return tensor name -> shape from ONNX shape inference on a copy of ``model``."""
    copy = ModelProto()
    copy.CopyFrom(model)
    try:
        inferred = shape_inference.infer_shapes(copy, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as err:
        raise ModelError(f"shape inference failed on the model: {err}; run "
                         "onnx.checker.check_model on it to find the broken node") from err
    graph = inferred.graph
    shapes: dict[str, Shape | None] = {i.name: tuple(i.dims) for i in graph.initializer}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        ttype = info.type.tensor_type
        if not ttype.HasField("shape"):
            shapes.setdefault(info.name, None)
            continue
        shapes[info.name] = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in ttype.shape.dim)
    return shapes


def _constant_tensors(model: ModelProto) -> set[str]:
    """Return initializers and tensors computed from constants alone (Constant, Transpose of a
    weight...)."""
    consts = {init.name for init in model.graph.initializer}
    for node in model.graph.node:
        if all(not name or name in consts for name in node.input):
            consts.update(node.output)
    return consts


def _nchw(rank: int) -> Labels:
    """Return ``(N, C, S, ...)`` labels of the given rank."""
    return ("N", "C") + ("S",) * (rank - 2) if rank >= 2 else ("?",) * rank


def _input_labels(model: ModelProto, name: str, shapes: dict[str, Shape | None]) -> Labels:
    """Labels of graph input ``name``: from the first NCHW op reached through Transposes and
    layout-preserving ops, else from the preprocessing metadata, else unknown."""
    rank = len(shapes[name] or ())
    consumers: dict[str, list[NodeProto]] = {}
    for node in model.graph.node:
        for inp in node.input:
            consumers.setdefault(inp, []).append(node)
    todo: list[tuple[str, tuple[int, ...]]] = [(name, tuple(range(rank)))]
    seen: set[str] = set()
    while todo:
        tensor, perm = todo.pop(0)  # axis i of ``tensor`` is axis perm[i] of the input
        if tensor in seen:
            continue
        seen.add(tensor)
        for node in consumers.get(tensor, []):
            if node.op_type in NCHW_OPS and node.input[0] == tensor:
                found = ["?"] * rank
                for axis, label in zip(perm, _nchw(rank), strict=True):
                    found[axis] = label
                return tuple(found)
            if node.op_type == "Transpose":
                order = _ints(node, "perm") or list(reversed(range(rank)))
                todo.append((node.output[0], tuple(perm[a] for a in order)))
            elif node.op_type in SAME_OPS or node.op_type in BROADCAST_OPS - {"Concat"}:
                todo.append((node.output[0], perm))
    return _metadata_labels(model, rank)


def _metadata_labels(model: ModelProto, rank: int) -> Labels:
    """Labels of a rank-4 input from the ``featviz.preprocess`` ``layout`` key, else unknown."""
    for prop in model.metadata_props:
        if prop.key != META_PREPROCESS or rank != 4:
            continue
        try:
            layout = json.loads(prop.value).get("layout")
        except (ValueError, AttributeError):
            layout = None
        if layout == "NCHW":
            return _nchw(4)
        if layout == "NHWC":
            return ("N", "S", "S", "C")
    return ("?",) * rank


def _ints(node: NodeProto, attr: str) -> list[int] | None:
    """Return an int or ints attribute of ``node`` as a list, or None when absent."""
    for a in node.attribute:
        if a.name == attr:
            return list(a.ints) if a.ints else [a.i]
    return None


def _node_labels(node: NodeProto, labels: dict[str, Labels],
                 shapes: dict[str, Shape | None], consts: set[str]) -> Labels | None:
    """Return the labels of ``node``'s outputs (all alike), or None when unknown."""
    op = node.op_type
    first = labels.get(node.input[0]) if node.input else None
    out_shape = shapes.get(node.output[0]) if node.output else None
    if op in NCHW_OPS:
        return _nchw(len(out_shape)) if out_shape is not None else None
    if op in BROADCAST_OPS and out_shape is not None:
        same = [labels[i] for i in node.input
                if i in labels and i not in consts and len(labels[i]) == len(out_shape)]
        return _agree(same) if same else None
    if first is None or out_shape is None:
        return None
    if op in SAME_OPS:
        return first
    if op == "Transpose":
        perm = _ints(node, "perm") or list(reversed(range(len(first))))
        return tuple(first[a] for a in perm)
    if op in RESHAPE_OPS:
        return _regroup(shapes.get(node.input[0]), out_shape, first)
    if op == "LayerNormalization":
        axis = (_ints(node, "axis") or [-1])[0]
        last = axis in (-1, len(first) - 1) and first[-1] != "S"
        return first[:-1] + ("C",) if last else first
    if op in ("MatMul", "Gemm") and len(node.input) > 1:
        weight = shapes.get(node.input[1])
        linear = node.input[1] in consts and weight is not None and len(weight) == 2
        return first[:-1] + ("C" if linear and first[-1] != "S" else "?",)
    if op in REDUCE_OPS:
        return _reduced(node, first, out_shape)
    return _gathered(node, first, out_shape) if op == "Gather" else None


def _restored(node: NodeProto, labels: dict[str, Labels], shapes: dict[str, Shape | None],
              producers: dict[str, NodeProto], depth: int = 6) -> Labels | None:
    """Labels of the tensor a reshape restores: the nearest upstream tensor of the very same
    shape, reached through reshapes, InstanceNorm and elementwise ops (GroupNorm's
    ``(N, C, H, W) -> (N, G, -1) -> norm -> (N, C, H, W)``). Transposes stop the search: a
    permuted square map can have the same shape and another layout."""
    target = shapes.get(node.output[0])
    if target is None or any(not isinstance(d, int) and d is None for d in target):
        return None
    tensor = node.input[0]
    for _ in range(depth):
        if shapes.get(tensor) == target and tensor in labels and "?" not in labels[tensor]:
            return labels[tensor]
        prev = producers.get(tensor)
        passes = RESHAPE_OPS | SAME_OPS | BROADCAST_OPS | {"InstanceNormalization"}
        if prev is None or prev.op_type not in passes or not prev.input:
            return None
        tensor = prev.input[0]
    return None


def _agree(inputs: list[Labels]) -> Labels:
    """Merge same-rank labels axis by axis: known beats ``?``, a conflict gives ``?``."""
    out = []
    for axis in zip(*inputs, strict=True):
        known = {a for a in axis if a != "?"}
        out.append(known.pop() if len(known) == 1 else "?")
    return tuple(out)


def _reduced(node: NodeProto, first: Labels, out_shape: Shape) -> Labels | None:
    """Reduced axes stay (keepdims: a 1x1 map is still NCHW, like GlobalAveragePool's) or
    vanish."""
    if len(out_shape) == len(first):
        return first
    axes = _ints(node, "axes")
    if axes is None:
        return None
    gone = {a % len(first) for a in axes}
    return tuple(a for i, a in enumerate(first) if i not in gone)


def _gathered(node: NodeProto, first: Labels, out_shape: Shape) -> Labels | None:
    """Gather along ``axis`` drops that axis for a scalar index, else marks it ``?``."""
    axis = (_ints(node, "axis") or [0])[0] % len(first)
    extra = len(out_shape) - len(first) + 1  # rank of the indices
    return first[:axis] + ("?",) * extra + first[axis + 1:] if extra >= 0 else None


def _regroup(src: Shape | None, dst: Shape, labels: Labels) -> Labels | None:
    """Match ``src`` dims to ``dst`` dims in groups of equal product and label ``dst``."""
    if src is None or len(src) != len(labels):
        return None
    out: list[str] = []
    i = j = 0
    while i < len(src) or j < len(dst):
        if i < len(src) and j < len(dst) and src[i] == dst[j] == 1:
            out.append(labels[i])
            i, j = i + 1, j + 1
        elif j >= len(dst):
            return tuple(out) if all(d == 1 for d in src[i:]) else None
        elif i >= len(src):
            return tuple(out) + ("?",) * (len(dst) - j) if all(d == 1 for d in dst[j:]) else None
        elif not isinstance(src[i], int) or not isinstance(dst[j], int):
            if src[i] != dst[j] or src[i] is None:
                return None
            out.append(labels[i])
            i, j = i + 1, j + 1
        else:
            group = _product_group(src, dst, i, j)
            if group is None:
                return None
            i2, j2 = group
            out += _group_labels(labels[i:i2], src[i:i2], dst[j:j2])
            i, j = i2, j2
    return tuple(out)


def _product_group(src: Shape, dst: Shape, i: int, j: int) -> tuple[int, int] | None:
    """Return the ends (exclusive) of the smallest src[i:a] / dst[j:b] of equal product."""
    pa, pb = src[i], dst[j]
    assert isinstance(pa, int) and isinstance(pb, int)
    if pa < 0 or pb < 0 or (pa == 0) != (pb == 0):
        return None
    i, j = i + 1, j + 1
    while pa != pb:
        side, k = (src, i) if pa < pb else (dst, j)
        if k >= len(side) or not isinstance(side[k], int) or side[k] == 0:
            return None
        dim = side[k]
        assert isinstance(dim, int)
        if pa < pb:
            pa, i = pa * dim, i + 1
        else:
            pb, j = pb * dim, j + 1
    return i, j


def _group_labels(src: Labels, src_dims: Shape, dst_dims: Shape) -> list[str]:
    """Label the output axes ``dst_dims`` made from input axes ``src_dims`` labelled ``src``."""
    count = len(dst_dims)
    big_src = [lab for lab, d in zip(src, src_dims, strict=True) if d != 1]
    big_dst = [k for k, d in enumerate(dst_dims) if d != 1]
    if len(big_src) == 1 and len(big_dst) == 1:  # only size-1 axes added or removed
        return [big_src[0] if k == big_dst[0] else "?" for k in range(count)]
    if len(src) == 1 and count == 1:
        return [src[0]]
    if len(src) == 1:  # a split
        if src[0] == "N":
            return ["N"] + ["?"] * (count - 1)
        if src[0] in ("C", "c"):
            return ["c"] * count
        return ["S"] * count if src[0] in ("S", "T") else ["?"] * count
    if count != 1:
        return ["?"] * count
    if src[0] == "N":  # windows or heads folded into the batch
        return ["N"]
    if set(src) <= {"S", "T"}:
        return ["T"]
    return ["C"] if set(src) == {"c"} else ["?"]
