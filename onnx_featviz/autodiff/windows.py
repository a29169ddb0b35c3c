"""Gradient rules of sliding-window ops: Conv, ConvTranspose, MaxPool, AveragePool, global pools.

The adjoint of a window op is a transposed window op: ``ConvTranspose`` with the same strides,
dilations and begin pads, whose output is then cropped or zero-padded at the end to the input's
spatial size (``fit_spatial``), which covers end pads, ``ceil_mode`` windows and rows no window
reaches. MaxPool routes the gradient through the flat ``Indices`` of a re-emitted MaxPool with
ScatterElements (``reduction="add"`` when windows overlap, opset 16).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnx_featviz.autodiff.emit import INT64_MAX, Emitter
from onnx_featviz.autodiff.emit import node_attr as _attr
from onnx_featviz.autodiff.shapes import floor_mode_end_pads
from onnx_featviz.errors import ModelError

Grads = Sequence[str | None]


def window_attrs(ctx: Emitter, node: onnx.NodeProto, kernel: Sequence[int]
                 ) -> tuple[list[int], list[int], list[int]]:
    """Return (strides, pads [begins..., ends...], dilations) with auto_pad resolved.

    Raises:
        ModelError: SAME auto_pad on an input whose spatial size is symbolic.
    """
    k = len(kernel)
    strides = list(_attr(node, "strides", [1] * k))
    dilations = list(_attr(node, "dilations", [1] * k))
    auto_pad = _attr(node, "auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        return strides, list(_attr(node, "pads", [0] * (2 * k))), dilations
    if auto_pad == "VALID":
        return strides, [0] * (2 * k), dilations
    spatial = (ctx.shape(node.input[0]) or ())[2:]
    if len(spatial) != k or not all(isinstance(d, int) for d in spatial):
        raise ModelError(
            f"node {node.name!r} uses auto_pad={auto_pad} on input {node.input[0]!r} with "
            f"spatial size {list(spatial)}; its gradient needs a static size; fix the input size"
        )
    begins, ends = [], []
    for dim, s, kk, d in zip(spatial, strides, kernel, dilations, strict=False):
        size = int(dim)  # type: ignore[arg-type]
        out = -(-size // s)
        total = max(0, (out - 1) * s + (kk - 1) * d + 1 - size)
        begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        begins.append(begin)
        ends.append(total - begin)
    return strides, begins + ends, dilations


def fit_spatial(ctx: Emitter, t: str, t_spatial: Sequence[int | None], x: str) -> str:
    """Crop or zero-pad the end of ``t``'s axes 2.. to the spatial size of forward tensor ``x``."""
    x_shape = ctx.shape(x) or ()
    x_spatial = list(x_shape[2:])
    k = len(t_spatial)
    if len(x_spatial) == k and all(isinstance(d, int) for d in list(t_spatial) + x_spatial):
        diff = [int(a) - int(b) for a, b in zip(x_spatial, t_spatial, strict=False)]  # type: ignore[arg-type]
        if any(d > 0 for d in diff):
            t = ctx.op("Pad", [t, ctx.ints([0] * (k + 2) + [0, 0] + [max(d, 0) for d in diff])])
        if any(d < 0 for d in diff):
            t = ctx.op("Slice", [t, ctx.ints([0] * k), ctx.ints(x_spatial),  # type: ignore
                                 ctx.ints(range(2, k + 2))])
        return t
    want = ctx.op("Slice", [ctx.op("Shape", [x]), ctx.ints([2]), ctx.ints([INT64_MAX])])
    have = ctx.op("Slice", [ctx.op("Shape", [t]), ctx.ints([2]), ctx.ints([INT64_MAX])])
    grow = ctx.op("Max", [ctx.op("Sub", [want, have]), ctx.ints([0])])
    t = ctx.op("Pad", [t, ctx.op("Concat", [ctx.ints([0] * (k + 4)), grow], axis=0)])
    return ctx.op("Slice", [t, ctx.ints([0] * k), want, ctx.ints(range(2, k + 2))])


def window_adjoint(ctx: Emitter, g: str, weight: str, x: str, out: str, *,
                   kernel: Sequence[int], strides: Sequence[int], pads: Sequence[int],
                   dilations: Sequence[int], group: int = 1) -> str:
    """Apply the transpose of a window op (ConvTranspose, begin pads only) and fit to ``x``."""
    k = len(kernel)
    ct = ctx.op("ConvTranspose", [g, weight], strides=list(strides), dilations=list(dilations),
                group=group, pads=list(pads[:k]) + [0] * k, kernel_shape=list(kernel))
    o = list((ctx.shape(out) or (None,) * (k + 2))[2:])
    sizes: list[int | None] = []
    for i in range(k):
        oi = o[i] if i < len(o) else None
        sizes.append(None if not isinstance(oi, int) else
                     (oi - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - pads[i])
    return fit_spatial(ctx, ct, sizes, x)


def _static_weight_shape(ctx: Emitter, node: onnx.NodeProto) -> tuple[int, ...]:
    shape = ctx.static_shape(node.input[1])
    if shape is None:
        raise ModelError(f"node {node.name!r}: the shape of weight {node.input[1]!r} is not "
                         "static; its gradient rule needs the kernel size")
    return shape


def _check_weights(ctx: Emitter, node: onnx.NodeProto) -> None:
    if any(i in ctx.active for i in node.input[1:2]):
        raise ModelError(
            f"{node.op_type} node {node.name!r}: weight {node.input[1]!r} depends on a wrt "
            "tensor; weight gradients are not supported; differentiate with respect to "
            "activations or graph inputs"
        )


def _flipped_weight(ctx: Emitter, weight: str, group: int) -> str:
    """The weight ``(I, O/group, *k)`` of a Conv computing a Conv's stride-1 data adjoint: per
    group the in/out axes swapped and the kernel flipped (``weight`` must be constant)."""
    w = np.asarray(ctx.value(weight))
    o, per_group, kernel = w.shape[0], w.shape[1], w.shape[2:]
    w = w.reshape(group, o // group, per_group, *kernel).swapaxes(1, 2)
    w = w.reshape(group * per_group, o // group, *kernel)
    return ctx.const(np.ascontiguousarray(w[(slice(None),) * 2 + (slice(None, None, -1),)
                                            * len(kernel)]))


def _direct_adjoint(ctx: Emitter, node: onnx.NodeProto, g: str, kernel: list[int],
                    strides: list[int], pads: list[int], dilations: list[int]) -> str | None:
    """A Conv's stride-1 data adjoint as a Conv with flipped weights, or None where it does not
    apply (strides, pads wider than the dilated kernel, a computed weight, few input channels).

    onnxruntime runs this Conv in its blocked channel layout: 1.5-2x faster than ConvTranspose
    on CPU from 8 input channels up, slower below (an image's 1 or 3 channels fill no block).
    """
    group = int(_attr(node, "group", 1))
    back = [d * (kk - 1) - p for kk, d, p in zip(kernel * 2, dilations * 2, pads, strict=True)]
    if (node.input[1] not in ctx.consts or any(s != 1 for s in strides) or any(
            p < 0 for p in back) or group * _static_weight_shape(ctx, node)[1] < 8):
        return None
    return ctx.op("Conv", [g, _flipped_weight(ctx, node.input[1], group)], kernel_shape=kernel,
                  pads=back, dilations=dilations, group=group)


def conv_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Conv: data gradient via ConvTranspose of the output gradient with the same weights (at
    stride 1 with a constant weight, a Conv with flipped weights: ``_direct_adjoint``)."""
    g = grads[0]
    assert g is not None
    _check_weights(ctx, node)
    kernel = list(_static_weight_shape(ctx, node)[2:])
    strides, pads, dilations = window_attrs(ctx, node, kernel)
    out: list[str | None] = [None] * len(node.input)
    group = int(_attr(node, "group", 1))
    if node.input[0] in ctx.active:
        out[0] = _direct_adjoint(ctx, node, g, kernel, strides, pads, dilations) or (
            window_adjoint(ctx, g, ctx.fwd(node.input[1]), node.input[0], node.output[0],
                           kernel=kernel, strides=strides, pads=pads, dilations=dilations,
                           group=group))
    if len(node.input) > 2 and node.input[2] in ctx.active:
        out[2] = ctx.reduce_sum(g, [0] + list(range(2, len(kernel) + 2)), keepdims=False)
    return out


def convtranspose_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """ConvTranspose: data gradient via Conv with the same weights, strides and pads."""
    g = grads[0]
    assert g is not None
    _check_weights(ctx, node)
    if _attr(node, "output_shape") is not None or _attr(node, "auto_pad", "NOTSET") not in (
            "NOTSET", "VALID"):
        raise ModelError(
            f"ConvTranspose node {node.name!r} uses output_shape or SAME auto_pad; its gradient "
            "rule supports explicit pads and output_padding; re-export with explicit pads"
        )
    kernel = list(_static_weight_shape(ctx, node)[2:])
    k = len(kernel)
    pads = list(_attr(node, "pads", [0] * (2 * k)))
    out: list[str | None] = [None] * len(node.input)
    if node.input[0] in ctx.active:
        out[0] = ctx.op("Conv", [g, ctx.fwd(node.input[1])], pads=pads, kernel_shape=kernel,
                        strides=list(_attr(node, "strides", [1] * k)),
                        dilations=list(_attr(node, "dilations", [1] * k)),
                        group=int(_attr(node, "group", 1)))
    if len(node.input) > 2 and node.input[2] in ctx.active:
        out[2] = ctx.reduce_sum(g, [0] + list(range(2, k + 2)), keepdims=False)
    return out


def pool_overlaps(node: onnx.NodeProto) -> bool:
    """Whether a pooling node's windows overlap (then MaxPool needs a scatter with add)."""
    kernel = list(_attr(node, "kernel_shape", []))
    strides = list(_attr(node, "strides", [1] * len(kernel)))
    dilations = list(_attr(node, "dilations", [1] * len(kernel)))
    return any((kk - 1) * d + 1 > s for kk, s, d in zip(kernel, strides, dilations, strict=False))


def maxpool_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """MaxPool: scatter the gradient to the argmax positions of a re-emitted MaxPool."""
    g = grads[0]
    assert g is not None
    x = node.input[0]
    kernel = list(_attr(node, "kernel_shape"))
    strides, pads, dilations = window_attrs(ctx, node, kernel)
    extra: dict[str, Any] = {"dilations": dilations} if any(d != 1 for d in dilations) else {}
    spatial = (ctx.static_shape(x) or ())[2:]
    if int(_attr(node, "ceil_mode", 0)) and len(spatial) == len(kernel):
        # floor-mode pads giving the runtime's ceil_mode windows keep static shapes consistent
        k = len(kernel)
        pads = pads[:k] + floor_mode_end_pads(kernel, strides, pads, dilations, list(spatial))
    elif int(_attr(node, "ceil_mode", 0)):
        extra["ceil_mode"] = 1
    _, idx = ctx.op_multi("MaxPool", [ctx.fwd(x)], 2, kernel_shape=kernel, strides=strides,
                          pads=pads, storage_order=0, **extra)
    flat = ctx.ints([-1])
    zeros = ctx.op("Reshape", [ctx.zeros_like(x), flat])
    scatter: dict[str, Any] = {"reduction": "add"} if pool_overlaps(node) else {}
    hit = ctx.op("ScatterElements", [zeros, ctx.op("Reshape", [idx, flat]),
                                     ctx.op("Reshape", [g, flat])], axis=0, **scatter)
    return [ctx.reshape_like(hit, x)]


def _ones_spatial(ctx: Emitter, x: str) -> str:
    """A (1, 1, *spatial(x)) tensor of ones in the compute dtype."""
    shape = ctx.static_shape(x)
    if shape is not None:
        return ctx.const(np.ones((1, 1) + shape[2:]))
    spatial = ctx.op("Slice", [ctx.op("Shape", [x]), ctx.ints([2]), ctx.ints([INT64_MAX])])
    dims = ctx.op("Concat", [ctx.ints([1, 1]), spatial], axis=0)
    return ctx.op("ConstantOfShape", [dims], value=helper.make_tensor("v", ctx.dtype, [1], [1]))


def avgpool_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """AveragePool: ConvTranspose of g/divisor with a ones kernel, per channel.

    The divisor map is measured with the node's own attributes: AveragePool(ones) equals
    n_valid/divisor, and n_valid (real input positions per window) comes from a ones Conv whose
    end pads are widened by stride-1 to reach ceil_mode windows; so count_include_pad, pads and
    ceil_mode behave exactly as the runtime's forward does.
    """
    g = grads[0]
    assert g is not None
    x, y = node.input[0], node.output[0]
    kernel = list(_attr(node, "kernel_shape"))
    k = len(kernel)
    strides, pads, dilations = window_attrs(ctx, node, kernel)
    keep = {a.name: helper.get_attribute_value(a) for a in node.attribute
            if a.name in ("ceil_mode", "count_include_pad", "dilations")}
    ones = _ones_spatial(ctx, x)
    kones = ctx.const(np.ones([1, 1] + kernel))
    a_ones = ctx.op("AveragePool", [ones], kernel_shape=kernel, strides=strides, pads=pads, **keep)
    wide = pads[:k] + [p + s - 1 for p, s in zip(pads[k:], strides, strict=False)]
    n_full = ctx.op("Conv", [ones, kones], strides=strides, pads=wide, dilations=dilations)
    # crop both maps to the output size (onnx and onnxruntime disagree on ceil_mode sizes)
    o_spatial = ctx.op("Slice", [ctx.shape_of(y), ctx.ints([2]), ctx.ints([INT64_MAX])])
    axes, starts = ctx.ints(range(2, k + 2)), ctx.ints([0] * k)
    n_valid = ctx.op("Slice", [n_full, starts, o_spatial, axes])
    a_ones = ctx.op("Slice", [a_ones, starts, o_spatial, axes])
    ratio = ctx.op("Div", [a_ones, ctx.op("Max", [n_valid, ctx.const(1.0)])])
    scaled = ctx.mul(g, ratio)
    per_channel = ctx.op("Reshape", [scaled, ctx.op("Concat", [ctx.ints([-1, 1]), o_spatial],
                                                    axis=0)])
    back = window_adjoint(ctx, per_channel, kones, x, y, kernel=kernel, strides=strides,
                          pads=pads, dilations=dilations)
    return [ctx.reshape_like(back, x)]


def globalavgpool_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """GlobalAveragePool: spread g/(H*W) over the spatial axes."""
    g, x = grads[0], node.input[0]
    assert g is not None
    shape = ctx.shape(x) or ()
    spatial = list(shape[2:])
    if spatial and all(isinstance(d, int) for d in spatial):
        count = ctx.const(1.0 / float(np.prod(spatial)))  # type: ignore[arg-type]
        return [ctx.op("Expand", [ctx.mul(g, count), ctx.shape_of(x)])]
    dims = ctx.op("Slice", [ctx.op("Shape", [x]), ctx.ints([2]), ctx.ints([INT64_MAX])])
    n = ctx.op("Cast", [ctx.op("ReduceProd", [dims], keepdims=0)], to=ctx.dtype)
    return [ctx.op("Div", [ctx.op("Expand", [g, ctx.shape_of(x)]), n])]
