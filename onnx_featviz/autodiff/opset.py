"""Raise a model's default-domain opset for the backward graph, keeping every node's meaning.

``upgrade_opset`` compares each node's schema at the old and the new opset. Unchanged schemas and
ops whose later versions only add types, optional inputs or negative axes (:data:`SAFE`) are kept
as they are; ops whose attributes became inputs or whose semantics changed are rewritten where the
rewrite is exact (:data:`CONVERTERS`: Dropout, BatchNormalization, Softmax/LogSoftmax/Hardmax,
Clip, Squeeze, Unsqueeze, Reduce*, Split, Pad, Slice, Upsample); anything else raises ModelError.
Models older than opset 7 (legacy broadcast attributes) are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, defs, helper, numpy_helper

from onnx_featviz.autodiff.emit import add_initializers
from onnx_featviz.errors import ModelError
from onnx_featviz.structs import Shape

Types = dict[str, tuple[int, Shape | None]]

#: Ops whose schema changes between opset 7 and 17 keep the meaning of a valid model.
SAFE = frozenset({
    "Abs", "Acos", "Add", "And", "ArgMax", "ArgMin", "Asin", "Atan", "AveragePool", "Cast",
    "Ceil", "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos",
    "DepthToSpace", "DequantizeLinear", "Div", "Elu", "Equal", "Erf", "Exp", "Expand",
    "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gemm", "GlobalAveragePool",
    "GlobalMaxPool", "Greater", "HardSigmoid", "Identity", "InstanceNormalization",
    "LeakyRelu", "Less", "Log", "LRN", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mod", "Mul",
    "Neg", "NonZero", "Not", "Or", "Pow", "PRelu", "QuantizeLinear", "Range", "Reciprocal",
    "Relu", "Reshape", "Resize", "Round", "ScatterElements", "ScatterND", "Selu", "Shape",
    "Sigmoid", "Sign", "Sin", "Size", "Softplus", "Softsign", "SpaceToDepth", "Sqrt", "Sub",
    "Sum", "Tan", "Tanh", "Tile", "Transpose", "Where", "Xor", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd",
    "ReduceSumSquare", "ReduceSum", "Squeeze", "Unsqueeze", "Split",
})
_AXES_TO_INPUT = {"ReduceSum": 13, "Squeeze": 13, "Unsqueeze": 13, "ReduceMean": 18,
                  "ReduceMax": 18, "ReduceMin": 18, "ReduceProd": 18, "ReduceL1": 18,
                  "ReduceL2": 18, "ReduceLogSum": 18, "ReduceLogSumExp": 18,
                  "ReduceSumSquare": 18}


def _attrs(node: onnx.NodeProto, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name not in drop}


def _init(inits: list[TensorProto], node: onnx.NodeProto, what: str, value: Any) -> str:
    name = f"featviz/opset/{node.output[0]}/{what}"
    inits.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def _float_np(types: Types, name: str) -> Any:
    elem = types.get(name, (TensorProto.FLOAT, None))[0] or TensorProto.FLOAT
    return helper.tensor_dtype_to_np_dtype(elem)


Converter = Callable[[onnx.NodeProto, int, Types, list[TensorProto], set[str]],
                     list[onnx.NodeProto]]


def _dropout(node: onnx.NodeProto, target: int, types: Types, inits: list[TensorProto],
             used: set[str]) -> list[onnx.NodeProto]:
    """Inference Dropout is the identity; its mask output must be unused."""
    if any(o in used for o in node.output[1:]):
        raise ModelError(f"Dropout node {node.name!r} has its mask output used; it cannot be "
                         "moved to a newer opset exactly; remove the mask consumer")
    return [helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name)]


def _batchnorm(node: onnx.NodeProto, target: int, types: Types, inits: list[TensorProto],
               used: set[str]) -> list[onnx.NodeProto]:
    """Drop legacy attributes (spatial=1, is_test, consumed_inputs) and training outputs."""
    if int(_attrs(node).get("spatial", 1)) != 1:
        raise ModelError(f"BatchNormalization node {node.name!r} uses spatial=0, which newer "
                         "opsets removed; re-export the model with per-channel statistics")
    if any(o in used for o in node.output[1:]):
        raise ModelError(f"BatchNormalization node {node.name!r} uses training outputs; "
                         "export the model in inference mode")
    attrs = _attrs(node, ("spatial", "is_test", "consumed_inputs"))
    return [helper.make_node(node.op_type, list(node.input), [node.output[0]], name=node.name,
                             **attrs)]


def _softmax(node: onnx.NodeProto, target: int, types: Types, inits: list[TensorProto],
             used: set[str]) -> list[onnx.NodeProto]:
    """Before 13 Softmax coerces to 2-D at ``axis``; keep that with Flatten + Reshape."""
    shape = types.get(node.input[0], (0, None))[1]
    if shape is None:
        raise ModelError(f"{node.op_type} node {node.name!r}: rank of its input is unknown, so "
                         "its pre-13 axis semantics cannot be kept; give inputs fixed ranks")
    rank = len(shape)
    axis = int(_attrs(node).get("axis", 1)) % rank
    if all(d == 1 for d in shape[axis + 1:]):
        return [helper.make_node(node.op_type, list(node.input), list(node.output),
                                 name=node.name, axis=axis)]
    base = f"featviz/opset/{node.output[0]}"
    return [
        helper.make_node("Flatten", [node.input[0]], [f"{base}/flat"], name=f"{base}/flat",
                         axis=axis),
        helper.make_node(node.op_type, [f"{base}/flat"], [f"{base}/soft"], name=node.name,
                         axis=1),
        helper.make_node("Shape", [node.input[0]], [f"{base}/shape"], name=f"{base}/shape"),
        helper.make_node("Reshape", [f"{base}/soft", f"{base}/shape"], list(node.output),
                         name=f"{base}/reshape"),
    ]


def _clip(node: onnx.NodeProto, target: int, types: Types, inits: list[TensorProto],
          used: set[str]) -> list[onnx.NodeProto]:
    """Clip min/max attributes become inputs at opset 11."""
    attrs = _attrs(node)
    dtype = _float_np(types, node.input[0])
    lo = _init(inits, node, "min", dtype.type(attrs["min"])) if "min" in attrs else ""
    hi = _init(inits, node, "max", dtype.type(attrs["max"])) if "max" in attrs else ""
    inputs = [node.input[0], lo, hi] if hi else ([node.input[0], lo] if lo else [node.input[0]])
    return [helper.make_node("Clip", inputs, list(node.output), name=node.name)]


def _axes_input(node: onnx.NodeProto, target: int, types: Types, inits: list[TensorProto],
                used: set[str]) -> list[onnx.NodeProto]:
    """Move an ``axes`` attribute (or Split's ``split``) to an int64 input."""
    key = "split" if node.op_type == "Split" else "axes"
    attrs = _attrs(node)
    if key not in attrs or target < _AXES_TO_INPUT.get(node.op_type, 13):
        return [node]
    extra = _init(inits, node, key, np.asarray(attrs[key], np.int64))
    return [helper.make_node(node.op_type, [node.input[0], extra], list(node.output),
                             name=node.name, **_attrs(node, (key,)))]


def _pad(node: onnx.NodeProto, target: int, types: Types, inits: list[TensorProto],
         used: set[str]) -> list[onnx.NodeProto]:
    """Pad pads/value attributes become inputs at opset 11."""
    attrs = _attrs(node)
    pads = _init(inits, node, "pads", np.asarray(attrs.get("pads", attrs.get("paddings")),
                                                  np.int64))
    value = _init(inits, node, "value", _float_np(types, node.input[0]).type(
        attrs.get("value", 0.0)))
    return [helper.make_node("Pad", [node.input[0], pads, value], list(node.output),
                             name=node.name, mode=attrs.get("mode", b"constant"))]


def _slice(node: onnx.NodeProto, target: int, types: Types, inits: list[TensorProto],
           used: set[str]) -> list[onnx.NodeProto]:
    """Slice starts/ends/axes attributes become inputs at opset 10."""
    attrs = _attrs(node)
    names = [_init(inits, node, k, np.asarray(attrs[k], np.int64))
             for k in ("starts", "ends", "axes") if k in attrs]
    return [helper.make_node("Slice", [node.input[0]] + names, list(node.output),
                             name=node.name)]


def _upsample(node: onnx.NodeProto, target: int, types: Types, inits: list[TensorProto],
              used: set[str]) -> list[onnx.NodeProto]:
    """Upsample -> Resize with asymmetric coordinates (floor rounding for nearest)."""
    attrs = _attrs(node)
    mode = attrs.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    mode = "linear" if mode in ("bilinear", "trilinear") else mode
    if "scales" in attrs:
        scales = _init(inits, node, "scales", np.asarray(attrs["scales"], np.float32))
    else:
        scales = node.input[1]
    roi = _init(inits, node, "roi", np.zeros(0, np.float32))
    return [helper.make_node("Resize", [node.input[0], roi, scales], list(node.output),
                             name=node.name, mode=mode,
                             coordinate_transformation_mode="asymmetric", nearest_mode="floor")]


CONVERTERS: dict[str, Converter] = {
    "Dropout": _dropout, "BatchNormalization": _batchnorm, "Softmax": _softmax,
    "LogSoftmax": _softmax, "Hardmax": _softmax, "Clip": _clip, "Pad": _pad, "Slice": _slice,
    "Upsample": _upsample, **{op: _axes_input for op in list(_AXES_TO_INPUT) + ["Split"]},
}


def _since(op: str, opset: int) -> int:
    try:
        return int(defs.get_schema(op, opset).since_version)
    except Exception:  # noqa: BLE001 - unknown op or removed at this opset
        return -1


def _needs_change(op: str, old: int, target: int) -> bool:
    """Whether a node must be rewritten to keep its meaning at ``target``."""
    if _since(op, old) == _since(op, target) and op != "Upsample":
        return False
    if op == "Resize" and _since(op, old) == 10:
        raise ModelError(f"Resize-10 (asymmetric coordinates) cannot be moved to opset {target} "
                         "exactly here; re-export the model at opset >= 11")
    if op in CONVERTERS:
        return True
    if op in SAFE:
        return False
    raise ModelError(
        f"op {op} changed between opset {old} and {target} and has no exact conversion; the "
        f"gradient needs opset {target}; convert the model to opset {target} first (for "
        "example with onnx.version_converter) or use a gradient-free method"
    )


def upgrade_opset(model: onnx.ModelProto, target: int, types: Types) -> onnx.ModelProto:
    """Return a copy of ``model`` at default-domain opset ``target`` with every node's meaning.

    Args:
        model: the model (not modified); nodes in subgraphs are not rewritten.
        target: the new default-domain opset (> the model's).
        types: tensor -> (elem type, shape) from shape inference (for Softmax ranks, dtypes).

    Raises:
        ModelError: the model's opset is below 7, or a node cannot be converted exactly.
    """
    old = default_opset(model)
    if old < 7:
        raise ModelError(f"the model uses opset {old}; gradients need opset >= 7 (legacy "
                         "broadcast attributes); convert the model with onnx.version_converter")
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.domain in ("", "ai.onnx") and _needs_change(node.op_type, old, target):
            nodes.extend(CONVERTERS[node.op_type](node, target, types, inits, used))
        else:
            nodes.append(node)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    add_initializers(out, inits)
    for imp in out.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = target
    return out


def default_opset(model: onnx.ModelProto) -> int:
    """Return the model's default-domain (ai.onnx) opset version."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ModelError("the model imports no default-domain (ai.onnx) opset; it has no standard "
                     "ONNX ops to differentiate")
