"""Vector-Jacobian rules of normalizations: Instance, Group, Lp, MeanVariance and LRN.

The statistics are recomputed from the forward input in the compute dtype. Scale and bias are
treated as constants: a scale or bias that depends on the wrt tensor raises ModelError.
Registered in :data:`NORM_RULES`.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from onnx_featviz.autodiff.emit import Emitter
from onnx_featviz.autodiff.emit import node_attr as attr
from onnx_featviz.autodiff.vjp import Grads, Rule, first, fwd_x
from onnx_featviz.errors import ModelError

#: MeanVarianceNormalization's fixed epsilon (its ONNX function body adds it to the std).
MVN_EPSILON = 1e-9


def _data_only(ctx: Emitter, node: onnx.NodeProto) -> None:
    """Raise ModelError when a parameter input (scale, bias) depends on the wrt tensor."""
    if any(i in ctx.active for i in node.input[1:]):
        raise ModelError(f"{node.op_type} node {node.name!r}: its scale/bias depend on the wrt "
                         "tensor; differentiate with respect to data tensors only")


def standardize_vjp(ctx: Emitter, x: str, gs: str, axes: Sequence[int], eps: float) -> str:
    """Return the VJP of ``(x - mean)/sqrt(var + eps)`` over ``axes`` for output gradient ``gs``.

    ``rstd * (gs - mean(gs) - xhat * mean(gs * xhat))``; every tensor shaped like ``x``.
    """
    centered = ctx.op("Sub", [x, ctx.reduce_mean(x, axes)])
    var = ctx.reduce_mean(ctx.mul(centered, centered), axes)
    rstd = ctx.op("Reciprocal", [ctx.op("Sqrt", [ctx.op("Add", [var, ctx.const(eps)])])])
    xhat = ctx.mul(centered, rstd)
    m1, m2 = ctx.reduce_mean(gs, axes), ctx.reduce_mean(ctx.mul(gs, xhat), axes)
    inner = ctx.op("Sub", [ctx.op("Sub", [gs, m1]), ctx.mul(xhat, m2)])
    return ctx.mul(rstd, inner)


def _per_channel(ctx: Emitter, t: str, rank: int) -> str:
    """Reshape a (C,) tensor to (C, 1, ..., 1) so it broadcasts over (N, C, *spatial)."""
    return ctx.op("Reshape", [ctx.fwd(t), ctx.ints([-1] + [1] * (rank - 2))])


def instancenorm_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """InstanceNormalization: standardization over the spatial axes of each (n, c), times scale."""
    g = grads[0]
    assert g is not None
    _data_only(ctx, node)
    rank = ctx.rank(node.input[0])
    gs = ctx.mul(g, _per_channel(ctx, node.input[1], rank))
    eps = float(attr(node, "epsilon", 1e-5))
    return first(ctx, node, standardize_vjp(ctx, fwd_x(ctx, node), gs, range(2, rank), eps))


def groupnorm_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """GroupNormalization: standardization over (C/G, *spatial) of each group.

    Opset 18 takes scale and bias per group (G,), opset 21 per channel (C,); the form follows
    the model's opset, as the runtime does.
    """
    g = grads[0]
    assert g is not None
    _data_only(ctx, node)
    groups = int(attr(node, "num_groups"))
    rank = ctx.rank(node.input[0])
    grouped = ctx.ints([0, groups, -1])
    if ctx.opset >= 21:
        gs = ctx.op("Reshape", [ctx.mul(g, _per_channel(ctx, node.input[1], rank)), grouped])
    else:
        scale = ctx.op("Reshape", [ctx.fwd(node.input[1]), ctx.ints([groups, 1])])
        gs = ctx.mul(ctx.op("Reshape", [g, grouped]), scale)
    x = ctx.op("Reshape", [fwd_x(ctx, node), grouped])
    eps = float(attr(node, "epsilon", 1e-5))
    dx = standardize_vjp(ctx, x, gs, [2], eps)
    return first(ctx, node, ctx.reshape_like(dx, node.input[0]))


def lpnorm_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """LpNormalization (p = 1 or 2): (g - d * sum(g*y)) / n, d = y (p=2) or sign(x) (p=1).

    A zero-norm slice gets the gradient g (its norm is taken as 1 there, no NaN).
    """
    g = grads[0]
    assert g is not None
    p = int(attr(node, "p", 2))
    if p not in (1, 2):
        raise ModelError(f"LpNormalization node {node.name!r} uses p={p}; ONNX allows only 1 or "
                         "2; fix the model")
    axis = int(attr(node, "axis", -1)) % ctx.rank(node.input[0])
    x, y = fwd_x(ctx, node), ctx.fwd(node.output[0])
    if p == 2:
        norm = ctx.op("Sqrt", [ctx.reduce_sum(ctx.mul(x, x), [axis])])
        d = y
    else:
        norm = ctx.reduce_sum(ctx.op("Abs", [x]), [axis])
        d = ctx.op("Sign", [x])
    norm = ctx.where(ctx.op("Equal", [norm, ctx.const(0.0)]), ctx.const(1.0), norm)
    dot = ctx.reduce_sum(ctx.mul(g, y), [axis])
    return first(ctx, node, ctx.op("Div", [ctx.op("Sub", [g, ctx.mul(d, dot)]), norm]))


def mvn_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """MeanVarianceNormalization y = c/(s + e), c = x - mean, s = sqrt(mean(c^2)), e = 1e-9.

    dx = (g - mean(g))/(s + e) - c * mean(g*c) / (s * (s + e)^2).
    """
    g = grads[0]
    assert g is not None
    axes = attr(node, "axes")
    rank = ctx.rank(node.input[0])
    axes = [0, 2, 3] if axes is None else sorted(int(a) % rank for a in axes)
    x = fwd_x(ctx, node)
    c = ctx.op("Sub", [x, ctx.reduce_mean(x, axes)])
    s = ctx.op("Sqrt", [ctx.reduce_mean(ctx.mul(c, c), axes)])
    d = ctx.op("Add", [s, ctx.const(MVN_EPSILON)])
    left = ctx.op("Div", [ctx.op("Sub", [g, ctx.reduce_mean(g, axes)]), d])
    den = ctx.mul(s, ctx.mul(d, d))
    right = ctx.op("Div", [ctx.mul(c, ctx.reduce_mean(ctx.mul(g, c), axes)), den])
    return first(ctx, node, ctx.op("Sub", [left, right]))


def _channel_window_sum(ctx: Emitter, t: str, like: str, size: int, *, transpose: bool) -> str:
    """Sum ``t`` (N, C, *spatial) over the LRN channel window (its adjoint when ``transpose``).

    The forward window of channel c is [c - floor((size-1)/2), c + ceil((size-1)/2)]; the
    adjoint swaps the two reaches. Runs as a ones-kernel Conv over (N, 1, C, prod(spatial)).
    """
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    if transpose:
        lo, hi = hi, lo
    flat = ctx.op("Reshape", [ctx.unsqueeze(t, [1]), ctx.ints([0, 0, 0, -1])])
    kernel = ctx.const([[[[1.0]] * size]])
    summed = ctx.op("Conv", [flat, kernel], pads=[lo, 0, hi, 0])
    return ctx.reshape_like(summed, like)


def lrn_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """LRN: y = x * d^-beta, d = bias + alpha/size * window_sum(x^2).

    dx = g * d^-beta - 2*alpha*beta/size * x * window_sum^T(g * x * d^(-beta-1)).
    """
    g = grads[0]
    assert g is not None
    size = int(attr(node, "size"))
    alpha, beta = float(attr(node, "alpha", 1e-4)), float(attr(node, "beta", 0.75))
    bias = float(attr(node, "bias", 1.0))
    x = fwd_x(ctx, node)
    sq = _channel_window_sum(ctx, ctx.mul(x, x), node.input[0], size, transpose=False)
    d = ctx.op("Add", [ctx.mul(sq, ctx.const(alpha / size)), ctx.const(bias)])
    direct = ctx.mul(g, ctx.op("Pow", [d, ctx.const(-beta)]))
    inner = ctx.mul(ctx.mul(g, x), ctx.op("Pow", [d, ctx.const(-beta - 1.0)]))
    back = _channel_window_sum(ctx, inner, node.input[0], size, transpose=True)
    cross = ctx.mul(ctx.mul(x, back), ctx.const(2.0 * alpha * beta / size))
    return first(ctx, node, ctx.op("Sub", [direct, cross]))


NORM_RULES: dict[str, Rule] = {
    "InstanceNormalization": instancenorm_vjp, "GroupNormalization": groupnorm_vjp,
    "LpNormalization": lpnorm_vjp, "MeanVarianceNormalization": mvn_vjp, "LRN": lrn_vjp,
}
"""Op type -> rule for the normalizations of this module."""
