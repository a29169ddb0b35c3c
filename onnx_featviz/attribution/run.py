"""CAM and backprop runs: forward and gradient sessions on an ``Inspector``, targets, and the
call into the pure maths of ``attribution.methods``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from PIL import Image

import onnx_featviz.attribution.methods as cams
import onnx_featviz.autodiff as autodiff
import onnx_featviz.graph.rewrite as rewrite
import onnx_featviz.runtime as runtime
from onnx_featviz.attribution import maps as cam_maps
from onnx_featviz.attribution import perturbation as cam_perturbation
from onnx_featviz.attribution.detection import Detection
from onnx_featviz.attribution.layers import (
    _class_scores,
    _score_exposure,
    _scores,
    cam_layer,
    score_tensor,
)
from onnx_featviz.attribution.seeds import TargetSpec
from onnx_featviz.attribution.tokens import TokenTransform
from onnx_featviz.errors import InputError, ModelError
from onnx_featviz.graph import masking
from onnx_featviz.inspector import (
    Batch,
    Images,
    Inspector,
    as_probabilities,
    exposed_name,
    prediction,
)
from onnx_featviz.io import geometry
from onnx_featviz.render import compose, figures
from onnx_featviz.render.progress import progress_for
from onnx_featviz.structs import (
    ClassScore,
    Progress,
    ProgressFn,
    auto_progress,
)

logger = logging.getLogger(__name__)


BACKPROP_METHODS = ("saliency", "guided", "guided-gradcam")


#: Window, stride and fill of the occlusion method (``CamOptions.occlusion``).
OcclusionOptions = cam_perturbation.OcclusionOptions


@dataclass(frozen=True, slots=True)
class CamOptions:
    """What ``Inspector.cam`` computes.

    ``method``: a ``cams.METHODS`` name or alias; ``layer``: layer name, tensor or index (None:
    the last conv layer with spatial size > 1); ``target``: class index or label (None: top-1);
    ``top_k``: classes listed per image in ``CamReport.top`` (None: 5); ``explain_top``: one
    CAM for each of every image's ``explain_top`` best classes (only without ``target``);
    ``score``: the layer or tensor holding one score per class (None: the pre-softmax logits
    when the graph ends in Softmax, else output 0); ``alpha``/``cmap``: overlay blending;
    ``batch_size``: rows per forward pass of Score-CAM, Ablation-CAM and occlusion;
    ``overlays``: False skips drawing ``CamReport.overlays`` (arrays only); ``occlusion``: the
    occlusion method's window, stride and fill (``cam.OcclusionOptions``; None: its defaults);
    ``whole_image``: draw the overlays on each whole picture (the part the model did not see
    darkened) instead of on the resized and centre-cropped model input;
    ``layers``: several layers (overrides ``layer``): one map per layer plus the fused map
    (each layer's [0, 1] heatmap averaged, then rescaled: LayerCAM across scales);
    ``goal``: a target beyond a class logit (segmentation region, detection, tensor element,
    extra model inputs; ``seeds.TargetSpec``), served by ``target_run.cam``.
    """

    method: str = "grad_cam"
    layer: str | int | None = None
    target: int | str | None = None
    top_k: int | None = None
    explain_top: int = 1
    score: str | int | None = None
    alpha: float = 0.5
    cmap: str = "jet"
    batch_size: int = 32
    overlays: bool = True
    occlusion: cam_perturbation.OcclusionOptions | None = None
    whole_image: bool = False
    layers: tuple[str | int, ...] = ()
    goal: TargetSpec | None = None


@dataclass(frozen=True, slots=True)
class CamReport:
    """Result of ``Inspector.cam``.

    Attributes:
        method: the registry name used; layer: the tensor the CAM was taken at; score_tensor:
            the tensor targets are scored on (pre-softmax logits when the graph ends in Softmax).
        targets: (R,) int64 classes explained, one per CAM row (R = N inputs, or N * k with
            ``explain_top=k``, image-major); top: per input, the best classes with
            probabilities; cam: (R, H, W) float32 in [0, 1]; layer_cam: (R, h, w) raw map;
        overlays: one RGB heatmap overlay per row; sources: where each input came from;
        image_index: (R,) the input each row explains; rank: (R,) 0 for the input's best class,
            1 for the second... (-1 when the target was given).
        titles: per row, the overlay's title (class, label, probability, method, layer);
        probabilities: (R,) the probability of each row's target; cmap: the overlays' colormap;
        whole_image: the overlays cover each whole picture rather than the model input.
        module: the module path of ``layer`` (None when the exporter recorded none); layout:
            ``layer``'s layout (``NCHW``, ``NHWC`` or None).
        kind: the target kind (``seeds.KINDS``; ``"none"`` for Eigen-CAM without target).
        layers: every layer mapped (several with ``CamOptions.layers``; ``cam`` is then the
            fused map); layer_heatmaps: per layer, (R, H, W) in [0, 1] (empty for one layer);
        transforms: per layer, how it was viewed as (N, C, h, w) (token grids, channels-last);
        detections: per row, the detection explained (detection kind only).
    """

    method: str
    layer: str
    score_tensor: str
    targets: NDArray[np.int64]
    top: tuple[tuple[ClassScore, ...], ...]
    cam: NDArray[np.float32]
    layer_cam: NDArray[np.float32]
    overlays: tuple[Image.Image, ...]
    sources: tuple[str, ...] = ()
    image_index: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    rank: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    titles: tuple[str, ...] = ()
    probabilities: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    cmap: str = "jet"
    whole_image: bool = False
    module: str | None = None
    layout: str | None = None
    kind: str = "class"
    layers: tuple[str, ...] = ()
    layer_heatmaps: tuple[NDArray[np.float32], ...] = ()
    transforms: tuple[TokenTransform, ...] = ()
    detections: tuple[Detection, ...] = ()

    def __repr__(self) -> str:
        return (f"CamReport({self.method!r}, layer={self.layer!r}, {len(self.cam)} maps of "
                f"{'x'.join(map(str, self.cam.shape[1:]))}, targets={self.targets.tolist()})")

    def _repr_html_(self) -> str:
        from onnx_featviz.attribution.output import render_cam  # output imports this module
        from onnx_featviz.io.outputs import pictures_html
        return pictures_html([p for p in render_cam(self).pictures if p.title])


def _gray_picture(x: NDArray[np.float32]) -> Image.Image:
    """Render a (C, H, W) model input as a gray RGB picture (channel mean, min-max scaled)."""
    plane = x.mean(axis=0)
    lo, hi = float(plane.min()), float(plane.max())
    scaled = (plane - lo) / (hi - lo) if hi > lo else np.zeros_like(plane)
    return Image.fromarray(np.uint8(np.round(scaled * 255))).convert("RGB")


def _row_progress(progress: ProgressFn | None) -> cam_perturbation.ProgressFn | None:
    """Adapt a ``structs.ProgressFn`` to the ``(done, total)`` callback of ``cam``."""
    if progress is None:
        return None
    report = progress
    return lambda done, total: report(Progress(done, total, "row"))


# -- class-activation maps -----------------------------------------------------------
def cam(inspector: Inspector, images: Images, options: CamOptions, *,
        progress: ProgressFn | None = auto_progress) -> CamReport:
    """Return class-activation maps of ``options.method`` for each input.

    Gradients come from the model's own ONNX reverse graph (``autodiff``), run in the same
    kind of session as the forward pass. ``progress`` is called as the forward passes of
    Score-CAM, Ablation-CAM and occlusion advance (unit: ``row``); by default a progress bar
    in notebooks and terminals, None for none.

    Returns:
        ``CamReport`` with ``cam`` (R, H, W) in [0, 1] at the input size, ``layer_cam``
        (R, h, w) raw, targets (R,), overlays on the un-normalized inputs; R = N inputs, or
        N * k with ``explain_top=k``.

    Raises:
        InputError: unknown method, target out of range, label not found, a layer without
            spatial dims; ModelError: an op on the gradient path has no rule.
    """
    method = cams.resolve_method(options.method)
    loaded = inspector.load_batch(images)
    layer = cam_layer(inspector, options.layer)
    entry = cams.METHODS[method]
    run = _cam_pass(inspector, loaded.array, layer, entry, options)
    score, scores, targets, index, rank, batch, cam_targets, acts, grads = run
    last = inspector.info.layout(layer) == "NHWC"
    if last:  # the CAM maths read (N, C, h, w): move a channels-last layer's channels first
        acts = np.ascontiguousarray(np.moveaxis(acts, -1, 1))
        grads = None if grads is None else np.ascontiguousarray(np.moveaxis(grads, -1, 1))
    nchw = _as_nchw(inspector, batch)
    inputs = cams.CamInputs(
        targets=cam_targets, input_size=(nchw.shape[2], nchw.shape[3]), activations=acts,
        gradients=grads, input_batch=nchw if entry.needs_input else None,
        forward=_forward_fn(inspector, score) if entry.needs_forward else None,
        forward_masked=(_masked_forward_fn(inspector, score, nchw, acts.shape[2:])
                        if method == "score_cam" else None),
        forward_from_layer=(_layer_forward_fn(inspector, layer, score, batch,
                                              channels_last=last)
                            if entry.needs_layer_forward else None),
        occlusion=options.occlusion or cam_perturbation.OcclusionOptions(),
        batch_size=options.batch_size, progress=None)
    with progress_for(progress, method) as report:
        result = cams.compute(method, replace(inputs, progress=_row_progress(report)))
    probs, _ = as_probabilities(np.asarray(scores, np.float64))
    top = tuple(prediction(inspector.labels, src, score, row, options.top_k or 5, True).top
                for src, row in zip(loaded.sources, probs, strict=True))
    chosen = probs[index, result.targets]
    titles = tuple(_cam_title(inspector, method, layer, int(t), float(p))
                   for t, p in zip(result.targets, chosen, strict=True))
    overlays = _overlays(inspector, loaded, result.cam, index, options)
    return CamReport(method, layer, score, result.targets, top, result.cam,
                     result.layer_cam, overlays, loaded.sources, index, rank, titles, chosen,
                     options.cmap, options.whole_image and len(loaded.originals) == len(probs),
                     inspector.info.module_of(layer), inspector.info.layout(layer))


def _cam_title(inspector: Inspector, method: str, layer: str, target: int,
               probability: float) -> str:
    """Return ``"class 281: tabby (p=0.873)"`` and, on a second line, method and layer."""
    labels = inspector.labels
    label = labels[target] if labels and 0 <= target < len(labels) else str(target)
    name = f": {label}" if label != str(target) else ""  # MNIST's "9" adds nothing
    return f"class {target}{name} (p={probability:.3f})\n{method} at {layer}"


def _overlays(inspector: Inspector, loaded: Batch, heat: NDArray[np.float32],
              index: NDArray[np.int64], options: CamOptions) -> tuple[Image.Image, ...]:
    """Blend each row's heatmap over its input: the model's view, or the whole picture."""
    if not options.overlays:
        return ()
    whole = options.whole_image and len(loaded.originals) == len(loaded.array)
    if options.whole_image and not whole:
        logger.warning("whole-image overlays need image files or PIL images; arrays are "
                       "drawn as the model input")
    if whole:
        return tuple(figures.overlay_whole(
            loaded.originals[i], h, geometry.input_geometry(
                loaded.originals[i].size, inspector.spec, inspector.preprocessing),
            alpha=options.alpha, cmap=options.cmap) for i, h in zip(index, heat, strict=True))
    pictures = _pictures(inspector, loaded, _as_nchw(inspector, loaded.array))
    return tuple(compose.overlay_heatmap(pictures[i], h, alpha=options.alpha, cmap=options.cmap)
                 for i, h in zip(index, heat, strict=True))


def _cam_pass(inspector: Inspector, batch: NDArray[np.generic], layer: str, entry: cams.CamMethod,
              options: CamOptions) -> tuple[Any, ...]:
    """Run what a method needs before ``cam.compute``.

    Returns:
        (score tensor, (N, classes) scores, targets (R,), image index (R,), rank (R,),
        the batch the method sees, its targets, activations, gradients or None).
    """
    n = len(batch)
    if entry.needs_gradients and options.explain_top == 1:
        score, scores, targets, grads, acts = _top1_gradients(inspector, batch, layer,
                                                              options.score, options.target)
        index = np.arange(n, dtype=np.int64)
        rank = np.full(n, 0 if options.target is None else -1, np.int64)
        return score, scores, targets, index, rank, batch, targets, acts, grads
    score, scores, shape, acts = _cam_forward(inspector, batch, layer, options.score,
                                                   gradients=entry.needs_gradients)
    targets, index, rank = _cam_targets(inspector, scores, options)
    if not entry.needs_gradients:  # the forward-pass methods serve T targets per image
        return (score, scores, targets, index, rank, batch, targets.reshape(n, -1), acts,
                None)
    rows = batch[index]  # each (image, class) row needs its own reverse pass
    grads, acts = _gradients(inspector, rows, score, layer, targets, (len(rows), *shape[1:]),
                                  keep=[layer])
    return score, scores, targets, index, rank, rows, targets, acts, grads


def _top1_gradients(inspector: Inspector, batch: NDArray[np.generic], layer: str,
                    score: str | int | None, target: int | str | None = None
                    ) -> tuple[str, NDArray[np.float32], NDArray[np.int64],
                               NDArray[np.float32], NDArray[np.float32]]:
    """One call: scores, each row's class (``target``, or its top-1), its gradient at
    ``layer``, activations (``_one_pass``)."""
    name = score_tensor(inspector, score)
    scores, classes, values = _one_pass(inspector, batch, name, layer, target, keep=True)
    return name, scores, classes, values[0], values[1]


def _one_pass_input_gradients(inspector: Inspector, batch: NDArray[np.generic],
                              score: str | int | None, target: int | str | None, *,
                              guided: bool) -> tuple[str, NDArray[np.int64], NDArray[np.float32],
                                                     tuple[int, ...]]:
    """One call: each row's class (``target``, or its arg-max), the gradient of its score
    w.r.t. the input, and the score tensor's shape (``_one_pass``)."""
    name = score_tensor(inspector, score)
    wrt = inspector.spec.name
    _, classes, values = _one_pass(inspector, batch, name, wrt, target, guided=guided)
    return name, classes, values[0], (len(batch), *values[1].shape[1:])


def _one_pass(inspector: Inspector, batch: NDArray[np.generic], name: str, wrt: str,
              target: int | str | None, *, guided: bool = False, keep: bool = False
              ) -> tuple[NDArray[np.float32], NDArray[np.int64], list[NDArray[np.float32]]]:
    """Run the gradient of each row's class score w.r.t. ``wrt`` in one session call.

    The seed is built in the gradient graph (``autodiff.seed_top1``): the arg-max of the
    score, or the one-hot of a class input for ``target``; a separate forward pass to read
    the scores first would cost a third more.

    Returns:
        ((N, classes) scores, (N,) classes explained, [gradient at ``wrt``, then the values
        of ``wrt`` with ``keep``, else the raw score tensor]).

    Raises:
        InputError: the score tensor is not one score per class; the target is not a class.
    """
    given = "featviz/classes"
    key = ("one-pass", (name, wrt, guided, keep, target is None))
    fused = inspector.cached(("model", key), lambda: autodiff.seed_top1(autodiff.differentiate(
        inspector.model, of=name, wrt=[wrt], guided=guided, keep_outputs=[wrt] if keep else ()),
        classes=None if target is None else given))
    session = inspector.cached(key, lambda: inspector.open_session(fused.model))
    feeds = {inspector.spec.name: batch}
    index = None if target is None else cams.target_index(target, inspector.labels)
    if index is not None:
        feeds[given] = np.full(len(batch), index, np.int64)
    names = [name, fused.outputs[-1], fused.gradient(wrt), wrt if keep else name]
    values = session.run(feeds, list(dict.fromkeys(names)), max_batch=inspector.max_batch)
    scores = _class_scores(values[name], name)  # one score per class, or the one-line error
    if index is not None:
        cams.check_target(index, scores.shape[1])
    return (scores, np.asarray(values[names[1]], np.int64),
            [np.asarray(values[names[2]], np.float32), np.asarray(values[names[3]], np.float32)])


def _cam_targets(inspector: Inspector, scores: NDArray[np.float32], options: CamOptions
                 ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Return (targets, image index, rank) per CAM row (image-major for ``explain_top``)."""
    n = len(scores)
    if options.explain_top < 1:
        raise InputError(f"explain_top must be >= 1, got {options.explain_top}")
    if options.explain_top > 1 and options.target is not None:
        raise InputError(f"explain_top={options.explain_top} explains each image's best "
                         f"classes, but target={options.target!r} was also given; use one")
    if options.explain_top == 1:
        targets = cams.select_targets(scores, options.target, labels=inspector.labels)
        rank = np.full(n, 0 if options.target is None else -1, np.int64)
        return targets, np.arange(n, dtype=np.int64), rank
    k = options.explain_top
    best = cams.select_targets(scores, None, labels=inspector.labels, top_k=k)
    return (best.reshape(-1), np.repeat(np.arange(n, dtype=np.int64), k),
            np.tile(np.arange(k, dtype=np.int64), n))


def _grad_session(inspector: Inspector, of: str, wrt: str, *, guided: bool = False,
                  keep: Sequence[str] = ()) -> tuple[runtime.Session, autodiff.GradModel]:
    """Return (building once) the gradient model of ``of`` w.r.t. ``wrt`` and its session."""
    key = ("guided" if guided else "grad", (of, wrt, *keep))
    grad = inspector.cached(("model", key), lambda: autodiff.differentiate(
        inspector.model, of=of, wrt=[wrt], guided=guided, keep_outputs=list(keep)))
    session = inspector.cached(key, lambda: inspector.open_session(grad.model))
    return session, grad


def _gradients(inspector: Inspector, batch: NDArray[np.generic], of: str, wrt: str,
               targets: NDArray[np.int64], shape: tuple[int, ...], *, guided: bool = False,
               keep: Sequence[str] = ()) -> list[NDArray[np.float32]]:
    """Return the gradient w.r.t. ``wrt`` of each row's target score, then ``keep`` values."""
    session, grad = _grad_session(inspector, of, wrt, guided=guided, keep=keep)
    onehot = np.zeros((len(targets), int(np.prod(shape[1:]))), np.float32)
    onehot[np.arange(len(targets)), targets] = 1.0
    seed = onehot.reshape(shape).astype(session.input_types.get(grad.seed, "float32"))
    names = [grad.gradient(wrt), *keep]
    values = session.run({inspector.spec.name: batch, grad.seed: seed}, names,
                         max_batch=inspector.max_batch)
    return [np.asarray(values[n], np.float32) for n in names]


def _cam_forward(inspector: Inspector, batch: NDArray[np.generic], layer: str,
                 score: str | int | None, *, gradients: bool
                 ) -> tuple[str, NDArray[np.float32], tuple[int, ...], NDArray[np.float32]]:
    """One forward pass: (score tensor, (N, classes) scores, their shape, activations).

    Gradient methods get the activations from their gradient pass, so only the scores are
    fetched here (the plain session); the others take both from one exposed pass.
    """
    if gradients:
        name, scores, shape = _scores(inspector, batch, score)
        return name, scores, shape, np.zeros((0,), np.float32)
    name = score_tensor(inspector, score)
    got = inspector.capture(batch, [layer, name])
    return (name, _class_scores(got[name], name), tuple(got[name].shape),
            np.asarray(got[layer], np.float32))


def _forward_fn(inspector: Inspector, score: str) -> cam_perturbation.ForwardFn:
    exposed = _score_exposure(inspector, score)

    def forward(rows: NDArray[np.floating]) -> NDArray[np.floating]:
        model_rows = _from_nchw(inspector, np.asarray(rows, np.float32))
        values = inspector.run(model_rows, [score], exposed=exposed)[score]
        return np.asarray(values, np.float32).reshape(len(values), -1)

    return forward


def _masked_forward_fn(inspector: Inspector, score: str, images: NDArray[np.float32],
                       map_size: tuple[int, ...]) -> cam_perturbation.MaskedForwardFn:
    """Score-CAM rows masked inside the session (``masking.mask_input``).

    Only the layer maps, a row -> image index and the images a call uses are fed; the
    model's fixed batch size (Caffe2 zoo: 1), if any, bounds the rows per call. On the CPU
    each call's rows are split over ``_mask_workers`` sessions of ``cores // workers`` threads
    run side by side (the rows are independent: same scores, less waiting between threads).
    """
    size = (int(map_size[0]), int(map_size[1]))
    sessions = _mask_sessions(inspector, score, size, (int(images.shape[2]), int(images.shape[3])))
    name = exposed_name(sessions[0], score)
    first = inspector.spec.shape[0] if inspector.spec.shape else None
    fixed = first if isinstance(first, int) and first > 0 else None

    def run_rows(session: runtime.Session, maps: NDArray[np.float32],
                 image_index: NDArray[np.intp]) -> NDArray[np.generic]:
        used, local = np.unique(image_index, return_inverse=True)
        feeds: dict[str, NDArray[np.generic]] = {
            masking.MASK_IMAGES: images[used], masking.MASK_INDEX: local.astype(np.int64),
            masking.MASK_MAPS: np.asarray(maps, np.float32)}
        return np.asarray(session.run(feeds, [name], split=False)[name])

    def forward(maps: NDArray[np.float32], image_index: NDArray[np.intp]
                ) -> NDArray[np.floating]:
        n = len(sessions)
        step = fixed or -(-len(maps) // n)  # rows per session call
        bounds = [(a, a + step) for a in range(0, len(maps), step)]

        def worker(w: int) -> list[NDArray[np.generic]]:  # session w runs calls w, w + n, ...
            return [run_rows(sessions[w], maps[a:b], image_index[a:b]) for a, b in bounds[w::n]]

        if len(bounds) > 1 and n > 1:  # onnxruntime releases the GIL while it runs
            with ThreadPoolExecutor(n) as pool:
                done = list(pool.map(worker, range(min(n, len(bounds)))))
        else:
            done = [worker(0)] if n == 1 else [worker(w) for w in range(n)]
        parts = [done[i % n][i // n] for i in range(len(bounds))]
        values = np.concatenate(parts)
        return values.reshape(len(values), -1).astype(np.float32)

    return forward


def _mask_workers(inspector: Inspector) -> int:
    """Sessions to run Score-CAM rows side by side: 2 on a multi-core CPU, else 1."""
    cores = os.cpu_count() or 1
    on_cpu = inspector.provider == "cpu" or not inspector.session().on_cuda
    return 2 if on_cpu and cores > 1 else 1


def _mask_sessions(inspector: Inspector, score: str, size: tuple[int, int],
                   input_size: tuple[int, int]) -> list[runtime.Session]:
    """The masked model's worker sessions, cached on the inspector (built once each)."""
    outputs = [o.name for o in inspector.info.outputs]
    workers = _mask_workers(inspector)
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None

    made: list[onnx.ModelProto] = []  # the masked model, rewritten once for all workers

    def build() -> runtime.Session:
        if not made:
            base = (inspector.model if score in outputs
                    else rewrite.expose_tensors(inspector.model, [score]))
            made.append(masking.mask_input(base, map_size=size, input_size=input_size,
                                           layout=inspector.spec.layout))
        return runtime.Session(made[0], inspector.provider, threads=threads,
                               name=inspector.name, external_folder=inspector.external_folder)

    return [inspector.cached(("mask", (score, *map(str, size), str(i))), build)
            for i in range(workers)]


def _layer_forward_fn(inspector: Inspector, layer: str, score: str, batch: NDArray[np.generic],
                      *, channels_last: bool = False) -> cam_perturbation.LayerForwardFn:
    """Scores of the network after ``layer`` fed with a layer batch (for Ablation-CAM).

    Rows come (N, C, h, w); for a ``channels_last`` layer they are fed back as (N, h, w, C).

    The model cut at ``layer`` (``rewrite.cut_at``) is built once and kept in the session
    dict under ``("cut", (layer, score))``. Where the rest of the graph still reads the model
    input (a skip connection from before ``layer``), row ``b`` is fed image
    ``batch[image_index[b]]``.
    """
    key = ("cut", (layer, score))
    session = inspector.cached(key, lambda: inspector.open_session(
        rewrite.expose_tensors(rewrite.cut_at(inspector.model, layer), [score])))
    dtype = session.input_types.get(layer, "float32")
    fixed = inspector.spec.batch if isinstance(inspector.spec.batch, int) else None
    step: list[int] = []

    def forward(rows: NDArray[np.floating], image_index: NDArray[np.intp]
                ) -> NDArray[np.floating]:
        fed = np.moveaxis(np.asarray(rows), 1, -1) if channels_last else np.asarray(rows)
        index = np.asarray(image_index, np.intp)
        if not step:  # a graph that reshapes to its fixed export batch (dynamo's view(1, -1))
            try:      # takes only that many rows: learn it on the first call
                return run_rows(fed, index)
            except (InputError, ModelError):  # a fixed-batch Reshape fails at run time
                if not fixed or len(fed) <= fixed:
                    raise
                step.append(fixed)
        parts = [run_rows(fed[i:i + step[0]], index[i:i + step[0]])
                 for i in range(0, len(fed), step[0])]
        return np.concatenate(parts)

    def run_rows(fed: NDArray[np.generic], index: NDArray[np.intp]) -> NDArray[np.floating]:
        feeds: dict[str, NDArray[np.generic]] = {layer: np.ascontiguousarray(fed, dtype)}
        if inspector.spec.name in session.input_types:
            feeds[inspector.spec.name] = batch[index]
        values = session.run(feeds, [score], max_batch=inspector.max_batch)[score]
        return np.asarray(values, np.float32).reshape(len(values), -1)

    return forward


def _as_nchw(inspector: Inspector, batch: NDArray[np.generic]) -> NDArray[np.float32]:
    arr = np.asarray(batch, np.float32)
    if inspector.spec.layout == "NHWC":
        return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
    return arr[:, None] if inspector.spec.layout == "NHW" else arr


def _from_nchw(inspector: Inspector, rows: NDArray[np.float32]) -> NDArray[np.generic]:
    if inspector.spec.layout == "NHWC":
        rows = np.ascontiguousarray(rows.transpose(0, 2, 3, 1))
    elif inspector.spec.layout == "NHW":
        rows = rows[:, 0]
    return rows.astype(inspector.spec.dtype)


def _pictures(inspector: Inspector, loaded: Batch, nchw: NDArray[np.float32]) -> list[Image.Image]:
    if len(loaded.images) == len(nchw):
        return list(loaded.images)
    return [_gray_picture(x) for x in nchw]


def backprop(inspector: Inspector, images: Images, method: str, target: int | str | None = None, *,
             score: str | int | None = None, layer: str | int | None = None
             ) -> NDArray[np.float32]:
    """Return input-space gradient views: ``saliency``, ``guided`` or ``guided-gradcam``.

    ``score`` picks the (N, classes) tensor targets are scored on (see ``CamOptions``);
    ``layer`` the Grad-CAM layer of ``guided-gradcam`` (None: ``cam_layer``'s default).

    Returns:
        saliency: (N, H, W) in [0, 1]; guided and guided-gradcam: (N, H, W, C) in [0, 1]
        (the model's channel order).

    Raises:
        InputError: unknown method, bad target; ModelError: an op without gradient rule.
    """
    return backprop_rows(inspector, images, method, target, score=score, layer=layer)[0]


def backprop_rows(inspector: Inspector, images: Images, method: str,
                  target: int | str | None = None, *, score: str | int | None = None,
                  layer: str | int | None = None, rank: int = 0
                  ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Return ``backprop``'s views and the (N,) class each explains; ``rank`` r > 0 explains
    each image's (r+1)-th best class (only without ``target``).

    Raises:
        InputError: as ``backprop``; a rank beyond the classes or given with a target.
    """
    if method not in BACKPROP_METHODS:
        raise InputError(f"unknown backprop method {method!r}; choose one of "
                         f"{', '.join(BACKPROP_METHODS)}")
    batch = inspector.load_batch(images).array
    if rank == 0:
        score, targets, raw, full = _one_pass_input_gradients(
            inspector, batch, score, target, guided=method != "saliency")
    else:
        score, scores, full = _scores(inspector, batch, score)  # the (rank+1)-th best class
        targets = cams.select_targets(scores, target, labels=inspector.labels,
                                      top_k=rank + 1)[:, rank]
        raw = _gradients(inspector, batch, score, inspector.spec.name, targets, full,
                         guided=method != "saliency")[0]
    grads = _as_nchw(inspector, raw)
    if method == "saliency":
        return cam_maps.saliency(grads), targets
    if method == "guided-gradcam":
        tensor = cam_layer(inspector, layer)
        lgrad, acts = _gradients(inspector, batch, score, tensor, targets, full, keep=[tensor])
        if inspector.info.layout(tensor) == "NHWC":
            lgrad, acts = np.moveaxis(lgrad, -1, 1), np.moveaxis(acts, -1, 1)
        heat = cams.compute("grad_cam", cams.CamInputs(
            targets=targets, input_size=(grads.shape[2], grads.shape[3]),
            activations=acts, gradients=lgrad)).cam
        grads = cam_maps.guided_grad_cam(grads, heat)
    return cam_maps.guided_backprop_image(grads), targets

