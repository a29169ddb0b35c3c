"""Audit pictures: drift by layer depth (compare) and channel statistics by layer (stats)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import NDArray
from PIL import Image

import onnx_featviz.audit.metrics as audit
from onnx_featviz.audit.compare import (
    _METRIC_FIELDS,
    METRICS,
    CompareResult,
    ModelSide,
)
from onnx_featviz.audit.stats import LayerStats, StatsResult
from onnx_featviz.errors import InputError

_METRIC_LABELS = {"cosine": "cosine similarity", "snr": "SNR (dB)", "maxabs": "max |a - b|",
                  "rel-l2": "relative L2 error"}


def render_compare_plot(result: CompareResult, metric: str = "snr") -> Image.Image:
    """Plot one metric by layer depth (graph order), with the threshold and first divergence.

    Infinite SNR (identical tensors) is drawn at the top edge and labelled ``inf``; for
    ``maxabs`` and ``rel-l2`` (log scale) exact zeros are drawn at the bottom edge, labelled 0.
    The threshold line of ``rel-l2`` is ``10 ** (-min_snr_db / 20)``; ``maxabs`` has none.

    Args:
        result: a ``compare_models`` result with at least one layer.
        metric: one of ``METRICS``.

    Returns:
        An RGB image (matplotlib ``Figure`` rendered off-screen; no global state).

    Raises:
        InputError: an unknown metric or a result without layers.
    """
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if not result.layers:
        raise InputError("the result has no compared tensors to plot")
    rows = result.layers
    fig = Figure(figsize=(max(6.4, 0.55 * len(rows) + 3.0), 4.8), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    values = np.array([getattr(lay.drift, _METRIC_FIELDS[metric]) for lay in rows], np.float64)
    threshold = _threshold_value(result.thresholds, metric)
    _draw_points(ax, values, [lay.broken is not None for lay in rows], metric, threshold)
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", linestyle="--", linewidth=1,
                   label=f"threshold ({result.thresholds.kind}): {threshold:.4g}")
    if result.first_divergent is not None:
        index = next(i for i, lay in enumerate(rows) if lay.a == result.first_divergent)
        ax.axvline(index, color="tab:orange", linewidth=1,
                   label=f"first divergent: {result.first_divergent}")
    ax.set_xticks(range(len(rows)), [_short(lay.a, 24) for lay in rows],
                  rotation=40 if len(rows) > 3 else 0, ha="right" if len(rows) > 3 else "center",
                  fontsize=8)
    ax.set_xlabel("layer (graph order of model A)")
    ax.set_ylabel(_METRIC_LABELS[metric])
    ax.set_title(f"{_METRIC_LABELS[metric]} by layer, {result.images} inputs\n"
                 f"A: {_side_title(result.model_a)}  vs  B: {_side_title(result.model_b)}",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    canvas.draw()  # type: ignore[no-untyped-call]
    rgba = np.asarray(canvas.buffer_rgba())  # type: ignore[no-untyped-call]
    return Image.fromarray(rgba).convert("RGB")


def _side_title(side: ModelSide) -> str:
    device = side.providers[0].removesuffix("ExecutionProvider") if side.providers else "?"
    return f"{side.name} ({side.precision}, {device})"


def _threshold_value(thresholds: audit.Thresholds, metric: str) -> float | None:
    if metric == "cosine":
        return thresholds.min_cosine
    if metric == "snr":
        return thresholds.min_snr_db
    if metric == "rel-l2":
        return float(10.0 ** (-thresholds.min_snr_db / 20.0))
    return None


def _draw_points(ax: Any, values: NDArray[np.float64], broken: Sequence[bool], metric: str,
                 threshold: float | None) -> None:
    """Line of the values; infinities and (log scale) zeros drawn as triangles at an edge."""
    log_scale = metric in ("maxabs", "rel-l2")
    top, bottom = _edges(ax, values, metric, threshold, log_scale)
    shown = values.copy()
    pinned = np.zeros(len(values), bool)
    for i, v in enumerate(values):
        if math.isinf(v) or (log_scale and v == 0):
            shown[i] = top if v > 0 else bottom
            pinned[i] = True
    x = np.arange(len(values))
    ax.plot(x, shown, color="tab:blue", linewidth=1, marker="o", markersize=4, zorder=2)
    if pinned.any():
        text = {"snr": "B equals A (SNR = inf)", "maxabs": "B equals A (0)",
                "rel-l2": "B equals A (0)"}.get(metric, "infinite")
        ax.scatter(x[pinned], shown[pinned], marker="^" if metric == "snr" else "v",
                   color="tab:green", zorder=3, s=45, label=text)
    bad = np.array(broken, bool)
    if bad.any():
        ax.scatter(x[bad], shown[bad], color="tab:red", zorder=3, s=30, label="over threshold")


def _edges(ax: Any, values: NDArray[np.float64], metric: str, threshold: float | None,
           log_scale: bool) -> tuple[float, float]:
    """Set the y range around the finite values and the threshold; return (top, bottom) rows
    where infinite (or, on a log scale, zero) values are drawn."""
    finite = values[np.isfinite(values) & ((values > 0) if log_scale else True)]
    pool = np.append(finite, threshold) if threshold is not None else finite
    lo, hi = (float(pool.min()), float(pool.max())) if pool.size else (0.0, 1.0)
    if log_scale:
        top, bottom = hi * 10.0, lo / 10.0
        ax.set_yscale("log")
        ax.set_ylim(bottom / 3.0, top * 3.0)
        return top, bottom
    pad = max(hi - lo, 1e-4 if metric == "cosine" else 20.0) * 0.15
    top, bottom = hi + pad, lo - pad
    ax.set_ylim(bottom - pad, top + pad)
    return top, bottom


def render_stats_plot(result: StatsResult) -> Image.Image:
    """Draw one panel per tensor: per-channel mean +/- std, min/max, zero fraction, findings.

    Each panel shows, by channel index: the mean as a line inside a +/- std band, min and max
    as dots, the fraction of zeros on a right-hand axis (0..1, grey bars), dead channels as
    red crosses at the bottom and saturated channels as orange triangles at the top.

    Returns:
        An RGB image (matplotlib ``Figure`` rendered off-screen; no global state).

    Raises:
        InputError: the result has no layers.
    """
    if not result.layers:
        raise InputError("the result has no measured tensors to plot")
    rows = len(result.layers)
    height = max(1.3, min(2.4, 60.0 / rows))
    fig = Figure(figsize=(10.0, 0.9 + height * rows), dpi=90, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    for ax, lay in zip(axes, result.layers, strict=True):
        _draw_layer_panel(ax, lay)
    axes[-1].set_xlabel("channel")
    fig.suptitle(f"{result.model}: per-channel statistics over {result.images} inputs"
                 + (" (partial)" if result.partial else ""), fontsize=11)
    canvas.draw()  # type: ignore[no-untyped-call]
    rgba = np.asarray(canvas.buffer_rgba())  # type: ignore[no-untyped-call]
    return Image.fromarray(rgba).convert("RGB")


def _draw_layer_panel(ax: Any, lay: LayerStats) -> None:
    st = lay.stats
    x = np.arange(len(st.mean))
    ax.fill_between(x, st.mean - st.std, st.mean + st.std, color="tab:blue", alpha=0.25,
                    linewidth=0, label="mean ± std")
    ax.plot(x, st.mean, color="tab:blue", linewidth=1)
    marker = 3 if len(x) <= 128 else 1.5
    ax.plot(x, st.min, ".", color="tab:green", markersize=marker, label="min")
    ax.plot(x, st.max, ".", color="tab:purple", markersize=marker, label="max")
    zeros = ax.twinx()
    bars = zeros.bar(x, st.zeros, width=0.8, color="grey", alpha=0.3, label="zero fraction")
    zeros.set_ylim(0.0, 1.0)
    zeros.set_ylabel("zero fraction", fontsize=7)
    zeros.tick_params(labelsize=7)
    ax.set_zorder(zeros.get_zorder() + 1)  # values in front of the bars
    ax.patch.set_visible(False)
    if lay.dead:
        ax.plot(list(lay.dead), [0.0] * len(lay.dead), "x", color="tab:red", markersize=7,
                label="dead")
    if lay.saturated:
        top = float(lay.bounds[1]) if lay.bounds[1] is not None else float(np.nanmax(st.max))
        ax.plot(list(lay.saturated), [top] * len(lay.saturated), "^", color="tab:orange",
                markersize=7, label="saturated")
    note = f", {lay.nonfinite} NaN/Inf" if lay.nonfinite else ""
    ax.set_title(f"{lay.tensor} ({lay.op}, {len(x)} channels{note})", fontsize=8, loc="left")
    ax.tick_params(labelsize=7)
    ax.set_xlim(-0.5, len(x) - 0.5)
    ax.set_ylabel("value", fontsize=7)
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend([*handles, bars], [*labels, "zero fraction"], fontsize=6, loc="upper right",
              ncols=6)

def _short(name: str, width: int = 32) -> str:
    return name if len(name) <= width else name[: width // 2 - 2] + "..." + name[-(width // 2 - 1):]
