"""On-device reductions appended to a copy of a model: per-channel statistics (shifted sums,
zero and clip-bound counts) and non-finite counts, so only (N, C) numbers leave the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper

from onnx_featviz.errors import InputError
from onnx_featviz.graph import catalog as catalog
from onnx_featviz.graph.layouts import tensor_layouts
from onnx_featviz.graph.rewrite import (
    _CONST,
    _append,
    _channels,
    _check_tensor,
    _Context,
    _context,
    _copy,
    _float32_source,
    _make_node,
)
from onnx_featviz.structs import Shape

#: Statistics ``append_channel_stats`` outputs for every tensor (see its docstring).
STAT_NAMES = ("shift", "sum", "sumsq", "min", "max", "zeros", "count")


#: Counts of values at a Clip's lower / upper bound, for tensors a Clip produces.
BOUND_STAT_NAMES = ("at_low", "at_high")


#: The count ``append_nonfinite_counts`` outputs.
NONFINITE_STAT = "nonfinite"


_ALL_STATS = (*STAT_NAMES, *BOUND_STAT_NAMES, NONFINITE_STAT)


_DENORM_MIN = np.float32(np.finfo(np.float32).smallest_subnormal)


def stat_output(stat: str, tensor: str) -> str:
    """Return the output name of one per-channel statistic of ``tensor``.

    Raises:
        InputError: ``stat`` is not one of ``STAT_NAMES``, ``BOUND_STAT_NAMES`` or
            ``NONFINITE_STAT``.
    """
    if stat not in _ALL_STATS:
        raise InputError(f"unknown statistic {stat!r}; choose one of {', '.join(_ALL_STATS)}")
    return f"featviz/stats/{stat}/{tensor}"


def append_channel_stats(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """Return a copy of ``model`` that also outputs per-sample, per-channel reductions.

    The reductions are the few that a numerically stable merge on the host needs (11 nodes per
    tensor: 4 elementwise passes and 5 reductions over it). For x of shape (N, C, ...)
    (float16/int tensors cast to float32, int8 quantized ones dequantized first; a tensor of
    unknown rank viewed as (N, C, L)), the outputs ``stat_output(stat, x)`` are:

    - ``shift`` float32 (1, C, 1, ...): K = x[0, c, 0, ...], a value of each channel;
    - ``sum``, ``sumsq`` float32 (N, C): sums of (x - K) and (x - K)^2 over each sample's
      positions. Shifting by a value of the channel keeps the variance (sumsq - sum^2 / n) / n
      accurate when the mean is large and the spread small;
    - ``min``, ``max`` float32 (N, C);
    - ``zeros`` float32 (N, C): count of exact zeros (exact up to 2^24 positions);
    - ``count`` int64 scalar: number of values of x (N * C * positions);
    - ``at_low`` / ``at_high`` float32 (N, C), only for a tensor made by a Clip whose bound is
      a constant (``clip_bounds``): count of values equal to that bound (``at_low`` is left
      out for a bound of 0, where it equals ``zeros``).

    Sums run in float32 over one sample's positions (relative error below positions * 2^-24,
    typically sqrt(positions) * 2^-24); the caller sums over the batch in float64.
    NaN/Inf are not counted here (that would cost passes on every batch): a channel holding one
    has a non-finite ``sum``; ``append_nonfinite_counts`` counts them for such batches.
    The tensors themselves are not exposed. No opset is raised: below opset 11 (no float Equal)
    zeros are found as ``|x| < smallest float32 subnormal`` and bounds with Less/Greater;
    Reduce* take axes as an input from opset 18 (ReduceSum from 13), an attribute before.

    Raises:
        LayerNotFoundError: a tensor is not in the model.
        ModelError: a tensor lives in a subgraph or has fewer than 2 dims.
    """
    out = _copy(model)
    ctx = _context(out, None, None)
    present = {o.name for o in out.graph.output}
    last = channels_last(model, tensors)
    for tensor in dict.fromkeys(tensors):
        _check_tensor(tensor, ctx)
        low, high = _clip_bounds(tensor, ctx, out.graph)
        stats = [*STAT_NAMES, *(["at_low"] if low not in (None, 0.0) else []),
                 *(["at_high"] if high is not None else [])]
        if all(stat_output(s, tensor) in present for s in stats):
            continue
        view = _stat_view(out.graph, ctx, tensor, channels_last=tensor in last)
        _add_moment_nodes(out.graph, ctx, view)
        for op, stat in (("ReduceMin", "min"), ("ReduceMax", "max")):
            _reduce(out.graph, ctx, op, view.source, stat_output(stat, tensor), view.spatial)
        _add_count(out.graph, ctx, view, _equal_mask(out.graph, ctx, view, 0.0, "zero"), "zeros")
        for stat, bound in (("at_low", low), ("at_high", high)):
            if stat in stats and bound is not None:
                mask = _equal_mask(out.graph, ctx, view, bound, stat)
                _add_count(out.graph, ctx, view, mask, stat)
        _append(out.graph, ctx, _make_node("Size", [view.source], stat_output("count", tensor),
                                           {}))
        _declare_stats(out.graph, ctx, view, [s for s in stats
                                              if stat_output(s, tensor) not in present])
    return out


def append_nonfinite_counts(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """Return a copy of ``model`` that also outputs per-sample counts of NaN/Inf in ``tensors``.

    Outputs ``stat_output("nonfinite", x)``, float32 (N, C), for each tensor (cast / dequantized
    to float32 as in ``append_channel_stats``). Meant for the batches whose ``sum`` came out
    non-finite, so that clean data never pays for it.

    Raises:
        LayerNotFoundError: a tensor is not in the model.
        ModelError: a tensor lives in a subgraph or has fewer than 2 dims.
    """
    out = _copy(model)
    ctx = _context(out, None, None)
    present = {o.name for o in out.graph.output}
    last = channels_last(model, tensors)
    for tensor in dict.fromkeys(tensors):
        _check_tensor(tensor, ctx)
        if stat_output(NONFINITE_STAT, tensor) in present:
            continue
        view = _stat_view(out.graph, ctx, tensor, channels_last=tensor in last)
        inf = _const(out.graph, ctx, "inf", np.array(np.inf, np.float32))
        magnitude = _stat_node(out.graph, ctx, "Abs", [view.source], "stats_abs", tensor)
        finite = _stat_node(out.graph, ctx, "Less", [magnitude, inf], "stats_is_finite", tensor)
        bad = _stat_node(out.graph, ctx, "Not", [finite], "stats_is_nonfinite", tensor)
        _add_count(out.graph, ctx, view, bad, NONFINITE_STAT)
        _declare_stats(out.graph, ctx, view, [NONFINITE_STAT])
    return out


def clip_bounds(model: onnx.ModelProto, tensors: Sequence[str]
                ) -> dict[str, tuple[float | None, float | None]]:
    """Return, per tensor, the constant (lower, upper) bounds of the Clip that makes it.

    ``(None, None)`` when another op makes it; a bound is None when the Clip has none (or
    it is computed at run time). Read from the ``min``/``max`` inputs (opset 11+) or attributes.
    """
    producers = {o: n for n in model.graph.node for o in n.output if o}
    opset = catalog.default_opset(model)
    return {t: _bounds_of(producers.get(t), opset, model.graph) for t in tensors}






def _const(graph: onnx.GraphProto, ctx: _Context, key: str, value: NDArray[np.generic]) -> str:
    """Add (once) a Constant node ``featviz/const/<key>``; return its output name.

    Constant nodes rather than initializers: IR < 4 would need every initializer as an input.
    """
    name = _CONST + key
    if name not in ctx.made:
        tensor = onnx.numpy_helper.from_array(value, name)
        _append(graph, ctx, helper.make_node("Constant", [], [name], name=name, value=tensor))
    return name


def _reduce(graph: onnx.GraphProto, ctx: _Context, op: str, x: str, out: str,
            axes: Sequence[int]) -> None:
    """Append ``op`` over ``axes`` without keepdims, axes as input or attribute per opset."""
    if ctx.opset >= 18 or (op == "ReduceSum" and ctx.opset >= 13):
        key = "axes_" + "_".join(str(a) for a in axes)
        axes_in = _const(graph, ctx, key, np.array(list(axes), np.int64))
        node = helper.make_node(op, [x, axes_in], [out], name=out, keepdims=0)
    else:
        node = helper.make_node(op, [x], [out], name=out, axes=list(axes), keepdims=0)
    _append(graph, ctx, node)


def _stat_node(graph: onnx.GraphProto, ctx: _Context, op: str, inputs: list[str], purpose: str,
               tensor: str, **attrs: int) -> str:
    """Append one node named ``featviz/<purpose>/<tensor>``; return its output."""
    out = f"featviz/{purpose}/{tensor}"
    _append(graph, ctx, _make_node(op, inputs, out, attrs))
    return out


@dataclass(frozen=True, slots=True)
class _View:
    """A float32 (N, C, ...) view of the tensor a statistic reduces, and its shape."""

    tensor: str
    source: str
    shape: Shape

    @property
    def spatial(self) -> list[int]:
        """Axes after the channel axis."""
        return list(range(2, len(self.shape)))


def channels_last(model: onnx.ModelProto, tensors: Sequence[str]) -> frozenset[str]:
    """Return those of ``tensors`` whose channel axis is the last (``NHWC`` or ``NTC``)."""
    wanted = set(tensors)
    if not wanted:
        return frozenset()
    layouts = tensor_layouts(model)
    return frozenset(t for t in wanted if layouts.get(t) in ("NHWC", "NTC"))


def _stat_view(graph: onnx.GraphProto, ctx: _Context, tensor: str, *,
               channels_last: bool = False) -> _View:
    """Float32 (N, C, ...) source of ``tensor``: a channels-last tensor is transposed, one of
    unknown rank or (N, C) is reshaped to (N, C, L)."""
    source = _float32_source(graph, tensor, ctx)
    shape = ctx.types.get(tensor, ("", None))[1]
    channels = _channels(tensor, ctx)
    if shape is not None and len(shape) >= 3 and channels_last:
        perm = [0, len(shape) - 1, *range(1, len(shape) - 1)]
        moved = f"featviz/stats_nchw/{tensor}"
        if moved not in ctx.made:
            _append(graph, ctx, helper.make_node("Transpose", [source], [moved], name=moved,
                                                 perm=perm))
        return _View(tensor, moved, tuple(shape[i] for i in perm))
    if shape is not None and len(shape) >= 3:
        return _View(tensor, source, shape)
    shape_ncl = _const(graph, ctx, "shape_ncl", np.array([0, 0, -1], np.int64))
    flat = f"featviz/stats_flat/{tensor}"
    if flat not in ctx.made:
        _append(graph, ctx, _make_node("Reshape", [source, shape_ncl], flat, {}))
    return _View(tensor, flat, (shape[0] if shape else None, channels, None))


def _declare_stats(graph: onnx.GraphProto, ctx: _Context, view: _View, stats: Sequence[str]
                   ) -> None:
    """Declare the outputs of ``stats``: (N, C), the shift (1, C, 1...), the scalar count."""
    batch, channels = view.shape[0], view.shape[1]
    for stat in stats:
        elem, dims = TensorProto.FLOAT, [batch, channels]
        if stat == "count":
            elem, dims = TensorProto.INT64, []
        elif stat == "shift":
            dims = [1, channels, *[1] * len(view.spatial)]
        graph.output.append(
            helper.make_tensor_value_info(stat_output(stat, view.tensor), elem, dims))


def _add_moment_nodes(graph: onnx.GraphProto, ctx: _Context, view: _View) -> None:
    """Append ``shift`` K, and per-sample sums of (x - K) and (x - K)^2."""
    tensor = view.tensor
    axes = [0, *view.spatial]
    shift = stat_output("shift", tensor)
    if ctx.opset >= 10:
        starts = _const(graph, ctx, f"zeros_{len(axes)}", np.zeros(len(axes), np.int64))
        ends = _const(graph, ctx, f"ones_{len(axes)}", np.ones(len(axes), np.int64))
        slice_axes = _const(graph, ctx, "axes_" + "_".join(map(str, axes)),
                            np.array(axes, np.int64))
        _append(graph, ctx, _make_node("Slice", [view.source, starts, ends, slice_axes], shift,
                                       {}))
    else:
        _append(graph, ctx, helper.make_node("Slice", [view.source], [shift], name=shift,
                                             starts=[0] * len(axes), ends=[1] * len(axes),
                                             axes=axes))
    diff = _stat_node(graph, ctx, "Sub", [view.source, shift], "stats_diff", tensor)
    _reduce(graph, ctx, "ReduceSum", diff, stat_output("sum", tensor), view.spatial)
    # Mul + ReduceSum: onnxruntime's CPU ReduceSumSquare is not vectorized (2-3x slower)
    square = _stat_node(graph, ctx, "Mul", [diff, diff], "stats_diff_sq", tensor)
    _reduce(graph, ctx, "ReduceSum", square, stat_output("sumsq", tensor), view.spatial)


def _equal_mask(graph: onnx.GraphProto, ctx: _Context, view: _View, value: float,
                purpose: str) -> str:
    """Append a bool mask of ``x == value`` (float Equal needs opset 11: Less/Greater before)."""
    tensor, x = view.tensor, view.source
    key = "zero" if value == 0.0 else f"{purpose}/{tensor}"
    constant = _const(graph, ctx, key, np.array(value, np.float32))
    if ctx.opset >= 11:
        return _stat_node(graph, ctx, "Equal", [x, constant], f"stats_is_{purpose}", tensor)
    if value == 0.0:  # only 0 is below the smallest subnormal
        tiny = _const(graph, ctx, "smallest_subnormal", np.array(_DENORM_MIN, np.float32))
        magnitude = _stat_node(graph, ctx, "Abs", [x], "stats_abs", tensor)
        return _stat_node(graph, ctx, "Less", [magnitude, tiny], "stats_is_zero", tensor)
    below = _stat_node(graph, ctx, "Less", [x, constant], f"stats_below_{purpose}", tensor)
    above = _stat_node(graph, ctx, "Greater", [x, constant], f"stats_above_{purpose}", tensor)
    either = _stat_node(graph, ctx, "Or", [below, above], f"stats_not_{purpose}", tensor)
    return _stat_node(graph, ctx, "Not", [either], f"stats_is_{purpose}", tensor)


def _add_count(graph: onnx.GraphProto, ctx: _Context, view: _View, mask: str, stat: str
               ) -> None:
    """Count the true values of a bool (N, C, ...) mask per sample and channel (float32)."""
    as_float = _stat_node(graph, ctx, "Cast", [mask], f"stats_{stat}_f", view.tensor,
                          to=TensorProto.FLOAT)
    _reduce(graph, ctx, "ReduceSum", as_float, stat_output(stat, view.tensor), view.spatial)


def _clip_bounds(tensor: str, ctx: _Context, graph: onnx.GraphProto
                 ) -> tuple[float | None, float | None]:
    return _bounds_of(ctx.producers.get(tensor), ctx.opset, graph)


def _bounds_of(node: onnx.NodeProto | None, opset: int, graph: onnx.GraphProto
               ) -> tuple[float | None, float | None]:
    if node is None or node.op_type != "Clip" or node.domain not in ("", "ai.onnx"):
        return None, None
    if opset < 11:
        attrs = {a.name: float(a.f) for a in node.attribute}
        low, high = attrs.get("min"), attrs.get("max")
        limit = float(np.finfo(np.float32).max)
        return (None if low is None or low <= -limit else low,
                None if high is None or high >= limit else high)
    inputs = [*node.input, "", ""]
    return _constant_scalar(inputs[1], graph), _constant_scalar(inputs[2], graph)


def _constant_scalar(name: str, graph: onnx.GraphProto) -> float | None:
    """Value of a one-element initializer or Constant node output, else None."""
    if not name:
        return None
    found: NDArray[np.generic] | None = None
    for init in graph.initializer:
        if init.name == name:
            found = onnx.numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            value = next((a for a in node.attribute if a.name == "value"), None)
            found = None if value is None else onnx.numpy_helper.to_array(value.t)
    if found is None or found.size != 1:
        return None
    return float(np.asarray(found, np.float32).reshape(()))

