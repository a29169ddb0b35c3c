"""Gradient rules of Resize and Upsample: the exact adjoint as constant interpolation matrices.

Nearest and linear resizing are separable: along each resized axis the output is ``M @ x`` with a
constant ``(out, in)`` matrix ``M`` that this module builds with the ONNX coordinate formulas
(every ``coordinate_transformation_mode`` except ``tf_crop_and_resize``, every ``nearest_mode``).
The gradient is ``M^T`` applied along the same axis by a MatMul, so any static scale (integer or
not) is exact. Cubic resizing (any ``cubic_coeff_a``, ``exclude_outside``) is separable too.
When a size is known only at run time (symbolic H/W, or scales/sizes computed in the graph),
``resize_dynamic`` builds the same matrix at run time from ``Shape`` and ``Range`` nodes. Only the
last two axes may be resized (NCHW spatial axes); antialias and tf_crop_and_resize raise
ModelError.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

from onnx_featviz.autodiff.emit import Emitter
from onnx_featviz.autodiff.emit import node_attr as _attr
from onnx_featviz.autodiff.resize_dynamic import AxisPlan, Interp, runtime_matrix
from onnx_featviz.errors import ModelError

Grads = Sequence[str | None]
_UNSUPPORTED = ("use a gradient-free method (Score-CAM, Ablation-CAM, Eigen-CAM, occlusion) "
                "or re-export without antialias")


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


def cubic_coefficients(ratio: NDArray[np.float64], a: float) -> list[NDArray[np.float64]]:
    """Return the 4 Keys cubic weights of taps floor(x)-1 .. floor(x)+2 (ratio = x - floor(x))."""
    r1, r2 = ratio + 1, 1 - ratio
    r3 = r2 + 1
    return [((a * r1 - 5 * a) * r1 + 8 * a) * r1 - 4 * a,
            ((a + 2) * ratio - (a + 3)) * ratio * ratio + 1,
            ((a + 2) * r2 - (a + 3)) * r2 * r2 + 1,
            ((a * r3 - 5 * a) * r3 + 8 * a) * r3 - 4 * a]


def _cubic_matrix(x: NDArray[np.float64], n_in: int, a: float, exclude_outside: bool
                  ) -> NDArray[np.float64]:
    """``(len(x), n_in)`` cubic matrix: edge-clamped taps, or outside taps dropped and renormed."""
    base = np.floor(x)
    taps = [base.astype(np.int64) + k for k in (-1, 0, 1, 2)]
    weights = cubic_coefficients(x - base, a)
    if exclude_outside:
        weights = [np.where((t >= 0) & (t < n_in), w, 0.0) for t, w in zip(taps, weights,
                                                                           strict=True)]
        total = sum(weights)
        weights = [w / total for w in weights]
    mat = np.zeros((len(x), n_in))
    rows = np.arange(len(x))
    for t, w in zip(taps, weights, strict=True):
        np.add.at(mat, (rows, np.clip(t, 0, n_in - 1)), w)
    return mat


def interpolation_matrix(n_in: int, n_out: int, scale: float, *, mode: str,
                         coordinate: str, nearest: str, cubic_a: float = -0.75,
                         exclude_outside: bool = False) -> NDArray[np.float64]:
    """Return the ``(n_out, n_in)`` matrix of a 1-D nearest, linear or cubic resize."""
    y = np.arange(n_out, dtype=np.float64)
    x = source_coordinate(y, n_in, n_out, scale, coordinate)
    mat = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    if mode == "nearest":
        np.add.at(mat, (rows, np.clip(_nearest(x, nearest), 0, n_in - 1)), 1.0)
        return mat
    if mode == "cubic":
        return _cubic_matrix(x, n_in, cubic_a, exclude_outside)
    if mode != "linear":
        raise ModelError(f"Resize mode {mode!r} has no gradient rule; " + _UNSUPPORTED)
    x = np.clip(x, 0, n_in - 1)
    lo = np.floor(x).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = x - lo
    np.add.at(mat, (rows, lo), 1.0 - frac)
    np.add.at(mat, (rows, hi), frac)
    return mat


def _scale_sources(ctx: Emitter, node: onnx.NodeProto) -> tuple[Any, Any, str | None, bool]:
    """Return (constant scales, constant sizes, run-time scales tensor, run-time sizes)."""
    scales: Any = _attr(node, "scales")
    first = 2 if node.op_type == "Resize" and ctx.opset >= 11 else 1
    names = [n if len(node.input) > k and (n := node.input[k]) else None
             for k in (first, first + 1)]
    sizes_name = names[1] if node.op_type == "Resize" else None
    if sizes_name is not None:
        if sizes_name not in ctx.consts:
            return None, None, None, True
        return None, ctx.consts[sizes_name].tolist(), None, False
    if scales is None and names[0] is not None:
        if names[0] not in ctx.consts:
            return None, None, names[0], False
        value = ctx.consts[names[0]]
        scales = value.tolist() if value.size else None
    return scales, None, None, False


def _resize_plan(ctx: Emitter, node: onnx.NodeProto) -> list[AxisPlan]:
    """Return the resized axes; run-time scales/sizes resize only the spatial (last two) axes."""
    x, y = node.input[0], node.output[0]
    in_shape, out_shape = ctx.shape(x), ctx.shape(y)
    if in_shape is None:
        raise ModelError(f"{node.op_type} node {node.name!r}: rank of {x!r} unknown; "
                         + _UNSUPPORTED)
    scales, sizes, run_scales, run_sizes = _scale_sources(ctx, node)
    rank = len(in_shape)
    plan = []
    for axis, n_in in enumerate(in_shape):
        n_out = out_shape[axis] if out_shape is not None else None
        if sizes is not None:
            n_out = int(sizes[axis])
        scale = float(scales[axis]) if scales is not None else None
        if scale == 1.0 or (scale is None and n_out is not None and n_out == n_in):
            continue
        if (run_scales or run_sizes) and axis < max(2, rank - 2):
            continue  # torch and TF exports keep N and C; their sizes come from Shape(x)
        if isinstance(n_in, int) and not isinstance(n_out, int) and scale is not None:
            n_out = int(np.floor(n_in * scale))
        static_in = n_in if isinstance(n_in, int) else None
        static_out = n_out if isinstance(n_out, int) else None
        if scale is None and static_in and static_out and run_scales is None:
            scale = static_out / static_in
        plan.append(AxisPlan(axis, static_in, static_out, scale, run_scales))
    return plan


def _apply(ctx: Emitter, node: onnx.NodeProto, g: str, interp: Interp) -> str:
    """Multiply the gradient by the transposed interpolation matrix along each resized axis."""
    rank = ctx.rank(node.input[0])
    for axis in _resize_plan(ctx, node):
        if axis.axis < rank - 2:
            raise ModelError(f"{node.op_type} node {node.name!r} resizes axis {axis.axis}; only "
                             "the last two axes have a gradient rule; " + _UNSUPPORTED)
        if axis.static and axis.scale is not None:
            assert axis.n_in is not None and axis.n_out is not None
            mat = ctx.const(interpolation_matrix(
                axis.n_in, axis.n_out, axis.scale, mode=interp.mode,
                coordinate=interp.coordinate, nearest=interp.nearest, cubic_a=interp.cubic_a,
                exclude_outside=interp.exclude_outside))
        else:
            mat = runtime_matrix(ctx, node, axis, interp)
        if axis.axis == rank - 1:
            g = ctx.op("MatMul", [g, mat])
        else:
            g = ctx.op("MatMul", [ctx.op("Transpose", [mat], perm=[1, 0]), g])
    return g


def resize_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Resize (nearest, linear or cubic; any coordinate mode but tf_crop_and_resize)."""
    g = grads[0]
    assert g is not None
    if _attr(node, "antialias", 0) or _attr(node, "axes") is not None:
        raise ModelError(f"Resize node {node.name!r} uses antialias or axes; " + _UNSUPPORTED)
    if str(_attr(node, "keep_aspect_ratio_policy", "stretch")) != "stretch":
        raise ModelError(f"Resize node {node.name!r} uses keep_aspect_ratio_policy "
                         f"{_attr(node, 'keep_aspect_ratio_policy')!r}; " + _UNSUPPORTED)
    default_coord = "half_pixel" if ctx.opset >= 11 else "asymmetric"
    interp = Interp(str(_attr(node, "mode", "nearest")),
                    str(_attr(node, "coordinate_transformation_mode", default_coord)),
                    str(_attr(node, "nearest_mode", "round_prefer_floor")),
                    float(_attr(node, "cubic_coeff_a", -0.75)),
                    bool(_attr(node, "exclude_outside", 0)))
    return [_apply(ctx, node, g, interp)] + [None] * (len(node.input) - 1)


def upsample_vjp(ctx: Emitter, node: onnx.NodeProto, grads: Grads) -> list[str | None]:
    """Upsample (opset 7-9): asymmetric coordinates, floor for nearest."""
    g = grads[0]
    assert g is not None
    mode = str(_attr(node, "mode", "nearest"))
    mode = "linear" if mode in ("bilinear", "trilinear") else mode
    dx = _apply(ctx, node, g, Interp(mode, "asymmetric", "floor"))
    return [dx] + [None] * (len(node.input) - 1)
