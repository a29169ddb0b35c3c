"""``compare_models``: run two forms of one network on the same data and measure, layer by layer,
how far B drifts from A (pairs from ``graph.matching``, sums from ``audit.metrics``).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

import onnx_featviz.audit.metrics as audit
import onnx_featviz.graph.matching as matching
import onnx_featviz.graph.rewrite as rewrite
import onnx_featviz.inspector as inspection
import onnx_featviz.runtime as runtime
from onnx_featviz.errors import FeatvizError, InputError, LayerNotFoundError
from onnx_featviz.io import data as api_data
from onnx_featviz.render.progress import progress_for
from onnx_featviz.structs import ModelInfo, Progress, ProgressFn, auto_progress

log = logging.getLogger(__name__)


# == compare (owner: compare helper; keep other code outside this section) =====================
LAYER_SETS = ("convs", "all")


METRICS = ("cosine", "snr", "maxabs", "rel-l2")


_METRIC_FIELDS = {"cosine": "cosine", "snr": "snr_db", "maxabs": "max_abs", "rel-l2": "rel_l2"}

#: Where ``compare`` and ``stats`` run: ``local`` (this process) or ``ray`` (Ray Data actors).
ENGINES = ("local", "ray")


@dataclass(frozen=True, slots=True)
class RayOptions:
    """Where and how the ``ray`` engine runs (``audit.engine_ray``).

    ``address``: a running Ray cluster (``"auto"``, ``"ray://head:10001"``); None starts a
    local one (or uses the one this process already started). ``workers``: actors, each with
    its own onnxruntime session(s) and one CPU. ``gpus_per_worker``: GPUs per actor; above 0
    the sessions run on CUDA (Ray places the actors on GPU nodes), at 0 on CPU.
    ``retries``: restarts of an actor that died and retries of the range it was on.
    ``filesystem``: a ``pyarrow.fs.FileSystem`` holding DATA (an image file or folder given
    as a path on it); None: DATA is a local path or a URI (``file://``, ``s3://``).
    """

    address: str | None = None
    workers: int = 2
    gpus_per_worker: float = 0.0
    retries: int = 3
    filesystem: Any = None


def check_engine(engine: str, ray: RayOptions) -> None:
    """Refuse an unknown engine or impossible Ray settings.

    Raises:
        InputError: naming the value and the valid choices.
    """
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if ray.workers < 1:
        raise InputError(f"ray workers must be at least 1, got {ray.workers}")
    if ray.gpus_per_worker < 0 or ray.retries < 0:
        raise InputError(f"gpus_per_worker and retries must be >= 0, got "
                         f"{ray.gpus_per_worker} and {ray.retries}")


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
    ``engine``: ``"local"`` or ``"ray"`` (then ``ray`` says where; the providers come from
    ``ray.gpus_per_worker`` instead of ``provider_a`` / ``provider_b``).
    """

    layers: str | tuple[str, ...] = "convs"
    provider_a: str = "auto"
    provider_b: str = "auto"
    min_cosine: float | None = None
    min_snr_db: float | None = None
    batch_size: int = 32
    prep: inspection.PrepOptions | None = None
    engine: str = "local"
    ray: RayOptions = RayOptions()


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
        """True when at least one tensor was compared and all are within the thresholds
        (zero compared tensors fail: a CI gate must not pass on nothing)."""
        return self.first_divergent is None and bool(self.layers)


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


def compare_models(model_a: inspection.ModelSource, model_b: inspection.ModelSource,
                   data: Path | str, options: CompareOptions | None = None, *,
                   progress: ProgressFn | None = auto_progress) -> CompareResult:
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
        progress: called after each batch (unit ``image``); default: a progress bar in
            notebooks and terminals; None: no progress.

    Returns:
        ``CompareResult`` (``first_divergent`` names the first tensor over the thresholds).

    Raises:
        InputError: the models take different inputs, nothing could be paired, DATA is
            missing, empty or unreadable, a bad option; LayerNotFoundError: an unknown layer
            name (close matches listed); ModelError / ProviderError: as ``inspection.Inspector``.
    """
    opts = options or CompareOptions()
    _check_options(opts)
    local = opts.engine == "local"  # the ray engine's driver only plans: its sessions are CPU
    with _open_side("A", model_a, opts.provider_a if local else "cpu", opts) as ins_a, \
            _open_side("B", model_b, opts.provider_b if local else "cpu", opts) as ins_b, \
            progress_for(progress, "compare") as report:
        check_same_inputs(ins_a, ins_b)
        plan = _plan(ins_a, ins_b, opts.layers)
        thresholds = _thresholds(ins_a.model, ins_b.model, opts)
        if local:
            stream = api_data.open_data(ins_a, data, batch_size=opts.batch_size)
            totals, providers = _accumulate(ins_a, ins_b, plan, stream, report), None
        else:
            totals, providers = _accumulate_ray(ins_a, ins_b, plan, data, opts, report)
        sides = (_model_side(model_a, ins_a, plan.tensors_a, "model A", providers, 0),
                 _model_side(model_b, ins_b, plan.tensors_b, "model B", providers, 1))
        notes = tuple(note for tag, ins, side in (("A", ins_a, sides[0]), ("B", ins_b, sides[1]))
                      if (note := int8_kernel_note(tag, ins.model, side)))
    return _result(plan, totals, sides, thresholds, notes)


def _open_side(tag: str, model: inspection.ModelSource, provider: str, opts: CompareOptions
               ) -> inspection.Inspector:
    """Open model ``tag`` (A or B); its errors say which model failed."""
    where = f"model {tag} ({Path(model).name})" if isinstance(model, str | Path) else f"model {tag}"
    try:
        return inspection.Inspector(model, provider, prep=opts.prep, max_batch=opts.batch_size,
                                    name=where)
    except FeatvizError as err:
        raise (err if where in str(err) else type(err)(f"{where}: {err}")) from err


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


def check_same_inputs(ins_a: inspection.Inspector, ins_b: inspection.Inspector) -> None:
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
    check_engine(opts.engine, opts.ray)
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


def _plan(ins_a: inspection.Inspector, ins_b: inspection.Inspector,
          layers: str | Sequence[str]) -> _Plan:
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


def _accumulate(ins_a: inspection.Inspector, ins_b: inspection.Inspector, plan: _Plan,
                stream: api_data.DataStream, progress: ProgressFn | None) -> _Totals:
    """Run both models batch by batch and add every pair to its running sums."""
    state = _empty_state(plan)
    partial = False
    try:
        for part in stream:
            # one store per batch: a Ctrl-C never leaves a batch half added
            state = merge_batch_sums(state, batch_sums((ins_a, ins_b), part.batch, plan=plan))
            if progress is not None:
                progress(Progress(stream.done, stream.total, "image"))
    except KeyboardInterrupt:
        if state.images == 0:
            raise
        partial = True
        log.warning("interrupted: the comparison covers the first %d inputs only", state.images)
    return _Totals(state.drift, state.agreement, state.dropped, state.images,
                   tuple(stream.skipped), partial)


def _accumulate_ray(ins_a: inspection.Inspector, ins_b: inspection.Inspector, plan: _Plan,
                    data: Path | str, opts: CompareOptions, progress: ProgressFn | None
                    ) -> tuple[_Totals, tuple[tuple[str, ...], ...]]:
    """``_accumulate`` on Ray Data actors (``audit.engine_ray``), with the actors' providers."""
    from onnx_featviz.audit import engine_ray  # imports ray: only for this engine

    job = engine_ray.Job(step=functools.partial(batch_sums, plan=plan),
                         sessions=functools.partial(_providers, plan=plan),
                         fold=merge_batch_sums, initial=_empty_state(plan))
    run = engine_ray.run_job((ins_a.model, ins_b.model), data, job, options=opts.ray,
                             batch_size=opts.batch_size, prep=opts.prep, progress=progress)
    state = run.value
    return _Totals(state.drift, state.agreement, state.dropped, state.images, run.skipped,
                   run.partial), run.providers


def _empty_state(plan: _Plan) -> _State:
    return _State(tuple(audit.DriftSums() for _ in plan.rows),
                  tuple(audit.AgreementSums() for _ in plan.scores), {}, 0)


def batch_sums(inspectors: Sequence[inspection.Inspector], batch: NDArray[np.generic], *,
               plan: _Plan) -> _State:
    """Run one batch through both models and return its sums alone (every engine's step).

    Args:
        inspectors: model A's and model B's inspectors.
        batch: (N, ...) model-ready rows of A's input (cast to B's float dtype for B).
        plan: the tensor pairs (``_plan``).

    Returns:
        The batch's drift and agreement sums, pairs dropped for a shape mismatch, N.
    """
    ins_a, ins_b = inspectors
    values_a = ins_a.capture(batch, plan.tensors_a)
    values_b = ins_b.capture(_as_input(batch, ins_b.spec.dtype), plan.tensors_b)
    return _add_batch(plan, values_a, values_b, _empty_state(plan), len(batch))


def merge_batch_sums(state: _State, part: _State) -> _State:
    """Return ``state`` followed by one more batch's sums (a pair dropped earlier stays so)."""
    dropped = {**part.dropped, **state.dropped}
    return _State(tuple(audit.merge_drift(a, b) for a, b in zip(state.drift, part.drift,
                                                                 strict=True)),
                  tuple(audit.merge_agreement(a, b)
                        for a, b in zip(state.agreement, part.agreement, strict=True)),
                  dropped, state.images + part.images)


def _providers(inspectors: Sequence[inspection.Inspector], *, plan: _Plan
               ) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(ins.session(tensors).providers)
                 for ins, tensors in zip(inspectors, (plan.tensors_a, plan.tensors_b),
                                         strict=True))


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


def _model_side(source: inspection.ModelSource, inspector: inspection.Inspector,
                tensors: Sequence[str], fallback: str,
                providers: tuple[tuple[str, ...], ...] | None = None,
                index: int = 0) -> ModelSide:
    """Name, precision and providers of one model (``providers``: the ray engine's actors')."""
    name = Path(source).name if isinstance(source, str | Path) else (
        inspector.model.graph.name or fallback)
    if providers is None:
        used = tuple(inspector.session(tuple(tensors)).providers)
    else:
        used = providers[index] if providers else ()
    return ModelSide(name, matching.model_precision(inspector.model), used)


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


# == stats (owner: stats helper; keep other code outside this section) ========================
#: What ``StatsResult.findings`` reports and ``--fail-on`` can gate on.
FINDINGS = ("dead", "saturated", "nonfinite")


#: Ops looked through to find the op that really made a tensor (QDQ wrappers, casts).
_PASS_THROUGH = frozenset({"DequantizeLinear", "QuantizeLinear", "Identity", "Cast"})

