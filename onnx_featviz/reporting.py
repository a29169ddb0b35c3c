"""``build_report``: run views, attribution and audits on one model and lay them out as a page.

The report needs all three capability packages together, which cannot import each other, so
its run sits here, at the level of ``api``; the page itself is drawn by ``render.html`` (pure).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

import onnx_featviz.attribution.run as attribution_run
import onnx_featviz.graph.layouts as layouts
import onnx_featviz.graph.modules as modules
import onnx_featviz.io.files as fileio
import onnx_featviz.io.preprocess as preprocess
import onnx_featviz.render.html as page
import onnx_featviz.render.pictures as render
from onnx_featviz.attribution.output import render_backprop
from onnx_featviz.audit import compare as audit_compare
from onnx_featviz.audit import stats as audit_stats
from onnx_featviz.audit.plots import render_compare_plot, render_stats_plot
from onnx_featviz.errors import InputError
from onnx_featviz.inspector import Images, Inspector, ModelSource, PrepOptions
from onnx_featviz.render.text import shape_text
from onnx_featviz.structs import Progress, ProgressFn
from onnx_featviz.views.model import describe
from onnx_featviz.views.pictures import render_model_filters

SectionRun = Callable[["_Run"], page.Section]


@dataclass(frozen=True, slots=True)
class ReportOptions:
    """What ``build_report`` puts on the page.

    ``data``: a dataset (image, folder, ``.npy``/``.npz``, MNIST IDX) for the channel statistics
    and the comparison (None: no statistics; the comparison then needs it); ``compare``: a second
    form of the model (fp16, int8...) to measure drift against; ``methods``: CAM methods drawn
    side by side; ``backprop``: backprop views (``BACKPROP_METHODS``); ``layers``: layers of the
    feature-map picker (empty: every conv layer's activation); ``labels``: class names (None: the
    model's metadata); ``top_k``: classes per prediction; ``top_channels``: most active channels
    drawn per feature map; ``filter_layers``: how many of the first conv layers show filters;
    ``image_format``: ``"webp"`` or ``"png"``; ``batch_size``: inputs per run of the audits.
    """

    data: Path | str | None = None
    compare: ModelSource | None = None
    methods: tuple[str, ...] = ("grad_cam", "grad_cam_pp")
    backprop: tuple[str, ...] = ("saliency", "guided")
    layers: tuple[str | int, ...] = ()
    labels: tuple[str, ...] | None = None
    prep: PrepOptions | None = None
    provider: str = "auto"
    top_k: int = 5
    top_channels: int = 16
    filter_layers: int = 2
    image_format: str = "webp"
    batch_size: int = 32


@dataclass(frozen=True, slots=True)
class _Run:
    """What every section run reads: the model, its inspector, the inputs, the options."""

    model: ModelSource
    inspector: Inspector
    images: Images
    sources: tuple[str, ...]
    options: ReportOptions


def build_report(model: ModelSource, images: Images, options: ReportOptions | None = None, *,
                 progress: ProgressFn | None = None) -> str:
    """Run every view of a model on ``images`` and return one self-contained HTML page.

    Sections: model card (inputs, preprocessing and why, opset, IR, producer, parameters, a
    filterable layer table), predictions, filters of the first conv layers, feature maps (a
    layer picker, most active channels first), CAMs (methods side by side), backprop views;
    with ``options.data`` per-layer channel statistics and dead / saturated findings; with
    ``options.compare`` the drift table, plot and strip with the first divergent layer marked.

    Args:
        model: path, bytes or ``ModelProto`` (not modified).
        images: image paths, folders, PIL images (as ``Inspector.load_batch``).
        options: what to show (``ReportOptions``).
        progress: called after each section (unit ``section``).

    Returns:
        The HTML document; write it with ``save_report``.

    Raises:
        InputError: bad options, unreadable inputs, ``compare`` without ``data``;
        LayerNotFoundError, ModelError, ProviderError: as the views and audits they come from.
    """
    opts = options or ReportOptions()
    _check_options(opts)
    runs = _section_runs(opts)
    sections: list[page.Section] = []
    with Inspector(model, opts.provider, prep=opts.prep, labels=opts.labels,
                   max_batch=opts.batch_size) as inspector:
        run = _Run(model, inspector, images, inspector.load_batch(images).sources, opts)
        for done, (name, section_run) in enumerate(runs, start=1):
            sections.append(section_run(run))
            if progress is not None:
                progress(Progress(done, len(runs), "section", name))
    subtitle = f"{len(run.sources)} input(s): " + ", ".join(Path(s).name for s in run.sources)
    return page.render_report(f"featviz report: {model_name(model)}", sections,
                              subtitle=subtitle, image_format=opts.image_format)


def save_report(html: str, path: Path) -> Path:
    """Write the page atomically (a temp file renamed into place); return ``path``.

    Raises:
        InputError: the path cannot be written.
    """
    fileio.save_bytes(html.encode("utf-8"), Path(path))
    return Path(path)


def model_name(model: ModelSource) -> str:
    """Return a model's file name, or ``model`` for bytes and protos."""
    return Path(model).name if isinstance(model, str | Path) else "model"


def _check_options(opts: ReportOptions) -> None:
    if opts.compare is not None and opts.data is None:
        raise InputError("a comparison needs a dataset to run both models on, but data is None; "
                         "give data (an image, a folder, .npy/.npz or an MNIST IDX file)")
    if opts.image_format not in page.IMAGE_FORMATS:
        raise InputError(f"unknown image format {opts.image_format!r}; choose from "
                         f"{', '.join(page.IMAGE_FORMATS)}")
    unknown = [m for m in opts.backprop if m not in attribution_run.BACKPROP_METHODS]
    if unknown:
        raise InputError(f"unknown backprop view {', '.join(unknown)}; choose from "
                         f"{', '.join(attribution_run.BACKPROP_METHODS)}")
    for name, value in (("top_k", opts.top_k), ("top_channels", opts.top_channels)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")


def _section_runs(opts: ReportOptions) -> list[tuple[str, SectionRun]]:
    runs: list[tuple[str, SectionRun]] = [
        ("model card", _model_card), ("predictions", _predictions), ("filters", _filters),
        ("feature maps", _feature_maps)]
    runs += [(f"CAMs ({', '.join(opts.methods)})", _cams)] if opts.methods else []
    runs += [(f"backprop ({', '.join(opts.backprop)})", _backprop)] if opts.backprop else []
    runs += [("channel statistics", _stats)] if opts.data is not None else []
    runs += [("drift", _drift)] if opts.compare is not None else []
    return runs


# -- model card ---------------------------------------------------------------------------
def preprocessing_origin(run: _Run) -> str:
    """Say where the preprocessing came from: options, the model's metadata, or a default."""
    prep = run.options.prep
    given = prep is not None and any(
        getattr(prep, f) is not None for f in PrepOptions.__dataclass_fields__)
    if given and prep is not None and prep.preset:
        return f"given: preset {prep.preset!r}"
    if given:
        return "given explicitly (mean, std, scale, order, size or resize)"
    if preprocess.read_preprocessing(run.inspector.model) is not None:
        return "from the model's featviz.preprocess metadata"
    spec = run.inspector.spec
    return (f"assumed: the default for a {spec.dtype} {spec.channels}-channel input (no "
            "metadata, no preset); if the model was trained otherwise, give a preset such as "
            "caffe, torchvision or tf")


def _model_card(run: _Run) -> page.Section:
    summary = describe(run.inspector)
    spec, prep = summary["input"], summary["preprocessing"]
    facts = (
        ("model", model_name(run.model)),
        ("producer", summary["producer"] or "?"),
        ("opset / IR", f"{summary['opset']} / {summary['ir_version']}"),
        ("parameters", f"{summary['params']:,}"),
        ("input", f"{spec['name']}  {spec['dtype']}  {spec['layout']}  "
                  f"{shape_text(tuple(spec['shape']))}"),
        ("outputs", ", ".join(f"{o['name']} {o['dtype']} {shape_text(tuple(o['shape']))}"
                              for o in summary["outputs"])),
        ("preprocessing", f"preset {prep['preset']}, order {prep['channel_order']}, scale "
                          f"{prep['scale']:.6g}, mean {prep['mean']}, std {prep['std']}, "
                          f"resize {prep['resize']}"),
        ("preprocessing from", preprocessing_origin(run)),
        ("labels", f"{summary['labels']} class names" if summary["labels"] else "none"),
    )
    return page.Section("model", "Model card", (page.Facts(facts), _layer_table(run)))


def _layer_table(run: _Run) -> page.Table:
    model = run.inspector.model
    paths, layout = modules.node_modules(model), layouts.tensor_layouts(model)
    rows = tuple(
        (str(lay.index), lay.name, lay.op_type, paths.get(lay.name, "") or "",
         shape_text(lay.shape), layout.get(lay.output) or "",
         f"{lay.activation_op} -> {lay.activation}" if lay.activation else "",
         f"{lay.params:,}" if lay.params else "")
        for lay in run.inspector.info.layers)
    return page.Table(("#", "name", "op", "module", "shape", "layout", "activation", "params"),
                      rows, key="layers", filter=True)


# -- predictions, filters, feature maps -----------------------------------------------------
def _predictions(run: _Run) -> page.Section:
    predictions = run.inspector.predict(run.images, run.options.top_k)
    shown = run.inspector.load_batch(run.images).images
    cards: list[page.Block] = []
    for index, found in enumerate(predictions):
        rows = tuple((str(c.index), c.label or "", f"{c.score:.4f}") for c in found.top)
        note = " (softmax of logits)" if found.softmax_applied else ""
        figure = (page.Figure(shown[index], f"scores: {found.output}{note}", max_side=200),
                  ) if index < len(shown) else ()
        table = page.Table(("class", "label", "probability"), rows, key=f"pred-{index}")
        cards.append(page.Card(Path(found.source).name, (*figure, table)))
    return page.Section("predictions", f"Predictions (top {run.options.top_k})",
                        (page.Row(tuple(cards)),))


def _filters(run: _Run) -> page.Section:
    convs = run.inspector.info.conv_layers[:run.options.filter_layers]
    if not convs:
        return page.Section("filters", "Filters", (page.Text("the model has no conv layers"),))
    drawn = render_model_filters(run.inspector.model, [c.name for c in convs])
    figures = tuple(page.Figure(p.image, f"{c.name}: weight "
                                f"{'x'.join(map(str, drawn.arrays[c.name].shape))}", max_side=900)
                    for p, c in zip(drawn.pictures, convs, strict=True))
    return page.Section("filters", f"Filters of the first {len(convs)} conv layer(s)",
                        (page.Gallery(figures),))


def top_channels(maps: NDArray[np.generic], count: int) -> NDArray[np.int64]:
    """Return the indices of the ``count`` channels of ``(C, H, W)`` maps with the highest
    mean, highest first (ties: lower index first; NaN channels last)."""
    means = np.asarray(maps, np.float64).reshape(len(maps), -1).mean(axis=1)
    means = np.where(np.isnan(means), -np.inf, means)
    return np.argsort(-means, kind="stable")[:count].astype(np.int64)


def _feature_maps(run: _Run) -> page.Section:
    inspector = run.inspector
    tensors = inspector.layer_tensors(list(run.options.layers) or None, "act")
    batch = inspector.load_batch(run.images)
    arrays = inspector.capture(batch.array, tensors)
    panels = [page.Panel(_panel_label(run, t, arrays[t]), (page.Gallery(tuple(
        _map_figure(run, t, arrays[t][i], s) for i, s in enumerate(batch.sources))),))
              for t in tensors if arrays[t].ndim >= 3]
    if not panels:
        return page.Section("maps", "Feature maps",
                            (page.Text("none of the chosen layers has spatial maps"),))
    return page.Section("maps", "Feature maps", (
        page.Text(f"Each layer's {run.options.top_channels} most active channels (highest mean "
                  "activation for that input) first, each scaled to its own range.", "note"),
        page.Picker("map-picker", "layer", tuple(panels))))


def _panel_label(run: _Run, tensor: str, value: NDArray[np.generic]) -> str:
    info = run.inspector.info
    conv = next((c for c in info.conv_layers if c.activation == tensor != c.output), None)
    layer = run.inspector.layer(tensor)
    name = (f"{conv.name} after {conv.activation_op} [{tensor}]" if conv
            else layer.name if layer.name == tensor else f"{layer.name} [{tensor}]")
    return f"{name}  {shape_text(tuple(value.shape[1:]))}"


def _map_figure(run: _Run, tensor: str, value: NDArray[np.generic], source: str
                ) -> page.Figure:
    maps = np.asarray(value, np.float32).reshape((-1, *value.shape[-2:]))
    order = top_channels(maps, run.options.top_channels)
    grid = render.tile_grid(maps[order], render.GridOptions(
        cmap="viridis", colorbar=True, label_texts=tuple(str(int(c)) for c in order),
        title=f"{tensor}: top {len(order)} of {len(maps)} channels", min_tile=48))
    return page.Figure(grid, f"{Path(source).name}: channels {', '.join(map(str, order[:8]))}"
                       + ("..." if len(order) > 8 else ""), max_side=640)


# -- attribution --------------------------------------------------------------------------
def _cams(run: _Run) -> page.Section:
    reports = [attribution_run.cam(run.inspector, run.images,
                                   attribution_run.CamOptions(method=m, top_k=run.options.top_k),
                                   progress=None)  # the report has one bar for all sections
               for m in run.options.methods]
    blocks: list[page.Block] = []
    for index, source in enumerate(run.sources):
        figures = []
        for report in reports:
            for row in np.flatnonzero(report.image_index == index):
                figures.append(page.Figure(report.overlays[row], _cam_title(report, int(row)),
                                           max_side=320))
        blocks.append(page.Gallery(tuple(figures), Path(source).name))
    return page.Section("cams", "Class-activation maps", tuple(blocks))


def _cam_title(report: attribution_run.CamReport, row: int) -> str:
    target = int(report.targets[row])
    found = [c for c in report.top[int(report.image_index[row])] if c.index == target]
    label = (found[0].label if found and found[0].label else f"class {target}")
    score = f"p={found[0].score:.3f}" if found else "p=?"
    return f"{label} ({score}), {report.method} at {report.layer}"


def _backprop(run: _Run) -> page.Section:
    blocks: list[page.Block] = []
    drawn = {m: render_backprop(run.inspector, run.images, m) for m in run.options.backprop}
    for index, source in enumerate(run.sources):
        figures = tuple(page.Figure(d.pictures[index].image, f"{m} (top-1 class)", max_side=320)
                        for m, d in drawn.items())
        blocks.append(page.Gallery(figures, Path(source).name))
    return page.Section("backprop", "Backprop views", tuple(blocks))


# -- audits -------------------------------------------------------------------------------
def _stats(run: _Run) -> page.Section:
    opts = run.options
    assert opts.data is not None  # _section_runs adds this section only with data
    result = audit_stats.dataset_stats(run.model, opts.data, audit_stats.StatsOptions(
        provider=opts.provider, batch_size=opts.batch_size, prep=opts.prep), progress=None)
    rows, marked = [], []
    for index, lay in enumerate(result.layers):
        s = lay.stats
        rows.append((lay.tensor, lay.op, str(len(s.mean)), f"{float(np.nanmean(s.mean)):.4g}",
                     f"{float(np.nanmin(s.min)):.4g}", f"{float(np.nanmax(s.max)):.4g}",
                     f"{100 * float(np.nanmean(s.zeros)):.1f}", _channels(lay.dead),
                     _channels(lay.saturated), str(lay.nonfinite)))
        if lay.dead or lay.saturated or lay.nonfinite:
            marked.append(index)
    found = result.findings()
    summary = (f"{result.images} input(s): {found['dead']} dead channel(s), "
               f"{found['saturated']} saturated channel(s), {found['nonfinite']} layer(s) with "
               f"NaN/Inf" + (f" (first: {result.first_nonfinite})" if result.first_nonfinite
                             else ""))
    table = page.Table(("tensor", "op", "channels", "mean", "min", "max", "zeros %", "dead",
                        "saturated", "NaN/Inf"), tuple(rows), key="stats", filter=True,
                       highlight=tuple(marked))
    return page.Section("stats", "Channel statistics over the dataset", (
        page.Text(summary, "warn" if any(found.values()) else "note"), table,
        page.Figure(render_stats_plot(result), "per-layer channel statistics", max_side=1000)))


def _channels(indices: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(map(str, indices[:limit]))
    return shown + (f" (+{len(indices) - limit})" if len(indices) > limit else "")


def _drift(run: _Run) -> page.Section:
    opts = run.options
    assert opts.compare is not None and opts.data is not None  # see _section_runs
    result = audit_compare.compare_models(run.model, opts.compare, opts.data,
                                          audit_compare.CompareOptions(
                                              provider_a=opts.provider, provider_b=opts.provider,
                                              batch_size=opts.batch_size, prep=opts.prep),
                                          progress=None)
    rows = tuple((lay.layer, lay.a, lay.b, f"{lay.drift.cosine:.6f}", _db(lay.drift.snr_db),
                  f"{lay.drift.max_abs:.4g}", f"{lay.drift.rel_l2:.4g}", lay.broken or "ok")
                 for lay in result.layers)
    first = [i for i, lay in enumerate(result.layers) if lay.a == result.first_divergent][:1]
    strip = page.DriftStrip(tuple(page.StripCell(lay.layer, lay.drift.snr_db,
                                                 lay.broken is not None)
                                  for lay in result.layers if not lay.output),
                            _first_layer(result), high=max(60.0, 2 * result.thresholds.min_snr_db))
    facts = page.Facts((
        ("model A", f"{result.model_a.name} ({result.model_a.precision})"),
        ("model B", f"{result.model_b.name} ({result.model_b.precision})"),
        ("inputs", str(result.images)),
        ("thresholds", f"cosine >= {result.thresholds.min_cosine}, SNR >= "
                       f"{result.thresholds.min_snr_db} dB ({result.thresholds.kind})"),
        ("first divergent", result.first_divergent or "none: every layer within thresholds"),
        *((f"output {o.a}", f"top-1 agreement {o.agreement.top1_agreement:.4f}")
          for o in result.outputs),
    ))
    table = page.Table(("layer", "tensor A", "tensor B", "cosine", "SNR dB", "max abs",
                        "rel L2", "status"), rows, key="drift", filter=True,
                       highlight=tuple(first))
    return page.Section("drift", "Drift against the compared model", (
        facts, strip, table, page.Figure(render_compare_plot(result, "snr"), "SNR by layer",
                                         max_side=1000)))


def _first_layer(result: audit_compare.CompareResult) -> str | None:
    return next((lay.layer for lay in result.layers if lay.a == result.first_divergent), None)


def _db(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.2f}"


__all__ = ["ReportOptions", "build_report", "model_name", "preprocessing_origin", "save_report",
           "top_channels"]
