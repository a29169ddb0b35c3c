"""Vector-Jacobian rules of elementwise maths, variadic Max/Min/Mean, Where and reductions.

Unary rules read the forward input or output (``fwd_x``/``fwd_y``) and multiply the incoming
gradient by the local derivative. Max and Min split the gradient evenly among tied operands,
as torch's ``maximum``/``minimum`` do (each of two tied operands gets ``g/2``); ReduceMin shares
it among tied elements like ReduceMax. Registered in :data:`MATH_RULES`.
"""

from __future__ import annotations

import onnx

from onnx_featviz.autodiff.emit import Emitter
from onnx_featviz.autodiff.emit import node_attr as attr
from onnx_featviz.autodiff.vjp import (
    Grads,
    Rule,
    first,
    fwd_x,
    fwd_y,
    keep_dims,
    reduce_axes,
    reduce_op,
    times,
)


# ---------------------------------------------------------------------- unary elementwise
def mish_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Mish: y = x*tanh(softplus(x)); dy/dx = t + x*sigmoid(x)*(1 - t^2), t = tanh(sp(x))."""
    x = fwd_x(ctx, node)
    t = ctx.op("Tanh", [ctx.op("Softplus", [x])])
    sech2 = ctx.op("Sub", [ctx.const(1.0), ctx.mul(t, t)])
    deriv = ctx.op("Add", [t, ctx.mul(ctx.mul(x, ctx.op("Sigmoid", [x])), sech2)])
    return times(ctx, node, grads[0], deriv)


def softsign_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Softsign: y = x/(1+|x|); dy/dx = 1/(1+|x|)^2."""
    den = ctx.op("Add", [ctx.const(1.0), ctx.op("Abs", [fwd_x(ctx, node)])])
    assert grads[0] is not None
    return first(ctx, node, ctx.op("Div", [grads[0], ctx.mul(den, den)]))


def sin_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Sin: g*cos(x)."""
    return times(ctx, node, grads[0], ctx.op("Cos", [fwd_x(ctx, node)]))


def cos_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Cos: -g*sin(x)."""
    return times(ctx, node, grads[0], ctx.op("Neg", [ctx.op("Sin", [fwd_x(ctx, node)])]))


def tan_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Tan: g*(1 + y^2)."""
    y = fwd_y(ctx, node)
    return times(ctx, node, grads[0], ctx.op("Add", [ctx.const(1.0), ctx.mul(y, y)]))


def atan_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Atan: g/(1 + x^2)."""
    x = fwd_x(ctx, node)
    assert grads[0] is not None
    return first(ctx, node, ctx.op("Div", [grads[0], ctx.op("Add", [ctx.const(1.0),
                                                                      ctx.mul(x, x)])]))


def _inv_sqrt_vjp(ctx: Emitter, node: onnx.NodeProto, g: str | None, inner: str,
                  sign: float) -> list[str | None]:
    """Return ``sign * g / sqrt(inner)`` as the gradient of input 0."""
    assert g is not None
    scaled = ctx.mul(g, ctx.const(sign)) if sign != 1.0 else g
    return first(ctx, node, ctx.op("Div", [scaled, ctx.op("Sqrt", [inner])]))


def asin_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Asin: g/sqrt(1 - x^2)."""
    x = fwd_x(ctx, node)
    return _inv_sqrt_vjp(ctx, node, grads[0], ctx.op("Sub", [ctx.const(1.0), ctx.mul(x, x)]),
                         1.0)


def acos_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Acos: -g/sqrt(1 - x^2)."""
    x = fwd_x(ctx, node)
    return _inv_sqrt_vjp(ctx, node, grads[0], ctx.op("Sub", [ctx.const(1.0), ctx.mul(x, x)]),
                         -1.0)


def sinh_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Sinh: g*cosh(x)."""
    return times(ctx, node, grads[0], ctx.op("Cosh", [fwd_x(ctx, node)]))


def cosh_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Cosh: g*sinh(x)."""
    return times(ctx, node, grads[0], ctx.op("Sinh", [fwd_x(ctx, node)]))


def celu_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Celu: g where x > 0 else g*exp(x/alpha)."""
    g = grads[0]
    assert g is not None
    x = fwd_x(ctx, node)
    alpha = float(attr(node, "alpha", 1.0))
    neg = ctx.mul(g, ctx.op("Exp", [ctx.mul(x, ctx.const(1.0 / alpha))]))
    return first(ctx, node, ctx.where(ctx.op("Greater", [x, ctx.const(0.0)]), g, neg))


def thresholdedrelu_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """ThresholdedRelu: g where x > alpha, else 0."""
    g = grads[0]
    assert g is not None
    mask = ctx.op("Greater", [fwd_x(ctx, node), ctx.const(float(attr(node, "alpha", 1.0)))])
    return first(ctx, node, ctx.where(mask, g, ctx.const(0.0)))


def shrink_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Shrink (Hardshrink/Softshrink): g where |x| > lambd, else 0."""
    g = grads[0]
    assert g is not None
    lambd = float(attr(node, "lambd", 0.5))
    mask = ctx.op("Greater", [ctx.op("Abs", [fwd_x(ctx, node)]), ctx.const(lambd)])
    return first(ctx, node, ctx.where(mask, g, ctx.const(0.0)))


def castlike_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """CastLike between float types: the identity (the target input gets none)."""
    return first(ctx, node, grads[0])


def hardmax_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Hardmax: piecewise constant, zero gradient almost everywhere."""
    return [None] * len(node.input)


# ---------------------------------------------------------------------- variadic, selection
def extremum_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Max, Min (variadic, broadcast): g to the operands equal to y, split evenly on ties."""
    g = grads[0]
    assert g is not None
    y = fwd_y(ctx, node)
    masks = [ctx.op("Cast", [ctx.op("Equal", [ctx.fwd(i), y])], to=ctx.dtype)
             for i in node.input]
    share = g if len(masks) == 1 else ctx.op("Div", [g, ctx.op("Sum", masks)])
    return [ctx.unbroadcast(ctx.mul(share, m), node.output[0], i) if i in ctx.active else None
            for i, m in zip(node.input, masks, strict=True)]


def mean_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Mean (variadic, broadcast): g/n to every operand."""
    g = grads[0]
    assert g is not None
    share = ctx.mul(g, ctx.const(1.0 / len(node.input)))
    return [ctx.unbroadcast(share, node.output[0], i) if i in ctx.active else None
            for i in node.input]


def where_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Where(c, a, b): g where c to a, g where not c to b (each summed over broadcast axes)."""
    g = grads[0]
    assert g is not None
    cond, a, b = node.input
    zero = ctx.const(0.0)
    ga = ctx.unbroadcast(ctx.where(cond, g, zero), node.output[0], a) if a in ctx.active else None
    gb = ctx.unbroadcast(ctx.where(cond, zero, g), node.output[0], b) if b in ctx.active else None
    return [None, ga, gb]


# ---------------------------------------------------------------------- reductions
def _reduction(ctx: Emitter, node: onnx.NodeProto, grads: Grads
               ) -> tuple[str, list[int]] | None:
    """Return the keepdims-form gradient and the reduced axes (``None``: no-op reduction)."""
    g = grads[0]
    assert g is not None
    axes = reduce_axes(ctx, node)
    return None if axes is None else (keep_dims(ctx, node, g, axes), axes)


def reducesumsquare_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """ReduceSumSquare: 2*x*g (g broadcast over the reduced axes)."""
    red = _reduction(ctx, node, grads)
    x = fwd_x(ctx, node)
    if red is None:
        return times(ctx, node, grads[0], ctx.mul(x, ctx.const(2.0)))
    return first(ctx, node, ctx.mul(ctx.mul(red[0], ctx.const(2.0)), x))


def reducel1_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """ReduceL1: g*sign(x) (0 at x = 0, as torch's abs)."""
    red = _reduction(ctx, node, grads)
    sign = ctx.op("Sign", [fwd_x(ctx, node)])
    return times(ctx, node, grads[0] if red is None else red[0], sign)


def reducel2_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """ReduceL2: g*x/y, and 0 where the norm y is 0 (as torch's norm)."""
    red = _reduction(ctx, node, grads)
    x = fwd_x(ctx, node)
    if red is None:
        return times(ctx, node, grads[0], ctx.op("Sign", [x]))
    g, axes = red
    y = keep_dims(ctx, node, fwd_y(ctx, node), axes)
    zero = ctx.op("Equal", [y, ctx.const(0.0)])
    safe = ctx.where(zero, ctx.const(1.0), y)
    return first(ctx, node, ctx.mul(ctx.op("Div", [g, safe]), x))


def reducelogsumexp_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """ReduceLogSumExp: g*exp(x - y) (softmax over the reduced axes)."""
    red = _reduction(ctx, node, grads)
    if red is None:
        return first(ctx, node, grads[0])
    g, axes = red
    y = keep_dims(ctx, node, fwd_y(ctx, node), axes)
    return first(ctx, node, ctx.mul(g, ctx.op("Exp", [ctx.op("Sub", [fwd_x(ctx, node), y])])))


def reducelogsum_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """ReduceLogSum: g/sum(x) = g*exp(-y)."""
    red = _reduction(ctx, node, grads)
    if red is None:
        assert grads[0] is not None
        return first(ctx, node, ctx.op("Div", [grads[0], fwd_x(ctx, node)]))
    g, axes = red
    y = keep_dims(ctx, node, fwd_y(ctx, node), axes)
    spread = ctx.op("Expand", [g, ctx.shape_of(node.input[0])])
    return first(ctx, node, ctx.mul(spread, ctx.op("Exp", [ctx.op("Neg", [y])])))


def reducemin_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """ReduceMin: the gradient goes to the minimal elements (shared evenly on ties)."""
    red = _reduction(ctx, node, grads)
    if red is None:
        return first(ctx, node, grads[0])
    g, axes = red
    y = keep_dims(ctx, node, fwd_y(ctx, node), axes)
    mask = ctx.op("Cast", [ctx.op("Equal", [fwd_x(ctx, node), y])], to=ctx.dtype)
    return first(ctx, node, ctx.mul(mask, ctx.op("Div", [g, ctx.reduce_sum(mask, axes)])))


def reduceprod_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """ReduceProd: g * (product of the other elements), exact with zeros in the input.

    No zero: y/x. One zero: the product of the non-zero elements at the zero, 0 elsewhere.
    Two or more zeros: 0 everywhere.
    """
    red = _reduction(ctx, node, grads)
    if red is None:
        return first(ctx, node, grads[0])
    g, axes = red
    x = fwd_x(ctx, node)
    is_zero = ctx.op("Equal", [x, ctx.const(0.0)])
    nonzero = ctx.where(is_zero, ctx.const(1.0), x)
    prod = reduce_op(ctx, "ReduceProd", nonzero, axes)
    zeros = ctx.reduce_sum(ctx.op("Cast", [is_zero], to=ctx.dtype), axes)
    no_zero = ctx.op("Equal", [zeros, ctx.const(0.0)])
    one_zero = ctx.op("And", [ctx.op("Equal", [zeros, ctx.const(1.0)]), is_zero])
    others = ctx.where(no_zero, ctx.op("Div", [prod, nonzero]),
                       ctx.where(one_zero, prod, ctx.const(0.0)))
    return first(ctx, node, ctx.mul(g, others))


MATH_RULES: dict[str, Rule] = {
    "Mish": mish_vjp, "Softsign": softsign_vjp, "Sin": sin_vjp, "Cos": cos_vjp,
    "Tan": tan_vjp, "Atan": atan_vjp, "Asin": asin_vjp, "Acos": acos_vjp, "Sinh": sinh_vjp,
    "Cosh": cosh_vjp, "Celu": celu_vjp, "ThresholdedRelu": thresholdedrelu_vjp,
    "Shrink": shrink_vjp, "CastLike": castlike_vjp, "Hardmax": hardmax_vjp,
    "Max": extremum_vjp, "Min": extremum_vjp, "Mean": mean_vjp, "Where": where_vjp,
    "ReduceSumSquare": reducesumsquare_vjp, "ReduceL1": reducel1_vjp, "ReduceL2": reducel2_vjp,
    "ReduceLogSumExp": reducelogsumexp_vjp, "ReduceLogSum": reducelogsum_vjp,
    "ReduceMin": reducemin_vjp, "ReduceProd": reduceprod_vjp,
}
"""Op type -> rule for the elementwise maths and reductions of this module."""
