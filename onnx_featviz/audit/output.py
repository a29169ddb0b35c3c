"""Compare and stats results as JSON, terminal tables and files (one writer for both)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

import onnx_featviz.io.files as fileio
from onnx_featviz.audit.compare import CompareResult, LayerDrift, ModelSide, OutputAgreement
from onnx_featviz.audit.plots import _short, render_compare_plot, render_stats_plot
from onnx_featviz.audit.stats import LayerStats, StatsResult
from onnx_featviz.errors import InputError


# -- reporting ----------------------------------------------------------------------------------
def json_number(value: float) -> float | str | None:
    """A float for JSON: finite as is, +/-infinity as the strings ``"inf"``/``"-inf"``, NaN null.

    (JSON has no infinity; an SNR of exactly equal tensors is infinite.)
    """
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)


def compare_to_json(result: CompareResult) -> dict[str, Any]:
    """Return a JSON-ready dict of everything in ``result``.

    Keys: ``model_a``/``model_b`` (name, precision, providers), ``thresholds``, ``images``,
    ``skipped``, ``partial``, ``passed``, ``first_divergent`` (A tensor or null), ``layers``
    (graph order: ``a``, ``b``, ``layer``, ``match``, ``note``, ``cosine``, ``snr_db``,
    ``max_abs``, ``rel_l2``, ``count``, ``nonfinite``, ``output``, ``passed``, ``reason``),
    ``outputs`` (``a``, ``b``, ``top1_agreement``, ``mean_abs_dprob``, ``max_abs_dprob``,
    ``count``), ``unmatched`` (``model``, ``tensor``, ``layer``, ``reason``) and ``notes``
    (strings: runtime causes of drift, e.g. int8 kernels on a CPU without VNNI). Infinite
    metrics are the strings ``"inf"``/``"-inf"``, NaN is null (``json_number``).
    """
    th = result.thresholds
    return {
        "model_a": _side_json(result.model_a),
        "model_b": _side_json(result.model_b),
        "thresholds": {"kind": th.kind, "min_cosine": th.min_cosine,
                       "min_snr_db": json_number(th.min_snr_db)},
        "images": result.images,
        "skipped": [{"source": s, "reason": r} for s, r in result.skipped],
        "partial": result.partial,
        "passed": result.passed,
        "first_divergent": result.first_divergent,
        "layers": [_layer_json(lay) for lay in result.layers],
        "outputs": [_output_json(out) for out in result.outputs],
        "unmatched": [{"model": u.model, "tensor": u.tensor, "layer": u.layer,
                       "reason": u.reason} for u in result.unmatched],
        "notes": list(result.notes),
    }


def _side_json(side: ModelSide) -> dict[str, Any]:
    return {"name": side.name, "precision": side.precision, "providers": list(side.providers)}


def _layer_json(lay: LayerDrift) -> dict[str, Any]:
    d = lay.drift
    return {"a": lay.a, "b": lay.b, "layer": lay.layer, "match": lay.how, "note": lay.note,
            "cosine": json_number(d.cosine), "snr_db": json_number(d.snr_db),
            "max_abs": json_number(d.max_abs), "rel_l2": json_number(d.rel_l2),
            "count": d.count, "nonfinite": d.nonfinite, "output": lay.output,
            "passed": lay.broken is None, "reason": lay.broken}


def _output_json(out: OutputAgreement) -> dict[str, Any]:
    g = out.agreement
    return {"a": out.a, "b": out.b, "top1_agreement": json_number(g.top1_agreement),
            "mean_abs_dprob": json_number(g.mean_abs_dprob),
            "max_abs_dprob": json_number(g.max_abs_dprob), "count": g.count}


def check_outputs(paths: Sequence[Path], *, images: Sequence[Path] = ()) -> None:
    """Refuse, before a long run, output paths that cannot be written (``fileio``).

    Args:
        paths: files to be written (JSON).
        images: images to be written (plots): also checked for a known image suffix.

    Raises:
        InputError: a path is a folder, sits under a file, or its folder is not writable; an
            existing path is not a regular file (a device or pipe, which the atomic rename
            would replace); an image path's suffix is not one of ``fileio.IMAGE_EXTENSIONS``.
    """
    for path in images:
        if path.suffix.lower() not in fileio.IMAGE_EXTENSIONS:
            raise InputError(f"cannot tell the image format of {path} from {path.suffix!r}; "
                             f"use one of {', '.join(fileio.IMAGE_EXTENSIONS)}")
    fileio.check_writable([*paths, *images])


def save_compare(result: CompareResult, *, json_path: Path | None = None,
                 plot_path: Path | None = None, metric: str = "snr") -> list[Path]:
    """Write the result's JSON (``compare_to_json``) and / or plot atomically.

    Returns:
        The paths written (JSON first).

    Raises:
        InputError: a path cannot be written (nothing half-written is left behind).
    """
    return _save_outputs(json_path, lambda: compare_to_json(result),
                         plot_path, lambda: render_compare_plot(result, metric))


def _save_outputs(json_path: Path | None, make_json: Callable[[], Any],
                  plot_path: Path | None, make_plot: Callable[[], Image.Image]) -> list[Path]:
    """Write the JSON and / or the plot (each built only when asked for); JSON first."""
    written = []
    if json_path is not None:
        fileio.save_json(make_json(), json_path)
        written.append(json_path)
    if plot_path is not None:
        fileio.save_image(make_plot(), plot_path)
        written.append(plot_path)
    return written


def format_compare(result: CompareResult) -> str:
    """Return the comparison as a terminal table with a PASS/FAIL verdict line."""
    th = result.thresholds
    lines = [_side_line("A", result.model_a), _side_line("B", result.model_b),
             f"{result.images} inputs" + (f" ({len(result.skipped)} skipped)"
                                          if result.skipped else "")
             + (" - INTERRUPTED, partial result" if result.partial else "")
             + f"; thresholds ({th.kind}): cosine >= {th.min_cosine:g}, "
             f"SNR >= {th.min_snr_db:g} dB", ""]
    lines += _table(result.layers)
    for out in result.outputs:
        g = out.agreement
        agree = round(g.top1_agreement * g.count)
        lines.append(f"output {out.a}: top-1 agreement {100 * g.top1_agreement:.2f} % "
                     f"({agree}/{g.count}), mean |dprob| {g.mean_abs_dprob:.4g}, "
                     f"max {g.max_abs_dprob:.4g}")
    if result.unmatched:
        lines.append(f"unmatched ({len(result.unmatched)}):")
        lines += [f"  {u.model.upper()} {u.tensor} (layer {u.layer}): {u.reason}"
                  for u in result.unmatched]
    lines += [f"note: {note}" for note in result.notes]
    lines.append(_verdict(result))
    return "\n".join(lines)


def _side_line(tag: str, side: ModelSide) -> str:
    return f"{tag}: {side.name} ({side.precision}, {', '.join(side.providers)})"


def _table(layers: Sequence[LayerDrift]) -> list[str]:
    header = ("#", "layer", "A tensor", "B tensor", "match", "cosine", "SNR dB", "max abs",
              "rel L2", "")
    cells = [header] + [(
        str(i), _short(lay.layer), _short(lay.a), _short(lay.b), lay.how,
        _fmt(lay.drift.cosine, ".8f"), _fmt(lay.drift.snr_db, ".2f"),
        _fmt(lay.drift.max_abs, ".4g"), _fmt(lay.drift.rel_l2, ".4g"),
        ("ok" if lay.broken is None else "FAIL") + (" (output)" if lay.output else ""))
        for i, lay in enumerate(layers)]
    widths = [max(len(row[c]) for row in cells) for c in range(len(header))]
    right = {0, 5, 6, 7, 8}
    return ["  ".join(cell.rjust(w) if c in right else cell.ljust(w)
                      for c, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in cells] + [""]




def _fmt(value: float, spec: str) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, spec)


def _verdict(result: CompareResult) -> str:
    if not result.layers:
        return (f"FAIL: no tensors were compared ({len(result.unmatched)} of model A's tensors "
                "have no match in model B); name matching tensors with --layers, or compare "
                "two forms of the same network")
    if result.passed:
        return (f"PASS: all {len(result.layers)} compared tensors are within the thresholds"
                + (" (partial run)" if result.partial else ""))
    first = next(lay for lay in result.layers if lay.a == result.first_divergent)
    broken = sum(lay.broken is not None for lay in result.layers)
    return (f"FAIL: first divergent tensor {first.a} (layer {first.layer}): {first.broken}; "
            f"{broken} of {len(result.layers)} tensors over the thresholds")


# -- stats reporting ----------------------------------------------------------------------------
def stats_to_json(result: StatsResult) -> dict[str, Any]:
    """Return a JSON-ready dict of ``result``.

    Keys: ``model``, ``providers``, ``images``, ``skipped`` (``source``, ``reason``),
    ``partial``, ``first_nonfinite`` (tensor or null), ``findings`` (counts per kind) and
    ``layers``: tensor name -> ``layer``, ``op``, ``channels``, ``count`` (values per channel),
    per-channel arrays ``mean``, ``std``, ``min``, ``max``, ``zeros`` (fraction) and
    ``nonfinite_channels`` (counts); ``dead`` and ``saturated`` channel index lists;
    ``nonfinite`` (NaN/Inf values in the tensor); for a Clip output ``bounds`` [low, high] and
    ``at_low`` / ``at_high`` (fractions). NaN is null, infinities the strings "inf"/"-inf".
    """
    return {
        "model": result.model,
        "providers": list(result.providers),
        "images": result.images,
        "skipped": [{"source": s, "reason": r} for s, r in result.skipped],
        "partial": result.partial,
        "first_nonfinite": result.first_nonfinite,
        "findings": result.findings(),
        "layers": {lay.tensor: _layer_stats_json(lay) for lay in result.layers},
    }


def _json_array(values: NDArray[np.generic] | None) -> list[float | str | None] | None:
    return None if values is None else [json_number(float(v)) for v in values]


def _layer_stats_json(lay: LayerStats) -> dict[str, Any]:
    st = lay.stats
    out: dict[str, Any] = {
        "layer": lay.layer, "op": lay.op, "channels": len(st.mean), "count": st.count,
        "mean": _json_array(st.mean), "std": _json_array(st.std), "min": _json_array(st.min),
        "max": _json_array(st.max), "zeros": _json_array(st.zeros),
        "nonfinite_channels": [int(v) for v in st.nonfinite],
        "dead": list(lay.dead), "saturated": list(lay.saturated), "nonfinite": lay.nonfinite}
    if lay.bounds != (None, None):
        out["bounds"] = list(lay.bounds)
        out["at_low"], out["at_high"] = _json_array(st.at_low), _json_array(st.at_high)
    return out


def save_stats(result: StatsResult, *, json_path: Path | None = None,
               plot_path: Path | None = None) -> list[Path]:
    """Write the result's JSON (``stats_to_json``) and / or summary plot atomically.

    Returns:
        The paths written (JSON first).

    Raises:
        InputError: a path cannot be written (nothing half-written is left behind).
    """
    return _save_outputs(json_path, lambda: stats_to_json(result),
                         plot_path, lambda: render_stats_plot(result))


def format_stats(result: StatsResult) -> str:
    """Return the statistics as a terminal table (one row per tensor) and the findings."""
    found = result.findings()
    lines = [f"{result.model} ({', '.join(result.providers)}): {result.images} inputs"
             + (f" ({len(result.skipped)} skipped)" if result.skipped else "")
             + (" - INTERRUPTED, partial result" if result.partial else ""), ""]
    lines += _stats_table(result.layers)
    for lay in result.layers:
        if lay.dead:
            lines.append(f"dead: {lay.tensor} ({lay.op}) channels {_indices(lay.dead)}")
        if lay.saturated:
            lines.append(f"saturated: {lay.tensor} (Clip {_bounds_text(lay.bounds)}) channels "
                         f"{_indices(lay.saturated)}")
    if result.first_nonfinite is not None:
        bad = [lay.tensor for lay in result.layers if lay.nonfinite]
        lines.append(f"non-finite: first at {result.first_nonfinite}; {len(bad)} of "
                     f"{len(result.layers)} tensors hold NaN/Inf")
    lines.append(f"findings: {found['dead']} dead channels, {found['saturated']} saturated "
                 f"channels, {found['nonfinite']} tensors with NaN/Inf")
    return "\n".join(lines)


def _stats_table(layers: Sequence[LayerStats]) -> list[str]:
    header = ("#", "tensor", "op", "ch", "mean", "std", "min", "max", "zeros %", "dead", "sat",
              "NaN/Inf")
    cells = [header]
    for i, lay in enumerate(layers):
        st = lay.stats
        cells.append((str(i), _short(lay.tensor), lay.op, str(len(st.mean)),
                      _fmt(_nan_mean(st.mean), ".4g"), _fmt(_nan_mean(st.std), ".4g"),
                      _fmt(_nan_extreme(st.min, np.nanmin), ".4g"),
                      _fmt(_nan_extreme(st.max, np.nanmax), ".4g"),
                      _fmt(100.0 * _nan_mean(st.zeros), ".1f"), str(len(lay.dead)),
                      str(len(lay.saturated)), str(lay.nonfinite)))
    widths = [max(len(row[c]) for row in cells) for c in range(len(header))]
    left = {1, 2}
    return ["  ".join(cell.ljust(w) if c in left else cell.rjust(w)
                      for c, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in cells] + [""]


def _nan_mean(values: NDArray[np.float64]) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _nan_extreme(values: NDArray[np.float64], pick: Any) -> float:
    kept = values[~np.isnan(values)]
    return float(pick(kept)) if kept.size else math.nan


def _indices(channels: Sequence[int], limit: int = 12) -> str:
    shown = ", ".join(str(c) for c in channels[:limit])
    return f"[{shown}{', ...' if len(channels) > limit else ''}] ({len(channels)})"


def _bounds_text(bounds: tuple[float | None, float | None]) -> str:
    low, high = bounds
    return f"{'-inf' if low is None else f'{low:g}'}..{'inf' if high is None else f'{high:g}'}"

