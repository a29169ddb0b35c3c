"""Gradient rules of Resize and Upsample: the exact adjoint as constant interpolation matrices.

Nearest and linear resizing are separable: along each resized axis the output is ``M @ x`` with a
constant ``(out, in)`` matrix ``M`` that this module builds with the ONNX coordinate formulas
(every ``coordinate_transformation_mode`` except ``tf_crop_and_resize``, every ``nearest_mode``).
The gradient is ``M^T`` applied along the same axis by a MatMul, so any static scale (integer or
not) is exact. Only the last two axes may be resized (NCHW spatial axes); cubic, antialias and
symbolic spatial sizes raise ModelError.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

from onnx_featviz.autodiff.emit import Emitter
from onnx_featviz.autodiff.emit import node_attr as _attr
from onnx_featviz.errors import ModelError

Grads = Sequence[str | None]
_UNSUPPORTED = ("use a gradient-free method (Score-CAM, Ablation-CAM, Eigen-CAM, occlusion) "
                "or re-export with nearest/linear resizing of a fixed-size input")


def source_coordinate(y: NDArray[np.float64], n_in: int, n_out: int, scale: float,
                      mode: str) -> NDArray[np.float64]:
    """Map output coordinates ``y`` to input coordinates (ONNX Resize formulas)."""
    if mode == "half_pixel":
        return (y + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (y + 0.5) / scale - 0.5 if n_out > 1 else np.zeros_like(y)
    if mode == "align_corners":
        return y * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros_like(y)
    if mode == "asymmetric":
        return y / scale
    if mode == "tf_half_pixel_for_nn":
        return (y + 0.5) / scale
    if mode == "half_pixel_symmetric":
        adj = n_out / (scale * n_in)
        center = n_in / 2.0
        offset = center * (1 - adj)
        return offset + (y + 0.5) / scale - 0.5
    raise ModelError(f"Resize coordinate_transformation_mode {mode!r} has no gradient rule; "
                     + _UNSUPPORTED)


def _nearest(x: NDArray[np.float64], mode: str) -> NDArray[np.int64]:
    if mode == "round_prefer_floor":
        return np.where(x - np.floor(x) == 0.5, np.floor(x), np.round(x)).astype(np.int64)
    if mode == "round_prefer_ceil":
        return np.floor(x + 0.5).astype(np.int64)
    if mode == "floor":
        return np.floor(x).astype(np.int64)
    if mode == "ceil":
        return np.ceil(x).astype(np.int64)
    raise ModelError(f"Resize nearest_mode {mode!r} is unknown; expected round_prefer_floor, "
                     "round_prefer_ceil, floor or ceil")


def interpolation_matrix(n_in: int, n_out: int, scale: float, *, mode: str,
                         coordinate: str, nearest: str) -> NDArray[np.float64]:
    """Return the ``(n_out, n_in)`` matrix of a 1-D nearest or linear resize."""
    y = np.arange(n_out, dtype=np.float64)
    x = source_coordinate(y, n_in, n_out, scale, coordinate)
    mat = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    if mode == "nearest":
        np.add.at(mat, (rows, np.clip(_nearest(x, nearest), 0, n_in - 1)), 1.0)
        return mat
    if mode != "linear":
        raise ModelError(f"Resize mode {mode!r} has no gradient rule; " + _UNSUPPORTED)
    x = np.clip(x, 0, n_in - 1)
    lo = np.floor(x).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = x - lo
    np.add.at(mat, (rows, lo), 1.0 - frac)
    np.add.at(mat, (rows, hi), frac)
    return mat


def _resize_plan(ctx: Emitter, node: onnx.NodeProto) -> list[tuple[int, int, int, float]]:
    """Return (axis, in size, out size, scale) for every resized axis (static sizes needed)."""
    x, y = node.input[0], node.output[0]
    in_shape, out_shape = ctx.shape(x), ctx.shape(y)
    if in_shape is None:
        raise ModelError(f"{node.op_type} node {node.name!r}: rank of {x!r} unknown; "
                         + _UNSUPPORTED)
    scales: Any = _attr(node, "scales")
    sizes: Any = None
    first = 2 if node.op_type == "Resize" and ctx.opset >= 11 else 1
    if scales is None and len(node.input) > first and node.input[first]:
        value = ctx.value(node.input[first])
        scales = value.tolist() if value.size else None
    if scales is None and len(node.input) > first + 1 and node.input[first + 1]:
        sizes = ctx.value(node.input[first + 1]).tolist()
    plan = []
    for axis, n_in in enumerate(in_shape):
        n_out = out_shape[axis] if out_shape is not None else None
        if sizes is not None:
            n_out = int(sizes[axis])
        scale = float(scales[axis]) if scales is not None else None
        if scale == 1.0 or (scale is None and n_out is not None and n_out == n_in):
            continue
        if not isinstance(n_in, int):
            raise ModelError(f"{node.op_type} node {node.name!r} resizes axis {axis} of "
                             f"symbolic size {n_in!r}; " + _UNSUPPORTED)
        if not isinstance(n_out, int):
            n_out = int(np.floor(n_in * scale)) if scale is not None else None
        if n_out is None:
            raise ModelError(f"{node.op_type} node {node.name!r}: output size of axis {axis} "
                             "is unknown; " + _UNSUPPORTED)
        plan.append((axis, n_in, n_out, scale if scale is not None else n_out / n_in))
    return plan


def _apply(ctx: Emitter, node: onnx.NodeProto, g: str, *, mode: str, coordinate: str,
           nearest: str) -> str:
    """Multiply the gradient by the transposed interpolation matrix along each resized axis."""
    rank = ctx.rank(node.input[0])
    for axis, n_in, n_out, scale in _resize_plan(ctx, node):
        if axis < rank - 2:
            raise ModelError(f"{node.op_type} node {node.name!r} resizes axis {axis}; only the "
                             "last two axes have a gradient rule; " + _UNSUPPORTED)
        mat = interpolation_matrix(n_in, n_out, scale, mode=mode, coordinate=coordinate,
                                   nearest=nearest)
        if axis == rank - 1:
            g = ctx.op("MatMul", [g, ctx.const(mat)])
        else:
            g = ctx.op("MatMul", [ctx.const(mat.T), g])
    return g


def resize_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Resize (nearest or linear; any coordinate mode but tf_crop_and_resize)."""
    g = grads[0]
    assert g is not None
    if _attr(node, "antialias", 0) or _attr(node, "axes") is not None:
        raise ModelError(f"Resize node {node.name!r} uses antialias or axes; " + _UNSUPPORTED)
    default_coord = "half_pixel" if ctx.opset >= 11 else "asymmetric"
    dx = _apply(ctx, node, g, mode=str(_attr(node, "mode", "nearest")),
                coordinate=str(_attr(node, "coordinate_transformation_mode", default_coord)),
                nearest=str(_attr(node, "nearest_mode", "round_prefer_floor")))
    return [dx] + [None] * (len(node.input) - 1)


def upsample_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Upsample (opset 7-9): asymmetric coordinates, floor for nearest."""
    g = grads[0]
    assert g is not None
    mode = str(_attr(node, "mode", "nearest"))
    mode = "linear" if mode in ("bilinear", "trilinear") else mode
    dx = _apply(ctx, node, g, mode=mode, coordinate="asymmetric", nearest="floor")
    return [dx] + [None] * (len(node.input) - 1)
