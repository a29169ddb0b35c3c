"""Deployment audit api: ``compare_models`` (layer drift between two models or providers) and
``dataset_stats`` (per-channel statistics over a dataset). Composes the modules; holds no maths.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import NDArray
from PIL import Image

import onnx_featviz.audit.metrics as audit
import onnx_featviz.graph.matching as matching
import onnx_featviz.graph.rewrite as rewrite
import onnx_featviz.io.files as fileio
import onnx_featviz.runtime as runtime
from onnx_featviz import api
from onnx_featviz.errors import InputError, LayerNotFoundError
from onnx_featviz.io import data as api_data
from onnx_featviz.structs import ChannelStats, ModelInfo, Progress, ProgressFn

log = logging.getLogger(__name__)

# == compare (owner: compare helper; keep other code outside this section) =====================
LAYER_SETS = ("convs", "all")
METRICS = ("cosine", "snr", "maxabs", "rel-l2")
_METRIC_FIELDS = {"cosine": "cosine", "snr": "snr_db", "maxabs": "max_abs", "rel-l2": "rel_l2"}
_METRIC_LABELS = {"cosine": "cosine similarity", "snr": "SNR (dB)", "maxabs": "max |a - b|",
                  "rel-l2": "relative L2 error"}


@dataclass(frozen=True, slots=True)
class CompareOptions:
    """What ``compare_models`` compares, where, and against which thresholds.

    ``layers``: ``"convs"`` (one tensor per conv layer of model A: its output, or its
    activation where model B fused the activation into the conv), ``"all"`` (every activation
    tensor of A, see ``rewrite.all_tensors``) or node / tensor names (or indices) of model A;
    ``provider_a`` / ``provider_b``: ``"auto"``, ``"cuda"`` or ``"cpu"`` per model;
    ``min_cosine`` / ``min_snr_db``: thresholds (None: the default for the two models'
    precisions, see ``audit.default_thresholds``); ``batch_size``: inputs per run;
    ``prep``: preprocessing overrides. Images are preprocessed once, with model A's recipe,
    and the same values are fed to both models (cast to B's float input dtype).
    """

    layers: str | tuple[str, ...] = "convs"
    provider_a: str = "auto"
    provider_b: str = "auto"
    min_cosine: float | None = None
    min_snr_db: float | None = None
    batch_size: int = 32
    prep: api.PrepOptions | None = None


@dataclass(frozen=True, slots=True)
class LayerDrift:
    """One compared tensor pair over all inputs.

    ``a``/``b``: tensor names in model A / B; ``layer``: A's layer (node) name; ``how``/``note``:
    how the pair was matched (``matching.MATCH_KINDS``); ``drift``: the metrics; ``broken``: why
    it breaks the thresholds (None: it passes); ``output``: the pair was added because it is a
    graph output that the layer selection did not include (a graph output that is one of the
    selected tensors, e.g. with ``layers="all"``, is a plain row with ``output`` False).
    """

    a: str
    b: str
    layer: str
    how: str
    note: str
    drift: audit.Drift
    broken: str | None
    output: bool = False


@dataclass(frozen=True, slots=True)
class OutputAgreement:
    """Top-1 agreement and probability change of one classifier output (A tensor, B tensor)."""

    a: str
    b: str
    agreement: audit.Agreement


@dataclass(frozen=True, slots=True)
class ModelSide:
    """One compared model: display name, precision class, execution providers in use."""

    name: str
    precision: str
    providers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CompareResult:
    """Result of ``compare_models``.

    ``layers`` are in model A's graph order (graph outputs last); ``first_divergent`` is the A
    tensor of the first of them that breaks ``thresholds`` (None: all pass); ``images``: inputs
    compared; ``skipped``: ``(source, reason)`` of unreadable inputs; ``partial``: the run was
    interrupted and covers only the first ``images`` inputs; ``notes``: known causes of drift
    that lie in the runtime, not the model (e.g. int8 kernels of a CPU without VNNI).
    """

    model_a: ModelSide
    model_b: ModelSide
    thresholds: audit.Thresholds
    layers: tuple[LayerDrift, ...]
    outputs: tuple[OutputAgreement, ...]
    unmatched: tuple[matching.Unmatched, ...]
    first_divergent: str | None
    images: int
    skipped: tuple[tuple[str, str], ...] = ()
    partial: bool = False
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """True when every compared tensor is within the thresholds."""
        return self.first_divergent is None


@dataclass(frozen=True, slots=True)
class _Row:
    pair: matching.TensorPair
    output: bool


@dataclass(frozen=True, slots=True)
class _Plan:
    """What to fetch from each model and how the tensors pair up."""

    rows: tuple[_Row, ...]
    scores: tuple[matching.TensorPair, ...]
    unmatched: tuple[matching.Unmatched, ...]
    tensors_a: tuple[str, ...]
    tensors_b: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _State:
    """Running sums while streaming: per pair, per classifier output, dropped pairs, inputs."""

    drift: tuple[audit.DriftSums, ...]
    agreement: tuple[audit.AgreementSums, ...]
    dropped: Mapping[int, str]
    images: int


@dataclass(frozen=True, slots=True)
class _Totals:
    """Accumulated sums after streaming the data."""

    drift: tuple[audit.DriftSums, ...]
    agreement: tuple[audit.AgreementSums, ...]
    dropped: Mapping[int, str]
    images: int
    skipped: tuple[tuple[str, str], ...]
    partial: bool


def compare_models(model_a: api.ModelSource, model_b: api.ModelSource, data: Path | str,
                   options: CompareOptions | None = None, *,
                   progress: ProgressFn | None = None) -> CompareResult:
    """Run two models on the same data and measure, layer by layer, how far B drifts from A.

    Tensors are paired by ``matching.match_models`` (by name, then by structure for QDQ,
    QLinearConv and float16 forms); B's float16 tensors are compared cast to float32 and its
    int8 tensors dequantized. Per pair, cosine, SNR, max abs and relative L2 error are
    accumulated over all inputs in float64 (``audit.add_drift``), so memory does not grow with
    the dataset; per classifier output, top-1 agreement and |delta prob|. A Ctrl-C while
    streaming returns what was accumulated, marked ``partial``.

    Args:
        model_a: the reference model (path, bytes or ``ModelProto``).
        model_b: the compared model; may be the same file run on another provider.
        data: an image, a folder, a ``.npy``/``.npz`` file or an MNIST IDX file
            (``api_data.open_data``).
        options: layers, providers, thresholds, batch size, preprocessing.
        progress: called after each batch (unit ``image``).

    Returns:
        ``CompareResult`` (``first_divergent`` names the first tensor over the thresholds).

    Raises:
        InputError: the models take different inputs, nothing could be paired, DATA is
            missing, empty or unreadable, a bad option; LayerNotFoundError: an unknown layer
            name (close matches listed); ModelError / ProviderError: as ``api.Inspector``.
    """
    opts = options or CompareOptions()
    _check_options(opts)
    with api.Inspector(model_a, opts.provider_a, prep=opts.prep,
                       max_batch=opts.batch_size) as ins_a, \
            api.Inspector(model_b, opts.provider_b, prep=opts.prep,
                          max_batch=opts.batch_size) as ins_b:
        check_same_inputs(ins_a, ins_b)
        plan = _plan(ins_a, ins_b, opts.layers)
        thresholds = _thresholds(ins_a.model, ins_b.model, opts)
        stream = api_data.open_data(ins_a, data, batch_size=opts.batch_size)
        totals = _accumulate(ins_a, ins_b, plan, stream, progress)
        sides = (_model_side(model_a, ins_a, plan.tensors_a, "model A"),
                 _model_side(model_b, ins_b, plan.tensors_b, "model B"))
        notes = tuple(note for tag, ins, side in (("A", ins_a, sides[0]), ("B", ins_b, sides[1]))
                      if (note := int8_kernel_note(tag, ins.model, side)))
    return _result(plan, totals, sides, thresholds, notes)


def int8_kernel_note(tag: str, model: onnx.ModelProto, side: ModelSide) -> str | None:
    """Return a note when ``model`` runs full-range int8 weights on a CPU without VNNI.

    There onnxruntime's u8 x s8 kernels saturate int16 pair sums (``runtime.cpu_has_vnni``,
    ``matching.int8_saturating_weights``): a known precision loss of the runtime on that CPU,
    fixed by quantizing with ``reduce_range=True`` or uint8 weights. None when it does not apply.
    """
    on_cpu = bool(side.providers) and side.providers[0] == "CPUExecutionProvider"
    if side.precision != "int8" or not on_cpu:
        return None
    if runtime.cpu_has_vnni() is not False:
        return None
    weights = matching.int8_saturating_weights(model)
    if not weights:
        return None
    shown = ", ".join(weights[:3]) + (f" and {len(weights) - 3} more" if len(weights) > 3 else "")
    return (f"model {tag} ({side.name}): {len(weights)} int8 weight tensor(s) use the full range "
            f"({shown}) and run on onnxruntime's u8 x s8 CPU kernels, which saturate int16 sums on "
            "this CPU (no VNNI): a known precision loss of the runtime here, not of the model; "
            "quantize with reduce_range=True or weight_type=QUInt8 to avoid it")


def check_same_inputs(ins_a: api.Inspector, ins_b: api.Inspector) -> None:
    """Refuse two models whose inputs differ (count, layout, channels, size, kind of dtype).

    Input names may differ; float32 vs float16 inputs are fine (values are cast).

    Raises:
        InputError: naming both inputs and what differs.
    """
    a, b = ins_a.spec, ins_b.spec
    problems = []
    if len(ins_a.info.inputs) != len(ins_b.info.inputs):
        problems.append(f"{len(ins_a.info.inputs)} vs {len(ins_b.info.inputs)} inputs")
    if a.layout != b.layout or a.channels != b.channels:
        problems.append(f"layout {a.layout}/{a.channels} channels vs "
                        f"{b.layout}/{b.channels} channels")
    for what, x, y in (("height", a.height, b.height), ("width", a.width, b.width)):
        if x is not None and y is not None and x != y:
            problems.append(f"{what} {x} vs {y}")
    kind_a, kind_b = np.dtype(a.dtype).kind, np.dtype(b.dtype).kind
    if a.dtype != b.dtype and not kind_a == kind_b == "f":
        problems.append(f"dtype {a.dtype} vs {b.dtype}")
    if problems:
        raise InputError(
            f"the models take different inputs: model A {a.name!r} {a.dtype} {list(a.shape)}, "
            f"model B {b.name!r} {b.dtype} {list(b.shape)} ({'; '.join(problems)}); compare "
            "two forms of one model (float16 or int8 conversion, another provider), which "
            "take the same input")


def _check_options(opts: CompareOptions) -> None:
    if opts.batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {opts.batch_size}")
    if opts.min_cosine is not None and not -1.0 <= opts.min_cosine <= 1.0:
        raise InputError(f"min_cosine must be in [-1, 1], got {opts.min_cosine}")
    if opts.min_snr_db is not None and math.isnan(opts.min_snr_db):
        raise InputError("min_snr_db is NaN; give a number of decibels, e.g. 30")


def _selection(info: ModelInfo, layers: str | Sequence[str]
               ) -> tuple[list[str] | None, list[str]]:
    """Resolve ``layers`` to ``(conv layer names or None for all, tensors)`` of model A."""
    names = [layers] if isinstance(layers, str) else list(layers)
    if names == ["convs"]:
        return None, []
    if names == ["all"]:
        return [], rewrite.all_tensors(info)
    if not names or any(n in LAYER_SETS for n in names):
        raise InputError(f"layers must be 'convs', 'all' or layer / tensor names, got {names}")
    convs: list[str] = []
    tensors: list[str] = []
    for name in names:
        try:
            layer = info.layer(name)
        except LayerNotFoundError as err:
            raise LayerNotFoundError(f"model A: {err}") from err
        if not layer.exposable:
            raise InputError(f"layer {layer.name!r} of model A cannot be compared: "
                             f"{layer.reason}; choose a layer of the main graph")
        if layer.is_conv and name != layer.activation:
            convs.append(layer.name)
        else:
            tensors.append(name if name in layer.outputs else layer.output)
    return convs, tensors


def _plan(ins_a: api.Inspector, ins_b: api.Inspector, layers: str | Sequence[str]) -> _Plan:
    convs, tensors = _selection(ins_a.info, layers)
    found = matching.match_models(ins_a.model, ins_b.model, conv_layers=convs, tensors=tensors,
                                  info_a=ins_a.info, info_b=ins_b.info)
    paired = {p.a for p in found.pairs}
    rows = [_Row(p, False) for p in found.pairs]
    rows += [_Row(p, True) for p in found.outputs if p.a not in paired]
    if not rows:
        raise InputError("no tensor of model A could be paired with model B: "
                         + "; ".join(f"{u.tensor}: {u.reason}" for u in found.unmatched[:3])
                         + "; name tensors that exist in both models")
    return _Plan(
        rows=tuple(rows),
        scores=found.outputs,
        unmatched=found.unmatched,
        tensors_a=tuple(dict.fromkeys([r.pair.a for r in rows] + [p.a for p in found.outputs])),
        tensors_b=tuple(dict.fromkeys([r.pair.b for r in rows] + [p.b for p in found.outputs])),
    )


def _thresholds(model_a: onnx.ModelProto, model_b: onnx.ModelProto,
                opts: CompareOptions) -> audit.Thresholds:
    base = audit.default_thresholds(matching.model_precision(model_a),
                                    matching.model_precision(model_b))
    if opts.min_cosine is None and opts.min_snr_db is None:
        return base
    return audit.Thresholds(
        base.min_cosine if opts.min_cosine is None else opts.min_cosine,
        base.min_snr_db if opts.min_snr_db is None else opts.min_snr_db,
        f"{base.kind}+custom")


def _accumulate(ins_a: api.Inspector, ins_b: api.Inspector, plan: _Plan,
                stream: api_data.DataStream, progress: ProgressFn | None) -> _Totals:
    """Run both models batch by batch and add every pair to its running sums."""
    state = _State(tuple(audit.DriftSums() for _ in plan.rows),
                   tuple(audit.AgreementSums() for _ in plan.scores), {}, 0)
    partial = False
    try:
        for part in stream:
            values_a = ins_a.capture(part.batch, plan.tensors_a)
            values_b = ins_b.capture(_as_input(part.batch, ins_b.spec.dtype), plan.tensors_b)
            # one store per batch: a Ctrl-C never leaves a batch half added
            state = _add_batch(plan, values_a, values_b, state, len(part.batch))
            if progress is not None:
                progress(Progress(stream.done, stream.total, "image"))
    except KeyboardInterrupt:
        if state.images == 0:
            raise
        partial = True
        log.warning("interrupted: the comparison covers the first %d inputs only", state.images)
    return _Totals(state.drift, state.agreement, state.dropped, state.images,
                   tuple(stream.skipped), partial)


def _as_input(batch: NDArray[np.generic], dtype: str) -> NDArray[np.generic]:
    return batch if batch.dtype == np.dtype(dtype) else batch.astype(dtype)


def _add_batch(plan: _Plan, values_a: Mapping[str, NDArray[np.generic]],
               values_b: Mapping[str, NDArray[np.generic]], state: _State,
               rows: int) -> _State:
    """Return the sums with one more batch added (a pair whose shapes differ is dropped)."""
    dropped = dict(state.dropped)
    drift = list(state.drift)
    for index, row in enumerate(plan.rows):
        a, b = values_a[row.pair.a], values_b[row.pair.b]
        if index in dropped:
            continue
        if a.shape != b.shape:
            dropped[index] = (f"the tensors differ in shape at run time (A {a.shape}, "
                              f"B {b.shape}); they do not hold the same values")
            continue
        drift[index] = audit.add_drift(drift[index], a, b)
    agreement = list(state.agreement)
    for index, pair in enumerate(plan.scores):
        scores_a, scores_b = _scores(values_a[pair.a]), _scores(values_b[pair.b])
        if scores_a is not None and scores_b is not None and scores_a.shape == scores_b.shape:
            agreement[index] = audit.add_agreement(agreement[index], scores_a, scores_b)
    return _State(tuple(drift), tuple(agreement), dropped, state.images + rows)


def _scores(value: NDArray[np.generic]) -> NDArray[np.generic] | None:
    """(N, K) class scores of an (N, K[, 1, 1]) output with K >= 2; None for anything else."""
    if value.ndim < 2 or value.shape[1] < 2 or any(d != 1 for d in value.shape[2:]):
        return None
    return value.reshape(value.shape[0], value.shape[1])


def _model_side(source: api.ModelSource, inspector: api.Inspector, tensors: Sequence[str],
                fallback: str) -> ModelSide:
    name = Path(source).name if isinstance(source, str | Path) else (
        inspector.model.graph.name or fallback)
    providers = inspector.session(tuple(tensors)).providers
    return ModelSide(name, matching.model_precision(inspector.model), tuple(providers))


def _result(plan: _Plan, totals: _Totals, sides: tuple[ModelSide, ModelSide],
            thresholds: audit.Thresholds, notes: tuple[str, ...] = ()) -> CompareResult:
    layers: list[LayerDrift] = []
    unmatched = list(plan.unmatched)
    for index, row in enumerate(plan.rows):
        pair = row.pair
        if index in totals.dropped:
            unmatched.append(matching.Unmatched("a", pair.a, pair.layer, totals.dropped[index]))
            continue
        drift = audit.drift_metrics(totals.drift[index])
        layers.append(LayerDrift(pair.a, pair.b, pair.layer, pair.how, pair.note, drift,
                                 audit.check_drift(drift, thresholds), row.output))
    outputs = tuple(OutputAgreement(p.a, p.b, audit.agreement_metrics(s))
                    for p, s in zip(plan.scores, totals.agreement, strict=True) if s.count)
    first = next((lay.a for lay in layers if lay.broken is not None), None)
    return CompareResult(sides[0], sides[1], thresholds, tuple(layers), outputs,
                         tuple(unmatched), first, totals.images, totals.skipped, totals.partial,
                         notes)


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


def _short(name: str, width: int = 32) -> str:
    return name if len(name) <= width else name[: width // 2 - 2] + "..." + name[-(width // 2 - 1):]


def _fmt(value: float, spec: str) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, spec)


def _verdict(result: CompareResult) -> str:
    if result.passed:
        return (f"PASS: all {len(result.layers)} compared tensors are within the thresholds"
                + (" (partial run)" if result.partial else ""))
    first = next(lay for lay in result.layers if lay.a == result.first_divergent)
    broken = sum(lay.broken is not None for lay in result.layers)
    return (f"FAIL: first divergent tensor {first.a} (layer {first.layer}): {first.broken}; "
            f"{broken} of {len(result.layers)} tensors over the thresholds")


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
# == end of compare ============================================================================


# == stats (owner: stats helper; keep other code outside this section) ========================
#: What ``StatsResult.findings`` reports and ``--fail-on`` can gate on.
FINDINGS = ("dead", "saturated", "nonfinite")
#: Ops looked through to find the op that really made a tensor (QDQ wrappers, casts).
_PASS_THROUGH = frozenset({"DequantizeLinear", "QuantizeLinear", "Identity", "Cast"})


@dataclass(frozen=True, slots=True)
class StatsOptions:
    """What ``dataset_stats`` measures and how.

    ``layers``: ``"convs"`` (each conv layer's activation output, through BatchNorm / Q-DQ, or
    its own output when no activation follows: dead and saturated channels are defined after
    the activation, and the conv+activation fusion of onnxruntime stays intact), ``"all"``
    (every float activation, ``rewrite.all_tensors``), or node / tensor names (a conv node name
    means its activation output as for ``convs``; a tensor name means that tensor).
    ``saturation``: share of a channel's values at a Clip bound from which it is saturated.
    """

    layers: str | Sequence[str] = "convs"
    provider: str = "auto"
    batch_size: int = 32
    prep: api.PrepOptions | None = None
    saturation: float = audit.SATURATION_FRACTION


@dataclass(frozen=True, slots=True)
class LayerStats:
    """Statistics and findings of one tensor over the dataset.

    Attributes:
        tensor: the tensor measured; layer: the node that makes it; op: the op that made its
            values (looking through Q/DQ, Identity, Cast), e.g. ``Relu`` or ``Clip``.
        stats: per-channel ``ChannelStats`` (float64 arrays, shape (C,)).
        bounds: a Clip producer's constant (lower, upper) bounds, else (None, None).
        dead: channels never positive after a ReLU-family op; saturated: channels at a Clip
            bound for more than the saturation share of their values.
    """

    tensor: str
    layer: str
    op: str
    stats: ChannelStats
    bounds: tuple[float | None, float | None]
    dead: tuple[int, ...]
    saturated: tuple[int, ...]

    @property
    def nonfinite(self) -> int:
        """NaN/Inf values in the tensor over the dataset."""
        return int(self.stats.nonfinite.sum())


@dataclass(frozen=True, slots=True)
class StatsResult:
    """Result of ``dataset_stats``.

    Attributes:
        model: the model's file name (or graph name); providers: onnxruntime's providers.
        layers: per tensor, in graph order.
        images: inputs measured; skipped: ``(source, reason)`` per unreadable input;
        partial: True when interrupted (Ctrl-C): the statistics cover the first ``images``.
        first_nonfinite: the first tensor (graph order) holding NaN/Inf, or None.
    """

    model: str
    providers: tuple[str, ...]
    layers: tuple[LayerStats, ...]
    images: int
    skipped: tuple[tuple[str, str], ...]
    partial: bool
    first_nonfinite: str | None

    def findings(self) -> dict[str, int]:
        """Count per kind of ``FINDINGS``: dead channels, saturated channels, NaN/Inf layers."""
        return {"dead": sum(len(lay.dead) for lay in self.layers),
                "saturated": sum(len(lay.saturated) for lay in self.layers),
                "nonfinite": sum(lay.nonfinite > 0 for lay in self.layers)}


def dataset_stats(model: api.ModelSource, data: Path | str, options: StatsOptions | None = None,
                  *, progress: ProgressFn | None = None) -> StatsResult:
    """Measure per-channel statistics of a model's layers over a whole dataset.

    Each batch runs once through the model with on-device reductions
    (``rewrite.append_channel_stats``): only (N, C) statistics leave the device, so memory does
    not grow with the dataset. Batches are merged in float64 (shifted sums, Chan's parallel
    variance); batches whose sums are non-finite run once more to count NaN/Inf. A Ctrl-C while
    streaming returns what was merged, marked ``partial``.

    Args:
        model: path, bytes or ``ModelProto``.
        data: an image, a folder, a ``.npy``/``.npz`` file or an MNIST IDX file
            (``api_data.open_data``).
        options: layers, provider, batch size, preprocessing, saturation share.
        progress: called after each batch (unit ``image``).

    Returns:
        ``StatsResult`` with per-layer statistics, dead / saturated channels and the first
        non-finite layer.

    Raises:
        InputError: DATA missing, empty or unreadable, a bad option, a model without conv
            layers for ``convs``; LayerNotFoundError: an unknown layer name (close matches
            listed); ModelError / ProviderError: as ``api.Inspector``.
    """
    opts = options or StatsOptions()
    _check_stats_options(opts)
    with api.Inspector(model, opts.provider, prep=opts.prep,
                       max_batch=opts.batch_size) as inspector:
        tensors = _stats_tensors(inspector.info, opts.layers)
        stream = api_data.open_data(inspector, data, batch_size=opts.batch_size)
        merged, images, partial = _stream_stats(inspector, tensors, stream, progress)
        providers = tuple(inspector.session(tensors, stats=True).providers)
        layers = _layers_stats(inspector, tensors, merged, opts.saturation)
    name = Path(model).name if isinstance(model, str | Path) else (
        inspector.model.graph.name or "model")
    first = audit.first_nonfinite([(lay.tensor, lay.stats) for lay in layers])
    return StatsResult(name, providers, layers, images, tuple(stream.skipped), partial, first)


def _check_stats_options(opts: StatsOptions) -> None:
    if opts.batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {opts.batch_size}")
    if not 0.0 < opts.saturation <= 1.0:
        raise InputError(f"saturation must be a share in (0, 1], got {opts.saturation}")


def _stats_tensors(info: ModelInfo, layers: str | Sequence[str]) -> list[str]:
    """Resolve ``layers`` to tensors in graph order (see ``StatsOptions``)."""
    names = [layers] if isinstance(layers, str) else list(layers)
    if names == ["convs"]:
        tensors = rewrite.conv_tensors(info, "act")
        if not tensors:
            raise InputError("the model has no conv layers; use layers 'all' or name layers "
                             "(all names are in ModelInfo.layers)")
        return tensors
    if names == ["all"]:
        return rewrite.all_tensors(info)
    if not names or any(n in LAYER_SETS for n in names):
        raise InputError(f"layers must be 'convs', 'all' or layer / tensor names, got {names}")
    order = {o: lay.index for lay in info.layers for o in lay.outputs if o}
    picked: list[str] = []
    for name in names:
        layer = info.layer(name)
        if not layer.exposable:
            raise InputError(f"layer {layer.name!r} cannot be measured: {layer.reason}; "
                             "choose a layer of the main graph")
        if name in layer.outputs:
            picked.append(name)
        else:
            picked.append((layer.activation or layer.output) if layer.is_conv else layer.output)
    return sorted(dict.fromkeys(picked), key=lambda t: order.get(t, -1))


def _stream_stats(inspector: api.Inspector, tensors: Sequence[str],
                  stream: api_data.DataStream, progress: ProgressFn | None
                  ) -> tuple[dict[str, ChannelStats], int, bool]:
    """Merge every batch's statistics; stop early, keeping what was merged, on Ctrl-C."""
    # (statistics, inputs) replaced in one store per batch: a Ctrl-C never leaves a batch
    # merged into some layers only, or counted in ``images`` but not merged
    done: tuple[dict[str, ChannelStats], int] = ({}, 0)
    partial = False
    try:
        for part in stream:
            merged = dict(done[0])
            for tensor, stats in inspector.stats(part.batch, tensors).items():
                old = merged.get(tensor)
                merged[tensor] = stats if old is None else audit.merge_channel_stats(old, stats)
            done = (merged, done[1] + len(part.batch))
            if progress is not None:
                progress(Progress(stream.done, stream.total, "image"))
    except KeyboardInterrupt:
        if done[1] == 0:
            raise
        partial = True
        log.warning("interrupted: the statistics cover the first %d inputs only", done[1])
    return done[0], done[1], partial


def _layers_stats(inspector: api.Inspector, tensors: Sequence[str],
                  merged: Mapping[str, ChannelStats], saturation: float
                  ) -> tuple[LayerStats, ...]:
    """Attach the producing op, Clip bounds and findings to each measured tensor."""
    producers = {o: lay for lay in inspector.info.layers for o in lay.outputs if o}
    bounds = rewrite.clip_bounds(inspector.model, tensors)
    found = []
    for tensor in (t for t in tensors if t in merged):
        layer = source = producers[tensor]
        while (source.op_type in _PASS_THROUGH and source.inputs
               and source.inputs[0] in producers):
            source = producers[source.inputs[0]]
        stats, (low, high) = merged[tensor], bounds[tensor]
        found.append(LayerStats(
            tensor=tensor, layer=layer.name, op=source.op_type, stats=stats,
            bounds=(low, high), dead=audit.dead_channels(stats, source.op_type),
            saturated=audit.saturated_channels(stats, low=low, high=high,
                                               fraction=saturation)))
    return tuple(found)


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
# == end of stats ==============================================================================
