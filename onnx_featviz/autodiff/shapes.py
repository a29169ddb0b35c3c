"""Static facts the gradient rules need: tensor types/shapes and constant values.

``infer_types`` runs onnx shape inference and then fills in the ranks it lost (dynamic Reshape
targets and Resize scales are common in torch exports) with a small rank propagation, so rules
that only need a rank work on dynamic-batch models. ``constants`` returns initializer and
Constant values, folding small all-constant subgraphs (Concat of Constants feeding Resize
scales, Identity/Cast of weights) with the onnx reference evaluator.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import helper, numpy_helper

from onnx_featviz.errors import ModelError
from onnx_featviz.structs import Shape

Types = dict[str, tuple[int, Shape | None]]
_SAME_RANK = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Clip", "Erf", "Gelu", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs",
    "Softmax", "LogSoftmax", "Slice", "Pad", "Cast", "Identity", "Dropout", "Transpose",
    "BatchNormalization", "LayerNormalization", "Resize", "Upsample", "Conv", "ConvTranspose",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "QuantizeLinear",
    "DequantizeLinear", "Split", "Floor", "Ceil", "Round", "Sign", "InstanceNormalization",
    "LRN", "GroupNormalization", "MeanVarianceNormalization", "LpNormalization", "Mish",
    "Softsign", "Sin", "Cos", "Tan", "Atan", "Asin", "Acos", "Sinh", "Cosh", "Celu",
    "ThresholdedRelu", "Shrink", "CastLike", "Hardmax", "CumSum", "Trilu", "ScatterND",
    "ScatterElements", "GatherElements", "TopK", "DepthToSpace", "SpaceToDepth", "Tile",
})
_BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Sum", "Max", "Min", "Where",
                        "Mean", "Equal", "Greater", "Less", "And", "Or"})
_FOLD_LIMIT = 100_000
_NO_FOLD = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike",
                      "RandomUniformLike", "Multinomial", "Bernoulli"})


def infer_types(model: onnx.ModelProto) -> Types:
    """Return tensor -> (elem type, shape) with symbolic dims as str and unknown dims None.

    ceil_mode pools follow onnxruntime, which drops a last window that starts in the end
    padding (as torch does) where onnx shape inference keeps it: such pools are inferred with
    an equivalent floor-mode padding so every downstream static shape matches the runtime.

    Raises:
        ModelError: onnx shape inference fails on the model.
    """
    types = _infer(model)
    fixed = _runtime_pools(model, types)
    return types if fixed is None else _infer(fixed)


def _runtime_pools(model: onnx.ModelProto, types: Types) -> onnx.ModelProto | None:
    """A copy whose ceil_mode pools use floor-mode end pads giving onnxruntime's sizes."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    changed = False
    for node in out.graph.node:
        if node.op_type not in ("MaxPool", "AveragePool") or not _attr(node, "ceil_mode"):
            continue
        spatial = (types.get(node.input[0], (0, None))[1] or ())[2:]
        kernel = list(_attr(node, "kernel_shape") or [])
        pads = list(_attr(node, "pads") or [0] * 2 * len(kernel))
        if (_attr(node, "auto_pad") or b"NOTSET") not in (b"NOTSET", "NOTSET") or len(
                spatial) != len(kernel) or not all(isinstance(d, int) for d in spatial):
            continue
        k = len(kernel)
        ends = floor_mode_end_pads(kernel, list(_attr(node, "strides") or [1] * k), pads,
                                   list(_attr(node, "dilations") or [1] * k),
                                   [int(d) for d in spatial])  # type: ignore[arg-type]
        keep = [a for a in node.attribute if a.name not in ("ceil_mode", "pads")]
        del node.attribute[:]
        node.attribute.extend(keep + [helper.make_attribute("pads", pads[:k] + ends)])
        changed = True
    return out if changed else None


def _infer(model: onnx.ModelProto) -> Types:
    """Run onnx shape inference and collect types (symbolic dims as str, unknown as None)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as err:  # noqa: BLE001 - onnx raises several types
        raise ModelError(f"onnx shape inference failed on the model: {err}; check the model "
                         "with onnx.checker.check_model") from err
    types: Types = {}
    graph = inferred.graph
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        tt = vi.type.tensor_type
        shape: Shape | None = None
        if tt.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else
                          (d.dim_param if d.dim_param and not d.dim_param.startswith("unk__")
                           else None) for d in tt.shape.dim)
        types[vi.name] = (tt.elem_type, shape)
    for init in graph.initializer:
        types[init.name] = (init.data_type, tuple(int(d) for d in init.dims))
    _fill_ranks(model, types, constants(model))
    return types


def _rank(types: Types, name: str) -> int | None:
    shape = types.get(name, (0, None))[1]
    return None if shape is None else len(shape)


def _attr(node: onnx.NodeProto, name: str) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def _out_rank(node: onnx.NodeProto, types: Types, consts: dict[str, NDArray[Any]]
              ) -> int | None:
    """Rank of a node's outputs from its inputs' ranks (None when unknown)."""
    op = node.op_type
    ranks = [_rank(types, i) if i else None for i in node.input]
    if op in _SAME_RANK:
        return ranks[0]
    if op in _BROADCAST:
        known = [r for r, i in zip(ranks, node.input, strict=False) if i]
        return max(known) if known and all(r is not None for r in known) else None  # type: ignore
    if op in ("Gemm", "Flatten"):
        return 2
    if op == "Reshape":
        shape = types.get(node.input[1], (0, None))[1]
        return int(shape[0]) if shape and isinstance(shape[0], int) else None
    if op == "MatMul" and ranks[0] is not None and ranks[1] is not None:
        ra, rb = ranks[0], ranks[1]
        return max(ra, rb) - (1 if min(ra, rb) == 1 else 0) if max(ra, rb) > 1 else 0
    if op == "Gather" and ranks[0] is not None and ranks[1] is not None:
        return ranks[0] + ranks[1] - 1
    if op == "Concat":
        return next((r for r in ranks if r is not None), None)
    if op == "Einsum" and all(r is not None for r in ranks):
        return _einsum_rank(node, ranks)  # type: ignore[arg-type]
    return _axes_rank(node, ranks, consts)


def _einsum_rank(node: onnx.NodeProto, ranks: list[int]) -> int | None:
    """Output rank of an Einsum whose broadcast ``...`` shape inference may not resolve."""
    from onnx_featviz.autodiff.rules_einsum import parse_equation

    try:
        terms, out, dots = parse_equation(str(_attr(node, "equation").decode()), len(ranks))
    except ModelError:
        return None
    return len(out) + (max(r - len(t) for r, t in zip(ranks, terms, strict=True)) if dots
                       else 0)


def _axes_rank(node: onnx.NodeProto, ranks: list[int | None],
               consts: dict[str, NDArray[Any]]) -> int | None:
    """Rank after Squeeze/Unsqueeze/Reduce* with known axes."""
    op = node.op_type
    if ranks[0] is None or not (op in ("Squeeze", "Unsqueeze") or op.startswith("Reduce")):
        return None
    axes = _attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1] in consts:
        axes = consts[node.input[1]].tolist()
    if op.startswith("Reduce"):
        if int(_attr(node, "keepdims") if _attr(node, "keepdims") is not None else 1):
            return ranks[0]
        return None if axes is None else (ranks[0] - len(axes) if axes else 0)
    if axes is None:
        return None
    return ranks[0] + len(axes) if op == "Unsqueeze" else ranks[0] - len(axes)


def _fill_ranks(model: onnx.ModelProto, types: Types, consts: dict[str, NDArray[Any]]) -> None:
    """Give outputs that shape inference left rankless a shape of unknown (None) dims."""
    for node in model.graph.node:
        missing = [o for o in node.output if o and types.get(o, (0, None))[1] is None]
        if not missing or node.domain not in ("", "ai.onnx"):
            continue
        rank = _out_rank(node, types, consts)
        if rank is None:
            continue
        elem = types.get(node.input[0], (0, None))[0] if node.input else 0
        for out in missing:
            types[out] = (types.get(out, (0, None))[0] or elem, (None,) * rank)


def constants(model: onnx.ModelProto) -> dict[str, NDArray[Any]]:
    """Return constant tensor values: initializers, Constant nodes, small folded subgraphs."""
    consts: dict[str, NDArray[Any]] = {
        i.name: numpy_helper.to_array(i) for i in model.graph.initializer
        if i.data_location != onnx.TensorProto.EXTERNAL}  # weights left on disk stay there
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type in _NO_FOLD:
            continue
        if node.op_type == "Identity" and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]
        elif node.op_type == "Constant" or (
                node.input and all(not i or i in consts for i in node.input)
                and sum(consts[i].size for i in node.input if i) <= _FOLD_LIMIT):
            consts.update(_fold(node, consts))
    return consts


def _fold(node: onnx.NodeProto, consts: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
    """Evaluate one node on constant inputs with the onnx reference evaluator ({} on failure)."""
    from onnx.reference import ReferenceEvaluator

    try:
        feeds = {i: consts[i] for i in node.input if i}
        inputs = [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(v.dtype),
                                                v.shape) for i, v in feeds.items()]
        outputs = [helper.make_tensor_value_info(o, 0, None) for o in node.output if o]
        graph = helper.make_graph([node], "fold", inputs, outputs)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)],
                                  ir_version=10)
        values = ReferenceEvaluator(model).run(None, feeds)
    except Exception:  # noqa: BLE001 - folding is best effort; the rule reports what it needs
        return {}
    return {o: np.asarray(v) for o, v in zip([o for o in node.output if o], values, strict=False)}


def floor_mode_end_pads(kernel: list[int], strides: list[int], pads: list[int],
                        dilations: list[int], spatial: list[int]) -> list[int]:
    """End pads that make a floor-mode pool produce onnxruntime's ceil_mode windows."""
    k = len(kernel)
    ends = []
    for i in range(k):
        eff = (kernel[i] - 1) * dilations[i] + 1
        o = -(-(spatial[i] + pads[i] + pads[k + i] - eff) // strides[i]) + 1
        if (o - 1) * strides[i] >= spatial[i] + pads[i]:
            o -= 1
        ends.append(max((o - 1) * strides[i] + eff - spatial[i] - pads[i], 0))
    return ends
