"""``dataset_stats``: per-channel statistics of a model's layers over a whole dataset, reduced on
the device, with dead / saturated / non-finite findings.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

import onnx_featviz.audit.metrics as audit
import onnx_featviz.graph.rewrite as rewrite
import onnx_featviz.inspector as inspection
import onnx_featviz.runtime as runtime
from onnx_featviz.audit.compare import _PASS_THROUGH, LAYER_SETS, RayOptions, check_engine
from onnx_featviz.errors import InputError
from onnx_featviz.graph import reductions
from onnx_featviz.inspector import Images, Inspector
from onnx_featviz.io import data as api_data
from onnx_featviz.render.progress import progress_for
from onnx_featviz.structs import ChannelStats, ModelInfo, Progress, ProgressFn, auto_progress

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StatsOptions:
    """What ``dataset_stats`` measures and how.

    ``layers``: ``"convs"`` (each conv layer's activation output, through BatchNorm / Q-DQ, or
    its own output when no activation follows: dead and saturated channels are defined after
    the activation, and the conv+activation fusion of onnxruntime stays intact), ``"all"``
    (every float activation, ``rewrite.all_tensors``), or node / tensor names (a conv node name
    means its activation output as for ``convs``; a tensor name means that tensor).
    ``saturation``: share of a channel's values at a Clip bound from which it is saturated.
    ``engine``: ``"local"`` or ``"ray"`` (then ``ray`` says where; the provider comes from
    ``ray.gpus_per_worker`` instead of ``provider``).
    """

    layers: str | Sequence[str] = "convs"
    provider: str = "auto"
    batch_size: int = 32
    prep: inspection.PrepOptions | None = None
    saturation: float = audit.SATURATION_FRACTION
    engine: str = "local"
    ray: RayOptions = RayOptions()


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


def dataset_stats(model: inspection.ModelSource, data: Path | str,
                  options: StatsOptions | None = None, *,
                  progress: ProgressFn | None = auto_progress) -> StatsResult:
    """Measure per-channel statistics of a model's layers over a whole dataset.

    Each batch runs once through the model with on-device reductions
    (``reductions.append_channel_stats``): only (N, C) statistics leave the device, so memory does
    not grow with the dataset. Batches are merged in float64 (shifted sums, Chan's parallel
    variance); batches whose sums are non-finite run once more to count NaN/Inf. A Ctrl-C while
    streaming returns what was merged, marked ``partial``.

    Args:
        model: path, bytes or ``ModelProto``.
        data: an image, a folder, a ``.npy``/``.npz`` file or an MNIST IDX file
            (``api_data.open_data``).
        options: layers, provider, batch size, preprocessing, saturation share.
        progress: called after each batch (unit ``image``); default: a progress bar in
            notebooks and terminals; None: no progress.

    Returns:
        ``StatsResult`` with per-layer statistics, dead / saturated channels and the first
        non-finite layer.

    Raises:
        InputError: DATA missing, empty or unreadable, a bad option, a model without conv
            layers for ``convs``; LayerNotFoundError: an unknown layer name (close matches
            listed); ModelError / ProviderError: as ``inspection.Inspector``.
    """
    opts = options or StatsOptions()
    _check_stats_options(opts)
    local = opts.engine == "local"  # the ray engine's driver only plans: its session is CPU
    with inspection.Inspector(model, opts.provider if local else "cpu", prep=opts.prep,
                       max_batch=opts.batch_size) as inspector, \
            progress_for(progress, "stats") as report:
        tensors = _stats_tensors(inspector.info, opts.layers)
        if local:
            stream = api_data.open_data(inspector, data, batch_size=opts.batch_size)
            merged, images, partial = _stream_stats(inspector, tensors, stream, report)
            skipped = tuple(stream.skipped)
            providers = tuple(inspector.session(tensors, stats=True).providers)
        else:
            merged, images, partial, skipped, providers = _ray_stats(
                inspector, tensors, data, opts, report)
        layers = _layers_stats(inspector, tensors, merged, opts.saturation)
    name = Path(model).name if isinstance(model, str | Path) else (
        inspector.model.graph.name or "model")
    first = audit.first_nonfinite([(lay.tensor, lay.stats) for lay in layers])
    return StatsResult(name, providers, layers, images, skipped, partial, first)


def batch_stats(inspectors: Sequence[inspection.Inspector], batch: NDArray[np.generic], *,
                tensors: tuple[str, ...]) -> dict[str, ChannelStats]:
    """Return one batch's per-channel statistics of ``tensors`` (every engine's step).

    Args:
        inspectors: the model's inspector (one).
        batch: (N, ...) model-ready rows.
        tensors: the tensors measured (``_stats_tensors``).
    """
    return image_stats(inspectors[0], batch, tensors)


def merge_batch_stats(merged: Mapping[str, ChannelStats], part: Mapping[str, ChannelStats]
                      ) -> dict[str, ChannelStats]:
    """Return ``merged`` followed by one more batch's statistics (a new dict)."""
    out = dict(merged)
    for tensor, stats in part.items():
        old = out.get(tensor)
        out[tensor] = stats if old is None else audit.merge_channel_stats(old, stats)
    return out


def _ray_stats(inspector: inspection.Inspector, tensors: Sequence[str], data: Path | str,
               opts: StatsOptions, progress: ProgressFn | None
               ) -> tuple[dict[str, ChannelStats], int, bool, tuple[tuple[str, str], ...],
                          tuple[str, ...]]:
    """``_stream_stats`` on Ray Data actors (``audit.engine_ray``), with the actors' providers."""
    from onnx_featviz.audit import engine_ray  # imports ray: only for this engine

    initial: dict[str, ChannelStats] = {}
    job = engine_ray.Job(step=functools.partial(batch_stats, tensors=tuple(tensors)),
                         sessions=functools.partial(_providers, tensors=tuple(tensors)),
                         fold=merge_batch_stats, initial=initial)
    run = engine_ray.run_job((inspector.model,), data, job, options=opts.ray,
                             batch_size=opts.batch_size, prep=opts.prep, progress=progress)
    return run.value, run.images, run.partial, run.skipped, run.providers[0] if run.providers \
        else ()


def _providers(inspectors: Sequence[inspection.Inspector], *, tensors: tuple[str, ...]
               ) -> tuple[tuple[str, ...], ...]:
    return (tuple(inspectors[0].session(tensors, stats=True).providers),)


def _check_stats_options(opts: StatsOptions) -> None:
    check_engine(opts.engine, opts.ray)
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


def _stream_stats(inspector: inspection.Inspector, tensors: Sequence[str],
                  stream: api_data.DataStream, progress: ProgressFn | None
                  ) -> tuple[dict[str, ChannelStats], int, bool]:
    """Merge every batch's statistics; stop early, keeping what was merged, on Ctrl-C."""
    # (statistics, inputs) replaced in one store per batch: a Ctrl-C never leaves a batch
    # merged into some layers only, or counted in ``images`` but not merged
    done: tuple[dict[str, ChannelStats], int] = ({}, 0)
    partial = False
    try:
        for part in stream:
            merged = merge_batch_stats(done[0], batch_stats((inspector,), part.batch,
                                                            tensors=tuple(tensors)))
            done = (merged, done[1] + len(part.batch))
            if progress is not None:
                progress(Progress(stream.done, stream.total, "image"))
    except KeyboardInterrupt:
        if done[1] == 0:
            raise
        partial = True
        log.warning("interrupted: the statistics cover the first %d inputs only", done[1])
    return done[0], done[1], partial


def _layers_stats(inspector: inspection.Inspector, tensors: Sequence[str],
                  merged: Mapping[str, ChannelStats], saturation: float
                  ) -> tuple[LayerStats, ...]:
    """Attach the producing op, Clip bounds and findings to each measured tensor."""
    producers = {o: lay for lay in inspector.info.layers for o in lay.outputs if o}
    bounds = reductions.clip_bounds(inspector.model, tensors)
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



def image_stats(inspector: Inspector, images: Images, layers: Sequence[str | int] | None = None, *,
          stage: str = "conv") -> dict[str, ChannelStats]:
    """Return per-channel statistics of ``layers`` over all inputs, reduced on the device.

    Each chunk of ``max_batch`` rows runs once with the reductions of
    ``reductions.append_channel_stats`` (only (N, C) statistics leave the device); a chunk
    whose sums come out non-finite runs once more to count its NaN/Inf
    (``reductions.append_nonfinite_counts``). Chunks are merged in float64
    (``audit.merge_channel_stats``); ``at_low`` / ``at_high`` are set for Clip outputs.

    Returns:
        Tensor name -> ``ChannelStats``, in the order of ``layer_tensors``.
    """
    batch = inspector.load_batch(images).array
    tensors = inspector.layer_tensors(layers, stage)
    session = inspector.session(tensors, stats=True)
    names = [n for n in session.output_names if n.startswith("featviz/stats/")]
    counts = ("nonfinite", tuple(tensors))
    low_zero = {t: b[0] == 0.0 for t, b in reductions.clip_bounds(inspector.model, tensors).items()}
    merged: dict[str, ChannelStats] = {}
    step = min(v for v in (inspector.max_batch, inspector.spec.batch, len(batch)) if v)
    for start in range(0, len(batch), step):
        feed = {inspector.spec.name: batch[start:start + step]}
        values = session.run(feed, names, split=False)
        if not all(np.isfinite(values[reductions.stat_output("sum", t)]).all() for t in tensors):
            nonfinite = inspector.cached(counts, lambda: runtime.Session(
                reductions.append_nonfinite_counts(inspector.model, tensors), inspector.provider))
            wanted = [reductions.stat_output(reductions.NONFINITE_STAT, t) for t in tensors]
            values.update(nonfinite.run(feed, wanted, split=False))
        for tensor in tensors:
            part = _batch_stats(values, tensor, low_zero[tensor])
            old = merged.get(tensor)
            merged[tensor] = part if old is None else audit.merge_channel_stats(old, part)
    return merged


def _batch_stats(values: Mapping[str, NDArray[np.generic]], tensor: str, low_zero: bool
                 ) -> ChannelStats:
    """``ChannelStats`` of one chunk from the session's (N, C) reductions of ``tensor``.

    ``low_zero``: the tensor is a Clip output with lower bound 0, whose ``at_low`` is ``zeros``.
    """
    stats = (*reductions.STAT_NAMES, *reductions.BOUND_STAT_NAMES, reductions.NONFINITE_STAT)
    reduced = {s: values[reductions.stat_output(s, tensor)] for s in stats
               if reductions.stat_output(s, tensor) in values}
    if low_zero:
        reduced["at_low"] = reduced["zeros"]
    return audit.batch_channel_stats(reduced)
