"""Shared pieces of the vector-Jacobian rules: the rule signature and small emit helpers.

Every ``rules*`` module builds on these; they hold no rule themselves. ``reduce_axes``,
``keep_dims`` and ``reduced_count`` read a ``Reduce*`` node's axes in every opset form;
``reduce_op`` emits any ``Reduce*`` op with its axes as attribute or input as the opset wants.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx

from onnx_featviz.autodiff.emit import Emitter
from onnx_featviz.autodiff.emit import node_attr as attr

Grads = Sequence[str | None]
Rule = Callable[[Emitter, onnx.NodeProto, Grads], list[str | None]]


def first(ctx: Emitter, node: onnx.NodeProto, grad: str | None) -> list[str | None]:
    """Return ``grad`` for input 0 (when active) and ``None`` for the other inputs."""
    return [grad if node.input[0] in ctx.active else None] + [None] * (len(node.input) - 1)


def fwd_x(ctx: Emitter, node: onnx.NodeProto) -> str:
    """Return the node's first input in the compute dtype."""
    return ctx.fwd(node.input[0])


def fwd_y(ctx: Emitter, node: onnx.NodeProto) -> str:
    """Return the node's first output in the compute dtype."""
    return ctx.fwd(node.output[0])


def times(ctx: Emitter, node: onnx.NodeProto, g: str | None, deriv: str) -> list[str | None]:
    """Return ``g * deriv`` as the gradient of input 0."""
    assert g is not None
    return first(ctx, node, ctx.mul(g, deriv))


def dim_of(ctx: Emitter, name: str, axis: int) -> str:
    """Return a 1-D int64 tensor holding ``name``'s size along ``axis`` (constant when static)."""
    shape = ctx.shape(name)
    if shape is not None and isinstance(shape[axis], int):
        return ctx.ints([int(shape[axis])])  # type: ignore[arg-type]
    return ctx.op("Gather", [ctx.op("Shape", [name]), ctx.ints([axis])], axis=0)


def reduce_axes(ctx: Emitter, node: onnx.NodeProto) -> list[int] | None:
    """Return the sorted non-negative reduced axes (``None`` for a no-op reduction)."""
    rank = ctx.rank(node.input[0])
    axes = attr(node, "axes")
    if len(node.input) > 1 and node.input[1]:
        axes = ctx.value(node.input[1]).tolist()
    if not axes:
        return None if attr(node, "noop_with_empty_axes", 0) else list(range(rank))
    return sorted(int(a) % rank for a in axes)


def keep_dims(ctx: Emitter, node: onnx.NodeProto, t: str, axes: list[int]) -> str:
    """Unsqueeze a reduced tensor back to keepdims form when the node dropped the axes."""
    return t if int(attr(node, "keepdims", 1)) else ctx.unsqueeze(t, axes)


def reduced_count(ctx: Emitter, x: str, axes: list[int]) -> str:
    """Number of elements reduced over ``axes`` as a compute-dtype scalar tensor."""
    shape = ctx.shape(x) or ()
    dims = [shape[a] for a in axes]
    if all(isinstance(d, int) for d in dims):
        return ctx.const(float(np.prod(dims)))  # type: ignore[arg-type]
    picked = ctx.op("Gather", [ctx.op("Shape", [x]), ctx.ints(axes)], axis=0)
    return ctx.op("Cast", [ctx.op("ReduceProd", [picked], keepdims=0)], to=ctx.dtype)


def reduce_op(ctx: Emitter, op: str, x: str, axes: Sequence[int]) -> str:
    """Emit ``op`` (a Reduce* type) over ``axes`` with keepdims=1; axes as input from 18."""
    if op == "ReduceSum":
        return ctx.reduce_sum(x, axes, keepdims=True)
    if ctx.opset >= 18:
        return ctx.op(op, [x, ctx.ints(axes)], keepdims=1)
    return ctx.op(op, [x], axes=list(axes), keepdims=1)
