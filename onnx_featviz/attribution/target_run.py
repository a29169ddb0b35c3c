"""CAM and backprop runs for any target: segmentation regions, detections, tensor elements,
token and channels-last layers, several layers at once and models with several inputs.

``cam`` hands plain class targets on one NCHW layer to ``run.cam`` (its fused top-1 path) and
serves everything else here: one forward pass resolves the seed rows (``seeds.resolve``-style
helpers), then the gradient methods take ONE session call with one seed row per CAM row (k
detections of an image are k rows of the batched reverse pass), and the perturbation methods
score their modified rows with ``Seeds.scores`` (every row's target on every forward row).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray
from PIL import Image

import onnx_featviz.attribution.methods as cams
import onnx_featviz.autodiff as autodiff
import onnx_featviz.graph.layouts as layouts
import onnx_featviz.runtime as runtime
from onnx_featviz.attribution import boxes, run, tokens
from onnx_featviz.attribution import layers as cam_layers
from onnx_featviz.attribution import maps as cam_maps
from onnx_featviz.attribution import seeds as seeding
from onnx_featviz.attribution import targets as tgt
from onnx_featviz.attribution.perturbation import OcclusionOptions
from onnx_featviz.errors import InputError
from onnx_featviz.inspector import (
    Batch,
    Images,
    Inspector,
    check_exposable,
    exposed_name,
    spatial_size,
    stage_tensors,
)
from onnx_featviz.render import compose
from onnx_featviz.structs import ProgressFn

Feeds = dict[str, NDArray[np.generic]]


def target_layer(inspector: Inspector, layer: str | int | None) -> str:
    """Return the tensor a CAM uses; token (N, T, C) and channels-last layers are accepted.

    Raises:
        InputError: the layer is neither (N, C, h, w), (N, h, w, C) nor (N, T, C).
    """
    if layer is None:
        return cam_layers.cam_layer(inspector, None)
    lay = inspector.layer(layer)
    check_exposable(lay)
    tensor = stage_tensors(lay, "act")[0]
    shape = inspector.info.layer(tensor).shape
    if shape is not None and (len(shape) not in (3, 4) or (len(shape) == 4
                                                           and spatial_size(shape) == 1)):
        raise InputError(f"layer {lay.name!r} (tensor {tensor!r}, shape {shape}) has no "
                         "spatial or token dims; a CAM needs (N, C, h, w), (N, h, w, C) or "
                         "tokens (N, T, C): pick a conv or transformer-block layer")
    return tensor


def _layout(inspector: Inspector, tensor: str) -> str | None:
    found = inspector.cached(("layouts", ()), lambda: layouts.tensor_layouts(inspector.model))
    return found.get(tensor)


def _transform(inspector: Inspector, tensor: str, shape: Sequence[int]) -> tokens.TokenTransform:
    layout = _layout(inspector, tensor)
    return tokens.token_transform(shape, layout=layout if layout == "NHWC" else None)


def _is_plain(inspector: Inspector, options: run.CamOptions) -> bool:
    """True when ``run.cam`` serves the request: a class target on one NCHW layer.

    A goal with every field at its default counts as none when the score tensor is one score
    per class (known from the graph); anything else is served here.
    """
    if len(options.layers) > 1 or not _classifier_goal(inspector, options.goal, options.score):
        return False
    layer = options.layers[0] if options.layers else options.layer
    tensor = target_layer(inspector, layer)
    shape = inspector.info.layer(tensor).shape
    return shape is None or (len(shape) == 4 and _layout(inspector, tensor) != "NHWC")


def _classifier_goal(inspector: Inspector, goal: seeding.TargetSpec | None,
                     score: str | int | None) -> bool:
    """True for a class target: no goal fields set and a (N, classes) score (or kind class)."""
    if goal is not None:
        if goal.kind not in ("auto", "class") or goal.inputs:
            return False
        if any(v is not None for v in (goal.region, goal.box, goal.detection,
                                       goal.detect_format, goal.element)):
            return False
        if goal.detections != 1:
            return False
        if goal.kind == "class":
            return True
    probe = cam_layers.score_tensor(inspector, score)
    dims = next((o.shape for o in inspector.info.outputs if o.name == probe), None)
    if dims is None and probe not in _outputs(inspector):
        dims = inspector.info.layer(probe).shape
    if dims is None:
        return True
    kept = list(dims)
    while len(kept) > 2 and kept[-1] == 1:
        kept.pop()
    return len(kept) <= 2


def _outputs(inspector: Inspector) -> list[str]:
    return [o.name for o in inspector.info.outputs]


def _forward(inspector: Inspector, batch: NDArray[np.generic], tensors: Sequence[str],
             extra: Feeds) -> dict[str, NDArray[np.generic]]:
    """One forward pass fetching ``tensors`` (model outputs or exposed ones)."""
    hidden = tuple(t for t in tensors if t not in _outputs(inspector))
    session = inspector.session(hidden)
    wanted = [exposed_name(session, t) for t in tensors]
    values = session.run({inspector.spec.name: batch, **extra}, wanted,
                         max_batch=inspector.max_batch)
    return {t: values[w] for t, w in zip(tensors, wanted, strict=True)}


def _extra(goal: seeding.TargetSpec | None, rows: NDArray[np.int64] | None = None) -> Feeds:
    if goal is None or not goal.inputs:
        return {}
    return {k: np.asarray(v) if rows is None else np.asarray(v)[rows]
            for k, v in goal.inputs.items()}


def resolve(inspector: Inspector, batch: NDArray[np.generic], options: run.CamOptions
            ) -> tuple[seeding.Seeds, NDArray[np.int64]]:
    """Return the seed rows of ``options`` for a model-ready batch, and each row's rank.

    Raises:
        InputError: targets that do not fit; ModelError: outputs that fit no detector format.
    """
    goal = options.goal or seeding.TargetSpec()
    score = cam_layers.score_tensor(inspector, options.score)
    wanted = list(dict.fromkeys([score, *_outputs(inspector)]))
    values = _forward(inspector, batch, wanted, _extra(goal))
    kind = seeding.resolve_kind(goal, np.shape(values[score]))
    size = run._as_nchw(inspector, batch).shape[2:4]
    labels = inspector.labels
    if kind == "class":
        scores = cam_layers._class_scores(values[score], score)
        targets, index, rank = run._cam_targets(inspector, scores, options)
        onehot = np.zeros((len(targets), scores.shape[1]), np.float32)
        onehot[np.arange(len(targets)), targets] = 1.0
        seed = onehot.reshape(len(targets), *np.shape(values[score])[1:])
        return seeding.Seeds("class", score, seed, index, targets), rank
    if kind == "segmentation":
        layout = "NHWC" if _layout(inspector, score) == "NHWC" else "NCHW"
        classes = np.shape(values[score])[1 if layout == "NCHW" else -1]
        k = seeding.class_index(options.target, classes, labels)
        found = seeding.segmentation_seeds(np.asarray(values[score], np.float32), score,
                                           layout, k, goal, size)
    elif kind == "detection":
        classes = len(labels) if labels else 1 << 30
        k = seeding.class_index(options.target, classes, labels)
        found = seeding.detection_seeds({o: values[o] for o in _outputs(inspector)}, k, goal,
                                        size)
    else:
        element = goal.element if goal.element is not None else _element(options.target)
        found = seeding.element_seeds(values[score], score, element)
    given = options.target is not None or goal.box is not None or goal.detection is not None
    return found, _ranks(found.image_index, given)


def _element(target: int | str | None) -> tgt.ElementTarget:
    if target is None:
        raise InputError("an element target needs the element: an index, a multi-index or "
                         "'all' (the sum over the tensor)")
    return target if isinstance(target, int) else tgt.parse_element_target(target)


def _ranks(index: NDArray[np.int64], given: bool) -> NDArray[np.int64]:
    if given:
        return np.full(len(index), -1, np.int64)
    rank = np.zeros(len(index), np.int64)
    for n in np.unique(index):
        rows = np.flatnonzero(index == n)
        rank[rows] = np.arange(len(rows))
    return rank


def layer_gradients(inspector: Inspector, batch: NDArray[np.generic], found: seeding.Seeds,
                    layers: Sequence[str], extra: Feeds, *, guided: bool = False
                    ) -> tuple[list[NDArray[np.float32]], list[NDArray[np.float32]]]:
    """One session call: each seed row's gradient at every layer, and the layers' values.

    Args:
        batch: (N, ...) model-ready batch; row r is fed ``batch[found.image_index[r]]``.
        found: the seeds (R rows); layers: tensors to differentiate with respect to.
        extra: further model inputs (N, ...), indexed the same way.

    Returns:
        (gradients, activations): per layer, (R, *layer shape) float32.
    """
    names = list(dict.fromkeys(layers))
    keep = [t for t in names if t != inspector.spec.name]
    key = ("guided" if guided else "grad", ("rows", found.tensor, *names))
    grad = inspector.cached(("model", key), lambda: autodiff.differentiate(
        inspector.model, of=found.tensor, wrt=names, guided=guided, keep_outputs=keep))
    session = inspector.cached(key, lambda: runtime.Session(grad.model, inspector.provider))
    rows = found.image_index
    feeds: Feeds = {inspector.spec.name: batch[rows], **{k: v[rows] for k, v in extra.items()},
                    grad.seed: found.seed.astype(session.input_types.get(grad.seed, "float32"))}
    wanted = [grad.gradient(t) for t in names] + keep
    values = session.run(feeds, wanted, max_batch=inspector.max_batch)
    grads = [np.asarray(values[grad.gradient(t)], np.float32) for t in names]
    acts = [np.asarray(values[t] if t in keep else feeds[t], np.float32) for t in names]
    return grads, acts


def cam(inspector: Inspector, images: Images, options: run.CamOptions, *,
        progress: ProgressFn | None = None) -> run.CamReport:
    """Return CAMs for any target kind, several layers, token and channels-last layers.

    Plain class targets on one NCHW layer go to ``run.cam``. Otherwise gradient methods take
    one session call with one seed row per CAM row; Score-CAM, Ablation-CAM and occlusion
    score their rows with ``Seeds.scores``; Eigen-CAM needs no target (nor a classifier).

    Returns:
        ``CamReport``: ``cam`` (R, H, W) in [0, 1] (the fused map for several layers),
        ``layer_cam`` (R, h, w) of the first layer, per-layer heatmaps, the layers' token
        transforms, the detections explained; R rows image-major.

    Raises:
        InputError: bad targets, layers or methods; ModelError: outputs that fit no detection
            format, an op without a gradient rule.
    """
    method = cams.resolve_method(options.method)
    if _is_plain(inspector, options):
        return run.cam(inspector, images, options, progress=progress)
    loaded = inspector.load_batch(images)
    batch, extra, entry = loaded.array, _extra(options.goal), cams.METHODS[method]
    layers = list(dict.fromkeys(target_layer(inspector, item)
                                for item in (options.layers or (options.layer,))))
    found: seeding.Seeds | None = None
    rank = np.zeros(len(batch), np.int64)
    if method != "eigen_cam" or options.goal is not None:
        found, rank = resolve(inspector, batch, options)
    if entry.needs_gradients:
        assert found is not None
        grads, acts = layer_gradients(inspector, batch, found, layers, extra)
    else:
        values = _forward(inspector, batch, layers, extra)
        acts, grads = [np.asarray(values[t], np.float32) for t in layers], []
    transforms = tuple(_transform(inspector, t, a.shape) for t, a in zip(layers, acts,
                                                                          strict=True))
    nchw = run._as_nchw(inspector, batch)
    parts = [_LayerRun(method, layer, transforms[i], acts[i], grads[i] if grads else None)
             for i, layer in enumerate(layers)]
    heat, raw = _all_layers(inspector, parts, found, options, (batch, nchw), progress)
    fused = heat[0] if len(heat) == 1 else cam_maps.normalize_heatmaps(np.mean(heat, axis=0))
    index = found.image_index if found is not None else np.arange(len(batch), dtype=np.int64)
    report = run.CamReport(
        method, layers[0], found.tensor if found is not None else "", np.asarray(
            found.targets if found is not None else np.zeros(len(batch)), np.int64),
        tuple(() for _ in loaded.sources), fused, raw[0], (), loaded.sources, index, rank,
        cmap=options.cmap, kind=found.kind if found is not None else "none",
        layers=tuple(layers), layer_heatmaps=tuple(heat) if len(heat) > 1 else (),
        transforms=transforms, detections=found.detections if found is not None else (),
        titles=_titles(inspector, method, layers, found, rank))
    if not options.overlays:
        return report
    return replace(report, overlays=_overlays(inspector, loaded, nchw, report, options))


def _titles(inspector: Inspector, method: str, layers: Sequence[str],
            found: seeding.Seeds | None, rank: NDArray[np.int64]) -> tuple[str, ...]:
    """Per CAM row, the overlay's title: what was explained, then the method and layer(s).

    ``"detection 1: class 1: disk (score 0.49)"``, ``"class 2: disk, segmentation"``,
    ``"element 17 of /head/Gemm_output_0"``, ``"no target"`` (Eigen-CAM).
    """
    where = (f"{method} at {layers[0]}" if len(layers) == 1 else
             f"{method} at {len(layers)} layers, fused")
    if found is None:
        return tuple(f"no target\n{where}" for _ in rank)
    labels = inspector.labels

    def named(cls: int) -> str:
        label = labels[cls] if labels and 0 <= cls < len(labels) else ""
        return f"class {cls}" + (f": {label}" if label and label != str(cls) else "")

    heads = []
    for row, target in enumerate(found.targets.tolist()):
        if found.kind == "detection" and row < len(found.detections):
            hit = found.detections[row]
            heads.append(f"detection {int(rank[row]) + 1}: {named(hit.cls)} "
                         f"(score {hit.score:.2f})")
        elif found.kind == "segmentation":
            heads.append(f"{named(target)}, segmentation")
        elif found.kind == "element":
            heads.append(f"{'sum' if target < 0 else f'element {target}'} of {found.tensor}")
        else:
            heads.append(named(target))
    return tuple(f"{head}\n{where}" for head in heads)


@dataclass(frozen=True, slots=True)
class _LayerRun:
    """One layer of a CAM run: method, tensor, token transform, activations, gradients."""

    method: str
    layer: str
    transform: tokens.TokenTransform
    acts: NDArray[np.float32]
    grads: NDArray[np.float32] | None


def _all_layers(inspector: Inspector, parts: Sequence[_LayerRun], found: seeding.Seeds | None,
                options: run.CamOptions,
                batches: tuple[NDArray[np.generic], NDArray[np.float32]],
                progress: ProgressFn | None
                ) -> tuple[list[NDArray[np.float32]], list[NDArray[np.float32]]]:
    """Return per layer the (R, H, W) heatmaps and the (R, h, w) raw maps."""
    maps = [_layer_maps(inspector, part, found, options, batches, progress) for part in parts]
    return [m[0] for m in maps], [m[1] for m in maps]


def _layer_maps(inspector: Inspector, part: _LayerRun, found: seeding.Seeds | None,
                options: run.CamOptions, batches: tuple[NDArray[np.generic], NDArray[np.float32]],
                progress: ProgressFn | None) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Return one layer's ((R, H, W) heatmaps in [0, 1], (R, h, w) raw maps)."""
    batch, nchw = batches
    entry = cams.METHODS[part.method]
    acts = np.asarray(tokens.to_nchw(part.acts, part.transform), np.float32)
    size = (nchw.shape[2], nchw.shape[3])
    if entry.needs_gradients or part.method == "eigen_cam":
        grads = (None if part.grads is None
                 else np.asarray(tokens.to_nchw(part.grads, part.transform), np.float32))
        result = cams.compute(part.method, cams.CamInputs(
            targets=np.zeros(len(acts), np.int64), input_size=size, activations=acts,
            gradients=grads))
        if grads is None and found is not None:  # Eigen-CAM: one map per image, row copies
            return result.cam[found.image_index], result.layer_cam[found.image_index]
        return result.cam, result.layer_cam
    assert found is not None
    columns, where = seeding.padded_columns(found.image_index, len(acts))
    forwards = _perturbed_forwards(inspector, part, found, (batch, nchw), acts)
    result = cams.compute(part.method, cams.CamInputs(
        targets=columns, input_size=size, activations=acts,
        input_batch=nchw if entry.needs_input else None, forward=forwards[0],
        forward_masked=forwards[1] if part.method == "score_cam" else None,
        forward_from_layer=forwards[2] if entry.needs_layer_forward else None,
        occlusion=options.occlusion or OcclusionOptions(), batch_size=options.batch_size,
        progress=run._row_progress(progress)))
    return result.cam[where], result.layer_cam[where]


def _perturbed_forwards(inspector: Inspector, part: _LayerRun, found: seeding.Seeds,
                        batches: tuple[NDArray[np.generic], NDArray[np.float32]],
                        acts: NDArray[np.float32]
                        ) -> tuple[Callable[..., NDArray[np.floating]], ...]:
    """The (input, masked-input, from-layer) forward functions scoring every seed row.

    Each returns (B, R): row b scored with every target r (``Seeds.scores``); the methods
    pick each image's own columns.
    """
    batch, nchw = batches
    row = found.seed.shape[1:]
    plain = run._forward_fn(inspector, found.tensor)
    masked = run._masked_forward_fn(inspector, found.tensor, nchw, acts.shape[2:])
    cut = run._layer_forward_fn(inspector, part.layer, found.tensor, batch)
    transform, original = part.transform, part.acts

    def from_layer(rows: NDArray[np.float32], index: NDArray[np.intp]) -> NDArray[np.floating]:
        layer_rows = np.asarray(tokens.from_nchw(rows, transform))
        if transform.prefix_tokens:  # class/distillation tokens keep their values
            layer_rows[:, :transform.prefix_tokens] = original[index, :transform.prefix_tokens]
        return found.scores(cut(layer_rows, index).reshape(-1, *row))

    return (lambda rows: found.scores(plain(rows).reshape(-1, *row)),
            lambda maps, index: found.scores(masked(maps, index).reshape(-1, *row)),
            from_layer)


def _overlays(inspector: Inspector, loaded: Batch, nchw: NDArray[np.float32],
              report: run.CamReport, options: run.CamOptions) -> tuple[Image.Image, ...]:
    """Heatmap overlay per row; detection rows also get their box, label and score."""
    pictures = run._pictures(inspector, loaded, nchw)
    out = []
    for row, image in enumerate(report.image_index):
        picture = compose.overlay_heatmap(pictures[int(image)], report.cam[row],
                                          alpha=options.alpha, cmap=options.cmap)
        if report.detections:
            picture = boxes.draw_detections(picture, [report.detections[row]],
                                            labels=inspector.labels,
                                            input_size=(nchw.shape[2], nchw.shape[3]))
        out.append(picture)
    return tuple(out)


def backprop(inspector: Inspector, images: Images, method: str,
             target: int | str | None = None, *, score: str | int | None = None,
             goal: seeding.TargetSpec | None = None, layer: str | int | None = None
             ) -> NDArray[np.float32]:
    """Return input-gradient views for any target kind (``run.backprop`` for classes).

    ``layer``: the Grad-CAM layer of ``guided-gradcam`` (None: ``cam_layers.cam_layer``'s default).

    Returns:
        saliency: (N, H, W) in [0, 1]; guided and guided-gradcam: (N, H, W, C) in [0, 1].

    Raises:
        InputError: unknown method, bad target, or several rows per image (one detection
            per image: pick it by rank, class or box).
    """
    return backprop_rows(inspector, images, method, target, score=score, goal=goal,
                         layer=layer)[0]


def backprop_rows(inspector: Inspector, images: Images, method: str,
                  target: int | str | None = None, *, score: str | int | None = None,
                  goal: seeding.TargetSpec | None = None, layer: str | int | None = None,
                  rank: int = 0) -> tuple[NDArray[np.float32], NDArray[np.int64] | None]:
    """Return ``backprop``'s views and, for classes, the (N,) class each explains (else None);
    ``rank`` r > 0 explains each image's (r+1)-th best class.

    Raises:
        InputError: as ``backprop``; ``rank`` > 0 for a target that is not a class.
    """
    if _classifier_goal(inspector, goal, score):
        return run.backprop_rows(inspector, images, method, target, score=score, layer=layer,
                                 rank=rank)
    if rank:
        raise InputError(f"explaining the class of rank {rank + 1} needs a classifier score "
                         "(N, classes); this target is not a class: explain one target")
    if method not in run.BACKPROP_METHODS:
        raise InputError(f"unknown backprop method {method!r}; choose one of "
                         f"{', '.join(run.BACKPROP_METHODS)}")
    batch = inspector.load_batch(images).array
    found, _ = resolve(inspector, batch, run.CamOptions(target=target, score=score, goal=goal))
    if len(found.image_index) != len(batch):
        raise InputError(f"{len(found.image_index)} targets for {len(batch)} images; a "
                         "backprop view explains one target per image")
    extra = _extra(goal)
    grads, _ = layer_gradients(inspector, batch, found, [inspector.spec.name], extra,
                               guided=method != "saliency")
    views = run._as_nchw(inspector, grads[0])
    if method == "saliency":
        return cam_maps.saliency(views), None
    if method == "guided-gradcam":
        tensor = cam_layers.cam_layer(inspector, layer)
        lgrad, lact = layer_gradients(inspector, batch, found, [tensor], extra)
        heat = cams.compute("grad_cam", cams.CamInputs(
            targets=np.zeros(len(batch), np.int64), input_size=(views.shape[2], views.shape[3]),
            activations=lact[0], gradients=lgrad[0])).cam
        views = cam_maps.guided_grad_cam(views, heat)
    return cam_maps.guided_backprop_image(views), None
