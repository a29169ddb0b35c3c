"""Run-time interpolation matrices for Resize gradients whose sizes are not static.

``runtime_matrix`` emits the nodes that build the ``(n_out, n_in)`` matrix of one resized axis
from ``Shape`` of the forward input and output, with the same coordinate and weight formulas as
``resize.interpolation_matrix`` (nearest, linear, cubic), in the emitter's compute dtype, so a
graph with symbolic H/W or scales/sizes computed in the graph gets its exact gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnx_featviz.autodiff.emit import Emitter
from onnx_featviz.autodiff.vjp import dim_of
from onnx_featviz.errors import ModelError


@dataclass(frozen=True, slots=True)
class Interp:
    """Interpolation attributes of a Resize node."""

    mode: str
    coordinate: str
    nearest: str
    cubic_a: float = -0.75
    exclude_outside: bool = False


@dataclass(frozen=True, slots=True)
class AxisPlan:
    """One resized axis: static sizes when known, the scale when constant, or the run-time
    ``scales`` tensor that holds it (``None`` with no scale: taken as ``n_out / n_in``)."""

    axis: int
    n_in: int | None
    n_out: int | None
    scale: float | None
    scales: str | None = None

    @property
    def static(self) -> bool:
        """Whether the matrix can be built here (sizes known, scale known or implied)."""
        return self.n_in is not None and self.n_out is not None and self.scales is None


def _scalar(ctx: Emitter, value: int) -> str:
    return ctx.const(np.asarray(value, np.int64), np.int64)


def _arange(ctx: Emitter, n: str) -> str:
    """Compute-dtype ``[0, 1, ..., n-1]`` for a 1-D int64 size tensor ``n``."""
    count = ctx.op("Reshape", [n, ctx.ints([])])
    return ctx.op("Cast", [ctx.op("Range", [_scalar(ctx, 0), count, _scalar(ctx, 1)])],
                  to=ctx.dtype)


def _coordinate(ctx: Emitter, rows: str, fin: str, fout: str, scale: str, mode: str) -> str:
    """Source coordinates of output positions ``rows`` (ONNX coordinate_transformation_mode)."""
    half = ctx.const(0.5)
    centered = ctx.op("Div", [ctx.op("Add", [rows, half]), scale])
    if mode in ("half_pixel", "pytorch_half_pixel"):
        x = ctx.op("Sub", [centered, half])
        if mode == "half_pixel":
            return x
        return ctx.where(ctx.op("Greater", [fout, ctx.const(1.0)]), x, ctx.const(0.0))
    if mode == "align_corners":
        span = ctx.op("Max", [ctx.op("Sub", [fout, ctx.const(1.0)]), ctx.const(1.0)])
        x = ctx.op("Div", [ctx.mul(rows, ctx.op("Sub", [fin, ctx.const(1.0)])), span])
        return ctx.where(ctx.op("Greater", [fout, ctx.const(1.0)]), x, ctx.const(0.0))
    if mode == "asymmetric":
        return ctx.op("Div", [rows, scale])
    if mode == "tf_half_pixel_for_nn":
        return centered
    if mode == "half_pixel_symmetric":
        adj = ctx.op("Div", [fout, ctx.mul(scale, fin)])
        offset = ctx.mul(ctx.mul(fin, half), ctx.op("Sub", [ctx.const(1.0), adj]))
        return ctx.op("Add", [offset, ctx.op("Sub", [centered, half])])
    raise ModelError(f"Resize coordinate_transformation_mode {mode!r} has no gradient rule; use "
                     "a gradient-free method (Score-CAM, Ablation-CAM, Eigen-CAM, occlusion)")


def _onehot(ctx: Emitter, idx: str, cols: str, weight: str | None = None) -> str:
    """``(n_out, n_in)`` matrix with ``weight`` (or 1) at column ``idx[row]`` of each row."""
    hit = ctx.op("Equal", [ctx.unsqueeze(idx, [1]), ctx.unsqueeze(cols, [0])])
    mat = ctx.op("Cast", [hit], to=ctx.dtype)
    return mat if weight is None else ctx.mul(mat, ctx.unsqueeze(weight, [1]))


def _clamp(ctx: Emitter, t: str, last: str) -> str:
    return ctx.op("Min", [ctx.op("Max", [t, ctx.const(0.0)]), last])


def _nearest(ctx: Emitter, x: str, mode: str) -> str:
    if mode == "round_prefer_floor":
        return ctx.op("Ceil", [ctx.op("Sub", [x, ctx.const(0.5)])])
    if mode == "round_prefer_ceil":
        return ctx.op("Floor", [ctx.op("Add", [x, ctx.const(0.5)])])
    if mode in ("floor", "ceil"):
        return ctx.op(mode.capitalize(), [x])
    raise ModelError(f"Resize nearest_mode {mode!r} is unknown; expected round_prefer_floor, "
                     "round_prefer_ceil, floor or ceil")


def _horner(ctx: Emitter, t: str, coeffs: Sequence[float]) -> str:
    """``c0 + c1 t + c2 t^2 + c3 t^3`` for ``coeffs = (c0, c1, c2, c3)``."""
    acc = ctx.const(coeffs[-1])
    for c in reversed(coeffs[:-1]):
        acc = ctx.op("Add", [ctx.mul(acc, t), ctx.const(c)])
    return acc


def _cubic(ctx: Emitter, x: str, cols: str, last: str, interp: Interp) -> str:
    """Keys cubic matrix: taps floor(x)-1 .. floor(x)+2, edge-clamped or excluded outside."""
    a = interp.cubic_a
    base = ctx.op("Floor", [x])
    r = ctx.op("Sub", [x, base])
    one, two = ctx.const(1.0), ctx.const(2.0)
    near, far = (1.0, 0.0, -(a + 3), a + 2), (-4 * a, 8 * a, -5 * a, a)
    dists = [(ctx.op("Add", [r, one]), far), (r, near), (ctx.op("Sub", [one, r]), near),
             (ctx.op("Sub", [two, r]), far)]
    weights = [_horner(ctx, d, c) for d, c in dists]
    taps = [ctx.op("Add", [base, ctx.const(float(k))]) for k in (-1, 0, 1, 2)]
    if interp.exclude_outside:
        inside = [ctx.op("Cast", [ctx.op("And", [
            ctx.op("Not", [ctx.op("Less", [t, ctx.const(0.0)])]),
            ctx.op("Not", [ctx.op("Greater", [t, last])])])], to=ctx.dtype) for t in taps]
        weights = [ctx.mul(w, m) for w, m in zip(weights, inside, strict=True)]
        total = ctx.op("Sum", weights)
        weights = [ctx.op("Div", [w, total]) for w in weights]
    parts = [_onehot(ctx, _clamp(ctx, t, last), cols, w) for t, w in zip(taps, weights,
                                                                          strict=True)]
    return ctx.op("Sum", parts)


def runtime_matrix(ctx: Emitter, node: onnx.NodeProto, plan: AxisPlan, interp: Interp) -> str:
    """Emit the ``(n_out, n_in)`` interpolation matrix of ``plan.axis``, built at run time."""
    n_in = dim_of(ctx, node.input[0], plan.axis)
    n_out = dim_of(ctx, node.output[0], plan.axis)
    fin, fout = (ctx.op("Cast", [n], to=ctx.dtype) for n in (n_in, n_out))
    if plan.scale is not None:
        scale = ctx.const(plan.scale)
    elif plan.scales is not None:
        picked = ctx.op("Slice", [plan.scales, ctx.ints([plan.axis]), ctx.ints([plan.axis + 1])])
        scale = ctx.op("Cast", [picked], to=ctx.dtype)
    else:
        scale = ctx.op("Div", [fout, fin])
    rows, cols = _arange(ctx, n_out), _arange(ctx, n_in)
    x = _coordinate(ctx, rows, fin, fout, scale, interp.coordinate)
    last = ctx.op("Sub", [fin, ctx.const(1.0)])
    if interp.mode == "nearest":
        return _onehot(ctx, _clamp(ctx, _nearest(ctx, x, interp.nearest), last), cols)
    if interp.mode == "cubic":
        return _cubic(ctx, x, cols, last, interp)
    if interp.mode != "linear":
        raise ModelError(f"Resize mode {interp.mode!r} has no gradient rule; expected nearest, "
                         "linear or cubic")
    xc = _clamp(ctx, x, last)
    lo = ctx.op("Floor", [xc])
    hi = ctx.op("Min", [ctx.op("Add", [lo, ctx.const(1.0)]), last])
    frac = ctx.op("Sub", [xc, lo])
    return ctx.op("Add", [_onehot(ctx, lo, cols, ctx.op("Sub", [ctx.const(1.0), frac])),
                          _onehot(ctx, hi, cols, frac)])
