"""Vector-Jacobian rules: one function per ONNX op type, each emitting standard ONNX ops.

A rule takes the :class:`~onnx_featviz.autodiff.emit.Emitter`, the forward node and the
gradients of the node's outputs (``None`` for an output that receives none) and returns the
gradients of the node's inputs in input order (``None`` where none is needed: constant or
inactive inputs). All gradients are in the emitter's compute dtype (float32, or float64 for
float64 models); forward tensors are read through ``ctx.fwd`` which casts float16 to it.

:data:`RULES` holds the rules of this module and those of ``rules_math`` (elementwise maths,
Max/Min/Mean/Where, reductions), ``rules_norm`` (Instance/Group/Lp/MeanVariance norms, LRN),
``rules_index`` (gathers, scatters, TopK, depth/space, Expand, Tile, Trilu, CumSum) and
``rules_einsum``; shared helpers live in ``vjp``. Which rules are exact and which are limited
is listed in :data:`LIMITS`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from onnx_featviz.autodiff.emit import INT64_MAX, Emitter
from onnx_featviz.autodiff.emit import node_attr as attr
from onnx_featviz.autodiff.resize import resize_vjp, upsample_vjp
from onnx_featviz.autodiff.rules_act import (
    abs_vjp,
    clip_vjp,
    elu_vjp,
    erf_vjp,
    exp_vjp,
    gelu_vjp,
    hardsigmoid_vjp,
    hardswish_vjp,
    leakyrelu_vjp,
    log_vjp,
    neg_vjp,
    prelu_vjp,
    reciprocal_vjp,
    relu_vjp,
    selu_vjp,
    sigmoid_vjp,
    softplus_vjp,
    sqrt_vjp,
    tanh_vjp,
    zero_vjp,
)
from onnx_featviz.autodiff.rules_einsum import EINSUM_RULES
from onnx_featviz.autodiff.rules_index import INDEX_RULES, index_min_opset
from onnx_featviz.autodiff.rules_math import MATH_RULES
from onnx_featviz.autodiff.rules_norm import NORM_RULES
from onnx_featviz.autodiff.rules_reduce import (
    batchnorm_vjp,
    globalmaxpool_vjp,
    layernorm_vjp,
    logsoftmax_vjp,
    reducemax_vjp,
    reducemean_vjp,
    reducesum_vjp,
    softmax_vjp,
)
from onnx_featviz.autodiff.vjp import Grads, Rule
from onnx_featviz.autodiff.vjp import dim_of as _dim
from onnx_featviz.autodiff.vjp import first as _first
from onnx_featviz.autodiff.vjp import fwd_x as _x
from onnx_featviz.autodiff.windows import (
    avgpool_vjp,
    conv_vjp,
    convtranspose_vjp,
    globalavgpool_vjp,
    maxpool_vjp,
    pool_overlaps,
)
from onnx_featviz.errors import ModelError

#: Ops whose rule is exact only under conditions; anything else raises ModelError with the fix.
LIMITS: dict[str, str] = {
    "Conv": "data gradient only (a weight or bias on the path raises ModelError)",
    "ConvTranspose": "pads/output_padding only (output_shape or SAME auto_pad raise ModelError)",
    "Slice": "steps of 1 only; negative starts/ends need a static dimension",
    "Pad": "constant mode only",
    "Gather": "constant indices only",
    "Resize": "nearest/linear/cubic on the last two axes; sizes/scales known only at run time "
              "(symbolic H/W, computed sizes) are taken to resize only the last two axes (N, C "
              "kept, as torch/TF exports do); no antialias, axes, keep_aspect_ratio_policy or "
              "tf_crop_and_resize",
    "Upsample": "as Resize (asymmetric coordinates, floor rounding for nearest)",
    "Pow": "exact for any exponent (Log of the base for an exponent gradient)",
    "QuantizeLinear": "clipped straight-through (zero where the input saturates)",
    "DequantizeLinear": "straight-through (identity)",
    "BatchNormalization": "inference mode: statistics and affine parameters are constants",
    "LayerNormalization": "gradient of the data input only",
    "InstanceNormalization": "gradient of the data input only (scale/bias constant)",
    "GroupNormalization": "data input only; opset < 21: scale/bias per group, >= 21 per channel",
    "LpNormalization": "p = 1 or 2; a zero-norm slice passes the gradient unchanged",
    "MeanVarianceNormalization": "y = (x - mean)/(std + 1e-9), as its ONNX function body",
    "LRN": "gradient of the data input (rank >= 3, channels on axis 1)",
    "GatherND": "batch_dims = 0; repeated indices add (opset 16 backward)",
    "GatherElements": "indices may be computed; repeats add (opset 16 backward)",
    "ScatterND": "reduction none or add; with none, indices must not repeat (ONNX undefined)",
    "ScatterElements": "as ScatterND",
    "TopK": "gradient of the values output (the indices output has none)",
    "DepthToSpace": "DCR any shape; CRD needs a static channel count",
    "Einsum": "distinct letters within each term; '...' must lead every term if any uses it",
    "Max": "ties split the gradient evenly among the tied operands (torch.maximum convention)",
    "Min": "as Max",
    "ReduceMin": "ties share the gradient evenly (as ReduceMax and torch amin)",
    "ReduceL2": "zero where the norm is 0 (torch convention)",
    "ReduceProd": "exact with zeros in the input (product of the other elements)",
    "Hardmax": "zero gradient (piecewise constant)",
    "Where": "gradient of the two value inputs; the condition is boolean",
    "Tile": "repeats may be computed at run time",
    "CumSum": "axis may be computed at run time",
}


# ---------------------------------------------------------------------- pass-through, shape ops
def identity_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Identity, Dropout (inference), Cast (float<->float), DequantizeLinear (straight-through)."""
    return _first(ctx, node, grads[0])


def reshape_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Flatten, Reshape, Squeeze, Unsqueeze: reshape the gradient back to the input's shape."""
    assert grads[0] is not None
    return _first(ctx, node, ctx.reshape_like(grads[0], node.input[0]))


def transpose_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Transpose by the inverse permutation."""
    assert grads[0] is not None
    perm = attr(node, "perm") or list(reversed(range(ctx.rank(node.input[0]))))
    inverse = [int(i) for i in np.argsort(perm)]
    return _first(ctx, node, ctx.op("Transpose", [grads[0]], perm=inverse))


def concat_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Concat: slice each input's part out of the gradient along the concat axis."""
    g = grads[0]
    assert g is not None
    axis = int(attr(node, "axis", 0)) % ctx.rank(node.output[0])
    out: list[str | None] = []
    start = ctx.ints([0])
    for inp in node.input:
        end = ctx.op("Add", [start, _dim(ctx, inp, axis)])
        active = inp in ctx.active
        out.append(ctx.op("Slice", [g, start, end, ctx.ints([axis])]) if active else None)
        start = end
    return out


def split_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Split: concatenate the output gradients (zeros for outputs that receive none)."""
    axis = int(attr(node, "axis", 0)) % ctx.rank(node.input[0])
    parts = [g if g is not None else ctx.zeros_like(out)
             for g, out in zip(grads, node.output, strict=False)]
    return _first(ctx, node, ctx.op("Concat", parts, axis=axis))


def _slice_params(ctx: Emitter, node: onnx.NodeProto) -> list[tuple[int, int | str, int | str]]:
    """Return (axis, start, end) per sliced axis: ints when constant, else 1-D int64 tensors."""
    rank = ctx.rank(node.input[0])
    if len(node.input) == 1:  # opset < 10: attributes
        starts, ends = attr(node, "starts"), attr(node, "ends")
        axes = attr(node, "axes") or list(range(len(starts)))
        return [(int(a) % rank, int(s), int(e)) for a, s, e in zip(axes, starts, ends,
                                                                  strict=True)]
    extra = [n if n else None for n in node.input[3:5]] + [None, None]
    axes_in, steps_in = extra[0], extra[1]
    if steps_in is not None and any(v != 1 for v in ctx.value(steps_in).tolist()):
        raise ModelError(
            f"Slice node {node.name!r} uses steps {ctx.value(steps_in).tolist()}; only step 1 "
            "has a gradient rule; use a gradient-free method (Score-CAM, Ablation-CAM, "
            "Eigen-CAM, occlusion)"
        )
    bounds: list[list[int | str]] = []
    for name in node.input[1:3]:
        if name in ctx.consts:
            bounds.append([int(v) for v in ctx.value(name).tolist()])
        else:
            n = (ctx.shape(name) or (None,))[0]
            if not isinstance(n, int):
                raise ModelError(f"Slice node {node.name!r}: length of {name!r} is unknown; "
                                 "make the slice bounds constant")
            bounds.append([ctx.op("Slice", [name, ctx.ints([k]), ctx.ints([k + 1])])
                           for k in range(n)])
    axes = ctx.value(axes_in).tolist() if axes_in else list(range(len(bounds[0])))
    return [(int(a) % rank, s, e) for a, s, e in zip(axes, bounds[0], bounds[1], strict=True)]


def slice_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Slice (step 1): pad the gradient back with zeros to the input's shape."""
    g = grads[0]
    assert g is not None
    x = node.input[0]
    shape = ctx.shape(x) or ()
    rank = ctx.rank(x)
    pads: list[int | str] = [0] * (2 * rank)
    for axis, start, end in _slice_params(ctx, node):
        dim = shape[axis]
        if isinstance(dim, int) and isinstance(start, int) and isinstance(end, int):
            lo = min(max(start + dim if start < 0 else start, 0), dim)
            hi = min(max(end + dim if end < 0 else end, 0), dim)
            pads[axis], pads[rank + axis] = lo, dim - max(hi, lo)
        elif isinstance(start, int) and isinstance(end, int) and start >= 0 and (
                end >= INT64_MAX // 2):
            pads[axis] = start
        else:
            pads[axis], pads[rank + axis] = _dynamic_slice_pads(ctx, x, axis, start, end)
    if all(isinstance(p, int) for p in pads):
        return _first(ctx, node, ctx.op("Pad", [g, ctx.ints(pads)]))  # type: ignore[arg-type]
    parts = [ctx.ints([p]) if isinstance(p, int) else p for p in pads]
    return _first(ctx, node, ctx.op("Pad", [g, ctx.op("Concat", parts, axis=0)]))


def _dynamic_slice_pads(ctx: Emitter, x: str, axis: int, start: int | str, end: int | str
                        ) -> tuple[str, str]:
    """Begin/end pads (1-D int64 tensors) of a slice computed at run time, clamped like Slice."""
    dim = _dim(ctx, x, axis)
    zero = ctx.ints([0])

    def clamp(v: int | str) -> str:
        t = ctx.ints([min(max(v, -INT64_MAX // 2), INT64_MAX // 2)]) if isinstance(v, int) else v
        t = ctx.where(ctx.op("Less", [t, zero]), ctx.op("Add", [t, dim]), t)
        return ctx.op("Min", [ctx.op("Max", [t, zero]), dim])

    lo, hi = clamp(start), clamp(end)
    return lo, ctx.op("Sub", [dim, ctx.op("Max", [hi, lo])])


def pad_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Pad (constant mode): slice the gradient back; negative pads (crops) are padded back."""
    g = grads[0]
    assert g is not None
    mode = attr(node, "mode", "constant")
    if mode != "constant":
        raise ModelError(
            f"Pad node {node.name!r} uses mode {mode!r}; only constant padding has a gradient "
            "rule; use a gradient-free method (Score-CAM, Ablation-CAM, Eigen-CAM, occlusion)"
        )
    rank = ctx.rank(node.input[0])
    raw = ctx.value(node.input[1]).tolist() if len(node.input) > 1 else attr(node, "pads")
    axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        axes = [int(a) % rank for a in ctx.value(node.input[3]).tolist()]
    begin, end = [0] * rank, [0] * rank
    for i, axis in enumerate(axes):
        begin[axis], end[axis] = int(raw[i]), int(raw[len(axes) + i])
    if any(p < 0 for p in begin + end):
        grow = [max(-p, 0) for p in begin] + [max(-p, 0) for p in end]
        g = ctx.op("Pad", [g, ctx.ints(grow)])
    starts = [max(p, 0) for p in begin]
    ends = [-p if p > 0 else INT64_MAX for p in end]
    return _first(ctx, node, ctx.op("Slice", [g, ctx.ints(starts), ctx.ints(ends),
                                               ctx.ints(range(rank))]))


def gather_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Gather with constant indices: ScatterND the gradient into zeros (add on duplicates)."""
    g, x = grads[0], node.input[0]
    assert g is not None
    rank = ctx.rank(x)
    axis = int(attr(node, "axis", 0)) % rank
    size = (ctx.shape(x) or ())[axis]
    idx = ctx.value(node.input[1]).astype(np.int64)
    q = idx.ndim
    if isinstance(size, int):
        idx = np.where(idx < 0, idx + size, idx)
    indices = ctx.const(idx[..., None])
    if (idx < 0).any():
        shift = ctx.mul(ctx.const((idx[..., None] < 0).astype(np.int64)), _dim(ctx, x, axis))
        indices = ctx.op("Add", [indices, shift])
    perm_g = list(range(axis, axis + q)) + list(range(axis)) + list(range(axis + q, rank + q - 1))
    perm_x = [axis] + list(range(axis)) + list(range(axis + 1, rank))
    updates = ctx.op("Transpose", [g], perm=perm_g) if perm_g != sorted(perm_g) else g
    zeros = ctx.op("Transpose", [ctx.zeros_like(x)], perm=perm_x)
    extra: dict[str, Any] = {"reduction": "add"} if gather_repeats(idx) else {}
    scattered = ctx.op("ScatterND", [zeros, indices, updates], **extra)
    back = ctx.op("Transpose", [scattered], perm=[int(i) for i in np.argsort(perm_x)])
    return _first(ctx, node, back)


def gather_repeats(idx: Any) -> bool:
    """Whether Gather indices may hit one element twice (repeats, or mixed signs)."""
    idx = np.asarray(idx)
    return bool(len(np.unique(idx)) != idx.size or ((idx < 0).any() and (idx >= 0).any()))


_QRANGE: dict[int, tuple[int, int]] = {TensorProto.INT8: (-128, 127), TensorProto.UINT8: (0, 255),
           TensorProto.INT16: (-32768, 32767), TensorProto.UINT16: (0, 65535)}


def quantize_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """QuantizeLinear: clipped straight-through, g where (qmin-zp)*s <= x <= (qmax-zp)*s.

    This is the fake-quantization gradient of quantization-aware training: rounding passes the
    gradient through, saturation (which also implements a fused Relu) stops it.
    """
    g = grads[0]
    assert g is not None
    elem = ctx.types.get(node.output[0], (TensorProto.UINT8, None))[0]
    if elem not in _QRANGE:
        return _first(ctx, node, g)
    qmin, qmax = _QRANGE[elem]
    x, scale = _x(ctx, node), ctx.fwd(node.input[1])
    zp = ctx.const(0.0)
    if len(node.input) > 2 and node.input[2]:
        zp = ctx.op("Cast", [node.input[2]], to=ctx.dtype)
    lo = ctx.mul(ctx.op("Sub", [ctx.const(float(qmin)), zp]), scale)
    hi = ctx.mul(ctx.op("Sub", [ctx.const(float(qmax)), zp]), scale)
    if len(ctx.shape(node.input[1]) or ()) == 1:
        rank = ctx.rank(node.input[0])
        axis = int(attr(node, "axis", 1)) % rank
        shape = ctx.ints([-1] + [1] * (rank - 1 - axis))
        lo, hi = ctx.op("Reshape", [lo, shape]), ctx.op("Reshape", [hi, shape])
    inside = ctx.op("And", [ctx.op("Not", [ctx.op("Less", [x, lo])]),
                            ctx.op("Not", [ctx.op("Greater", [x, hi])])])
    return _first(ctx, node, ctx.where(inside, g, ctx.const(0.0)))


# ---------------------------------------------------------------------- broadcasting arithmetic
def _binary(ctx: Emitter, node: onnx.NodeProto, da: str | None, db: str | None
            ) -> list[str | None]:
    """Unbroadcast the two operand gradients of an elementwise op to their input shapes."""
    a, b = node.input[0], node.input[1]
    out = node.output[0]
    ga = ctx.unbroadcast(da, out, a) if da is not None and a in ctx.active else None
    gb = ctx.unbroadcast(db, out, b) if db is not None and b in ctx.active else None
    return [ga, gb]


def add_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Add: the gradient flows to both operands (summed over broadcast axes)."""
    return _binary(ctx, node, grads[0], grads[0])


def sum_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Sum (variadic): the gradient flows to every operand."""
    g = grads[0]
    assert g is not None
    return [ctx.unbroadcast(g, node.output[0], i) if i in ctx.active else None
            for i in node.input]


def sub_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Sub: +g to the first operand, -g to the second."""
    g = grads[0]
    assert g is not None
    neg = ctx.op("Neg", [g]) if node.input[1] in ctx.active else None
    return _binary(ctx, node, g, neg)


def mul_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Mul: g*b to a and g*a to b."""
    g = grads[0]
    assert g is not None
    a, b = node.input[0], node.input[1]
    da = ctx.mul(g, ctx.fwd(b)) if a in ctx.active else None
    db = ctx.mul(g, ctx.fwd(a)) if b in ctx.active else None
    return _binary(ctx, node, da, db)


def div_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Div: g/b to a and -g*y/b to b."""
    g = grads[0]
    assert g is not None
    a, b = node.input[0], node.input[1]
    bf = ctx.fwd(b)
    da = ctx.op("Div", [g, bf]) if a in ctx.active else None
    db = None
    if b in ctx.active:
        db = ctx.op("Neg", [ctx.op("Div", [ctx.mul(g, ctx.fwd(node.output[0])), bf])])
    return _binary(ctx, node, da, db)


def pow_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Pow: g*b*x^(b-1) to the base, g*y*log(x) to the exponent."""
    g = grads[0]
    assert g is not None
    x, e = ctx.fwd(node.input[0]), ctx.fwd(node.input[1])
    if ctx.types.get(node.input[1], (ctx.dtype, None))[0] != ctx.dtype and e == node.input[1]:
        e = ctx.op("Cast", [e], to=ctx.dtype)
    da = db = None
    if node.input[0] in ctx.active:
        em1 = ctx.op("Sub", [e, ctx.const(1.0)])
        da = ctx.mul(g, ctx.mul(e, ctx.op("Pow", [x, em1])))
    if node.input[1] in ctx.active:
        db = ctx.mul(g, ctx.mul(ctx.fwd(node.output[0]), ctx.op("Log", [x])))
    return _binary(ctx, node, da, db)


def matmul_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """MatMul (batched, broadcast; 1-D operands promoted): dA = g@B^T, dB = A^T@g."""
    g = grads[0]
    assert g is not None
    a, b = node.input[0], node.input[1]
    ra, rb = ctx.rank(a), ctx.rank(b)
    af, bf = ctx.fwd(a), ctx.fwd(b)
    if ra == 1:
        af, g = ctx.unsqueeze(af, [0]), ctx.unsqueeze(g, [-1 if rb == 1 else ctx.rank(
            node.output[0]) - 1])
    if rb == 1:
        bf, g = ctx.unsqueeze(bf, [1]), ctx.unsqueeze(g, [-1])
    da = db = None
    if a in ctx.active:
        da = ctx.op("MatMul", [g, _swap_last(ctx, bf, max(rb, 2))])
        da = _reduce_matmul(ctx, da, a, node.output[0], ra, rb)
    if b in ctx.active:
        db = ctx.op("MatMul", [_swap_last(ctx, af, max(ra, 2)), g])
        db = _reduce_matmul(ctx, db, b, node.output[0], rb, ra)
    return [da, db]


def _swap_last(ctx: Emitter, x: str, rank: int) -> str:
    """Transpose the last two axes."""
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    return ctx.op("Transpose", [x], perm=perm)


def _reduce_matmul(ctx: Emitter, grad: str, target: str, out: str, rt: int, ro: int) -> str:
    """Sum a MatMul operand gradient over broadcast batch axes and reshape to the operand."""
    tshape = ctx.shape(target) or ()
    oshape = ctx.shape(out) or ()
    batch_out = max(rt, ro, 2) - 2
    batch_t = max(rt - 2, 0)
    lead = batch_out - batch_t
    axes = list(range(lead))
    for i in range(batch_t):
        if tshape[i] == 1 and (i + lead >= len(oshape) or oshape[i + lead] != 1):
            axes.append(lead + i)
    if axes:
        grad = ctx.reduce_sum(grad, axes, keepdims=True)
    return ctx.reshape_like(grad, target)


def gemm_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Gemm: Y = alpha*A'B' + beta*C with A' = A^T if transA (B likewise)."""
    g = grads[0]
    assert g is not None
    alpha, beta = float(attr(node, "alpha", 1.0)), float(attr(node, "beta", 1.0))
    ta, tb = int(attr(node, "transA", 0)), int(attr(node, "transB", 0))
    a, b = node.input[0], node.input[1]
    out: list[str | None] = [None] * len(node.input)
    if a in ctx.active:
        bf = ctx.fwd(b)
        out[0] = (ctx.op("Gemm", [bf, g], alpha=alpha, transA=tb, transB=1) if ta
                  else ctx.op("Gemm", [g, bf], alpha=alpha, transB=1 - tb))
    if b in ctx.active:
        af = ctx.fwd(a)
        out[1] = (ctx.op("Gemm", [g, af], alpha=alpha, transA=1, transB=ta) if tb
                  else ctx.op("Gemm", [af, g], alpha=alpha, transA=1 - ta))
    if len(node.input) > 2 and node.input[2] in ctx.active:
        gc = ctx.mul(g, ctx.const(beta)) if beta != 1.0 else g
        out[2] = ctx.unbroadcast(gc, node.output[0], node.input[2])
    return out


RULES: dict[str, Rule] = {
    "Identity": identity_vjp, "Dropout": identity_vjp, "Cast": identity_vjp,
    "QuantizeLinear": quantize_vjp, "DequantizeLinear": identity_vjp,
    "Flatten": reshape_vjp, "Reshape": reshape_vjp, "Squeeze": reshape_vjp,
    "Unsqueeze": reshape_vjp, "Transpose": transpose_vjp, "Concat": concat_vjp,
    "Split": split_vjp, "Slice": slice_vjp, "Pad": pad_vjp, "Gather": gather_vjp,
    "Add": add_vjp, "Sub": sub_vjp, "Mul": mul_vjp, "Div": div_vjp, "Sum": sum_vjp,
    "Pow": pow_vjp, "MatMul": matmul_vjp, "Gemm": gemm_vjp,
    "Relu": relu_vjp, "LeakyRelu": leakyrelu_vjp, "PRelu": prelu_vjp, "Clip": clip_vjp,
    "Elu": elu_vjp, "Selu": selu_vjp, "Sigmoid": sigmoid_vjp, "HardSigmoid": hardsigmoid_vjp,
    "HardSwish": hardswish_vjp, "Tanh": tanh_vjp, "Softplus": softplus_vjp, "Erf": erf_vjp,
    "Gelu": gelu_vjp, "Exp": exp_vjp, "Log": log_vjp, "Sqrt": sqrt_vjp,
    "Reciprocal": reciprocal_vjp, "Neg": neg_vjp, "Abs": abs_vjp,
    "Floor": zero_vjp, "Ceil": zero_vjp, "Round": zero_vjp, "Sign": zero_vjp,
    "ReduceSum": reducesum_vjp, "ReduceMean": reducemean_vjp, "ReduceMax": reducemax_vjp,
    "GlobalMaxPool": globalmaxpool_vjp, "GlobalAveragePool": globalavgpool_vjp,
    "BatchNormalization": batchnorm_vjp, "LayerNormalization": layernorm_vjp,
    "Softmax": softmax_vjp, "LogSoftmax": logsoftmax_vjp,
    "Conv": conv_vjp, "ConvTranspose": convtranspose_vjp, "MaxPool": maxpool_vjp,
    "AveragePool": avgpool_vjp, "Resize": resize_vjp, "Upsample": upsample_vjp,
    **MATH_RULES, **NORM_RULES, **INDEX_RULES, **EINSUM_RULES,
}


"""Op type (default ONNX domain) -> vector-Jacobian rule."""


def min_opset(node: onnx.NodeProto, consts: dict[str, Any]) -> int:
    """Return the lowest opset at which this node's rule can emit its backward nodes.

    11 for every rule (ScatterElements/ScatterND, Pad and Slice with inputs); 16 where a
    scatter must add duplicates (overlapping MaxPool windows, Gather with repeated indices,
    GatherElements, GatherND with computed or repeated indices).
    """
    if node.op_type in ("GatherND", "GatherElements"):
        return index_min_opset(node, consts)
    if node.op_type == "MaxPool" and pool_overlaps(node):
        return 16
    if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in consts:
        if gather_repeats(consts[node.input[1]]):
            return 16
    return 11

