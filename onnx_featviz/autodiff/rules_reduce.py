"""Vector-Jacobian rules of reductions, softmax and the inference-mode normalizations
(ReduceSum/Mean/Max, GlobalMaxPool, BatchNormalization, LayerNormalization, Softmax,
LogSoftmax).
"""

from __future__ import annotations

import onnx

from onnx_featviz.autodiff.emit import Emitter
from onnx_featviz.autodiff.emit import node_attr as attr
from onnx_featviz.autodiff.vjp import Grads
from onnx_featviz.autodiff.vjp import first as _first
from onnx_featviz.autodiff.vjp import fwd_x as _x
from onnx_featviz.autodiff.vjp import fwd_y as _y
from onnx_featviz.autodiff.vjp import keep_dims as _keep
from onnx_featviz.autodiff.vjp import reduce_axes as _reduce_axes
from onnx_featviz.autodiff.vjp import reduced_count as _count
from onnx_featviz.errors import ModelError


# ---------------------------------------------------------------------- reductions, normalization
def reducesum_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """ReduceSum: expand the gradient over the reduced axes."""
    g, x = grads[0], node.input[0]
    assert g is not None
    axes = _reduce_axes(ctx, node)
    if axes is None:
        return _first(ctx, node, g)
    return _first(ctx, node, ctx.op("Expand", [_keep(ctx, node, g, axes), ctx.shape_of(x)]))


def reducemean_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """ReduceMean: expand the gradient over the reduced axes and divide by their size."""
    g, x = grads[0], node.input[0]
    assert g is not None
    axes = _reduce_axes(ctx, node)
    if axes is None:
        return _first(ctx, node, g)
    spread = ctx.op("Expand", [_keep(ctx, node, g, axes), ctx.shape_of(x)])
    return _first(ctx, node, ctx.op("Div", [spread, _count(ctx, x, axes)]))


def _max_vjp(ctx: Emitter, node: onnx.NodeProto, g: str, y: str, axes: list[int]
             ) -> list[str | None]:
    """Share the gradient of a max reduction equally among the maximal elements."""
    x = _x(ctx, node)
    mask = ctx.op("Cast", [ctx.op("Equal", [x, y])], to=ctx.dtype)
    share = ctx.op("Div", [g, ctx.reduce_sum(mask, axes, keepdims=True)])
    return _first(ctx, node, ctx.mul(mask, share))


def reducemax_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """ReduceMax: the gradient goes to the maximal elements (shared on ties)."""
    g = grads[0]
    assert g is not None
    axes = _reduce_axes(ctx, node)
    if axes is None:
        return _first(ctx, node, g)
    y = _keep(ctx, node, _y(ctx, node), axes)
    return _max_vjp(ctx, node, _keep(ctx, node, g, axes), y, axes)


def globalmaxpool_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """GlobalMaxPool: the gradient goes to the spatial maxima (shared on ties)."""
    g = grads[0]
    assert g is not None
    axes = list(range(2, ctx.rank(node.input[0])))
    return _max_vjp(ctx, node, g, _y(ctx, node), axes)


def batchnorm_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """BatchNormalization (inference): g * scale / sqrt(var + eps) per channel."""
    g = grads[0]
    assert g is not None
    if any(i in ctx.active for i in node.input[1:]):
        raise ModelError(f"BatchNormalization node {node.name!r}: its parameters depend on the "
                         "wrt tensor; differentiate with respect to data tensors only")
    eps = float(attr(node, "epsilon", 1e-5))
    std = ctx.op("Sqrt", [ctx.op("Add", [ctx.fwd(node.input[4]), ctx.const(eps)])])
    factor = ctx.op("Div", [ctx.fwd(node.input[1]), std])
    rank = ctx.rank(node.input[0])
    factor = ctx.op("Reshape", [factor, ctx.ints([-1] + [1] * (rank - 2))])
    return _first(ctx, node, ctx.mul(g, factor))


def layernorm_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """LayerNormalization: full VJP rstd*(gs - mean(gs) - xhat*mean(gs*xhat)), gs = g*scale."""
    g = grads[0]
    assert g is not None
    if any(i in ctx.active for i in node.input[1:]):
        raise ModelError(f"LayerNormalization node {node.name!r}: scale/bias depend on the wrt "
                         "tensor; differentiate with respect to data tensors only")
    rank = ctx.rank(node.input[0])
    axes = list(range(int(attr(node, "axis", -1)) % rank, rank))
    eps = float(attr(node, "epsilon", 1e-5))
    x = _x(ctx, node)
    centered = ctx.op("Sub", [x, ctx.reduce_mean(x, axes)])
    var = ctx.reduce_mean(ctx.mul(centered, centered), axes)
    rstd = ctx.op("Reciprocal", [ctx.op("Sqrt", [ctx.op("Add", [var, ctx.const(eps)])])])
    xhat = ctx.mul(centered, rstd)
    gs = ctx.mul(g, ctx.fwd(node.input[1]))
    m1, m2 = ctx.reduce_mean(gs, axes), ctx.reduce_mean(ctx.mul(gs, xhat), axes)
    inner = ctx.op("Sub", [ctx.op("Sub", [gs, m1]), ctx.mul(xhat, m2)])
    return _first(ctx, node, ctx.mul(rstd, inner))


def _softmax_axes(ctx: Emitter, node: onnx.NodeProto) -> list[int]:
    """Softmax axes: one axis from opset 13, axis..end (coerced to 2-D) before."""
    rank = ctx.rank(node.input[0])
    axis = int(attr(node, "axis", -1 if ctx.opset >= 13 else 1)) % rank
    return [axis] if ctx.opset >= 13 else list(range(axis, rank))


def softmax_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Softmax: y*(g - sum(g*y))."""
    g = grads[0]
    assert g is not None
    y = _y(ctx, node)
    dot = ctx.reduce_sum(ctx.mul(g, y), _softmax_axes(ctx, node), keepdims=True)
    return _first(ctx, node, ctx.mul(y, ctx.op("Sub", [g, dot])))


def logsoftmax_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """LogSoftmax: g - exp(y)*sum(g)."""
    g = grads[0]
    assert g is not None
    total = ctx.reduce_sum(g, _softmax_axes(ctx, node), keepdims=True)
    probs = ctx.op("Exp", [_y(ctx, node)])
    return _first(ctx, node, ctx.op("Sub", [g, ctx.mul(probs, total)]))

