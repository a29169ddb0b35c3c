"""The functions and the ``Inspector`` users call: compose the modules, hold no maths."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from PIL import Image

import onnx_featviz.audit as audit
import onnx_featviz.autodiff as autodiff
import onnx_featviz.cam as cams
import onnx_featviz.catalog as catalog
import onnx_featviz.construction as construction
import onnx_featviz.fileio as fileio
import onnx_featviz.preprocess as preprocess
import onnx_featviz.render as render
import onnx_featviz.report as report
import onnx_featviz.rewrite as rewrite
import onnx_featviz.runtime as runtime
import onnx_featviz.weights as weights
from onnx_featviz.errors import InputError, ModelError
from onnx_featviz.structs import (
    META_LABELS,
    ChannelStats,
    ClassScore,
    InputSpec,
    Layer,
    ModelInfo,
    Prediction,
    Preprocessing,
    Progress,
    ProgressFn,
)

ModelSource = str | Path | bytes | onnx.ModelProto
#: Largest probe batch ``Inspector.info`` runs to find missing shapes (values, any dtype).
_MAX_EXAMPLE_ELEMENTS = 2**27
ImageSource = str | Path | Image.Image
Images = Sequence[ImageSource] | NDArray[np.generic] | ImageSource
STAGES = ("conv", "act", "both")
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PrepOptions:
    """Overrides of the model's preprocessing; ``None`` keeps what the model or preset says."""

    preset: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float | None = None
    channel_order: str | None = None
    size: tuple[int, int] | None = None
    resize: str | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    """A model-ready input batch and where each item came from."""

    array: NDArray[np.generic]
    sources: tuple[str, ...]
    images: tuple[Image.Image, ...] = ()


BACKPROP_METHODS = ("saliency", "guided", "guided-gradcam")

#: Window, stride and fill of the occlusion method (``CamOptions.occlusion``).
OcclusionOptions = cams.OcclusionOptions


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
    occlusion method's window, stride and fill (``cam.OcclusionOptions``; None: its defaults).
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
    occlusion: cams.OcclusionOptions | None = None


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


def load_model(model: ModelSource) -> onnx.ModelProto:
    """Return a ``ModelProto`` for a path, serialized bytes or a proto (never modified)."""
    if isinstance(model, onnx.ModelProto):
        return model
    return fileio.load_model(model)


class Inspector:
    """A model plus the onnxruntime sessions that serve it; use as a context manager.

    Args:
        model: path, serialized bytes or ``ModelProto`` (not modified).
        provider: ``"auto"``, ``"cuda"`` or ``"cpu"``.
        prep: preprocessing overrides (default: the model's metadata, else a per-input default).
        max_batch: largest batch sent to onnxruntime in one call.
        labels: class names (default: the model's ``featviz.labels`` metadata when present).
        transfer: ``"float32"``, or ``"float16"`` to move exposed float32 tensors off the
            device as float16 (half the bytes; returned as float32, exact to float16 rounding).

    Raises:
        ModelError: unreadable model; ProviderError: provider not usable.
    """

    def __init__(self, model: ModelSource, provider: str = "auto", *,
                 prep: PrepOptions | None = None, max_batch: int | None = 32,
                 labels: Sequence[str] | None = None, transfer: str = "float32") -> None:
        if transfer not in ("float32", "float16"):
            raise InputError(f"unknown transfer dtype {transfer!r}; choose float32 or float16")
        self.model = load_model(model)
        self.transfer = transfer
        self.provider = provider
        self.max_batch = max_batch
        self.spec: InputSpec = preprocess.infer_input_spec(self.model)
        self.preprocessing: Preprocessing = _resolve_prep(self.model, self.spec, prep)
        self.labels: tuple[str, ...] | None = (
            tuple(labels) if labels is not None else _model_labels(self.model))
        self._sessions: dict[tuple[str, tuple[str, ...]], runtime.Session] = {}
        self._grads: dict[tuple[str, tuple[str, ...]], autodiff.GradModel] = {}
        self._info: ModelInfo | None = None
        runtime.resolve_providers(provider)

    def __enter__(self) -> Inspector:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Release every session this inspector opened."""
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()

    # -- model description -------------------------------------------------------------
    @property
    def info(self) -> ModelInfo:
        """The layer catalog; shapes inference cannot give come from one real run."""
        if self._info is None:
            info = catalog.read_catalog(self.model)
            missing = [lay.output for lay in info.layers if lay.exposable and lay.shape is None
                       and lay.output]
            if missing:
                info = self._fill_shapes(missing)
            self._info = info
        return self._info

    @property
    def layers(self) -> tuple[Layer, ...]:
        """Every layer in graph order."""
        return self.info.layers

    def layer(self, name: str | int) -> Layer:
        """Return a layer by node name, output tensor name or index (close matches on error)."""
        return self.info.layer(name)

    def _fill_shapes(self, tensors: list[str]) -> ModelInfo:
        shape = _example_shape(self.spec, self.preprocessing)
        if int(np.prod(shape, dtype=np.float64)) > _MAX_EXAMPLE_ELEMENTS:
            # a declared dim such as 10**9 would make the probe batch terabytes big
            log.warning("not running the model to find shapes: its input %s would need %s "
                        "values", self.spec.name, shape)
            return catalog.read_catalog(self.model)
        batch = np.zeros(shape, self.spec.dtype)
        try:
            values = self._run(batch, tensors)
        except (ModelError, InputError):
            return catalog.read_catalog(self.model)
        shapes = {k: tuple(int(d) for d in v.shape) for k, v in values.items()}
        dtypes = {k: str(v.dtype) for k, v in values.items()}
        return catalog.read_catalog(self.model, shapes=shapes, dtypes=dtypes)

    # -- inputs --------------------------------------------------------------------------
    def load_batch(self, images: Images) -> Batch:
        """Turn image paths, PIL images, ``.npy``/``.npz`` paths or an array into a batch.

        Returns:
            ``Batch`` whose array fits the model input (layout, size, dtype).

        Raises:
            InputError: unreadable image, wrong channel count, wrong array shape.
        """
        if isinstance(images, np.ndarray):
            checked = preprocess.check_batch(images, self.spec)
            return Batch(checked, _row_sources("array", len(checked)))
        items = [images] if isinstance(images, str | Path | Image.Image) else list(images)
        if not items:
            raise InputError("no images were given; pass at least one image path or array")
        arrays, pics = [], []
        sources: list[str] = []
        for item in items:
            for source, array, pic in self._load_item(item):
                arrays.append(array)
                sources.extend(_row_sources(source, len(array)))
                pics.extend([pic] if pic is not None else [])
        return Batch(np.concatenate(arrays), tuple(sources), tuple(pics))

    def _load_item(self, item: ImageSource
                   ) -> Iterator[tuple[str, NDArray[np.generic], Image.Image | None]]:
        if isinstance(item, Image.Image):
            yield "image", self._image_array(item), self.display(item)
            return
        path = Path(item)
        if path.suffix.lower() in (".npy", ".npz"):
            for key, array in fileio.load_array_file(path).items():
                checked = preprocess.check_batch(array, self.spec)
                yield f"{path}:{key}", checked, None
            return
        image = fileio.load_image(path)
        yield str(path), self._image_array(image), self.display(image)

    def _image_array(self, image: Image.Image) -> NDArray[np.generic]:
        return preprocess.images_to_batch([image], self.spec, self.preprocessing)

    def display(self, image: Image.Image) -> Image.Image:
        """Return the image resized and cropped as the model sees it, un-normalized (RGB)."""
        return preprocess.display_image(image, self.spec, self.preprocessing)

    # -- running -------------------------------------------------------------------------
    def session(self, tensors: Sequence[str] = (), *, stats: bool = False) -> runtime.Session:
        """Return (opening once) a session whose outputs include ``tensors``.

        With ``stats=True`` the session instead outputs the per-channel reductions of
        ``tensors`` (see ``rewrite.append_channel_stats``).
        """
        key = ("stats" if stats else "expose", tuple(tensors))
        if key not in self._sessions:
            model = self.model
            if stats:
                model = rewrite.append_channel_stats(self.model, list(key[1]))
            elif key[1]:
                model = rewrite.expose_tensors(self.model, list(key[1]),
                                               float16=self.transfer == "float16")
            self._sessions[key] = runtime.Session(model, self.provider)
        return self._sessions[key]

    def _run(self, batch: NDArray[np.generic], tensors: Sequence[str], *,
             exposed: Sequence[str] | None = None) -> dict[str, NDArray[np.generic]]:
        """Fetch ``tensors`` from the session that exposes ``exposed`` (default: the same)."""
        session = self.session(tuple(exposed if exposed is not None else tensors))
        wanted = [_exposed_name(session, t) for t in tensors]
        values = session.run({self.spec.name: batch}, wanted, max_batch=self.max_batch)
        return {t: values[w] for t, w in zip(tensors, wanted, strict=True)}

    def outputs(self, images: Images) -> dict[str, NDArray[np.generic]]:
        """Run the unmodified model and return its own outputs."""
        batch = self.load_batch(images).array
        session = self.session()
        return session.run({self.spec.name: batch}, max_batch=self.max_batch)

    def predict(self, images: Images, top_k: int = 5) -> list[Prediction]:
        """Return the top-k classes per input with probabilities (softmax applied to logits).

        Raises:
            InputError: ``top_k`` < 1; ModelError: the model has no classifier-like output.
        """
        if top_k < 1:
            raise InputError(f"top_k must be at least 1, got {top_k}")
        loaded = self.load_batch(images)
        if not self.info.outputs:
            raise ModelError("the model has no graph output to read scores from; export it "
                             "with its classifier output")
        output = self.info.outputs[0].name
        scores = self.session().run({self.spec.name: loaded.array}, [output],
                                    max_batch=self.max_batch)[output]
        flat = np.asarray(scores, np.float64).reshape(len(scores), -1)
        probs, applied = _as_probabilities(flat)
        return [self._prediction(src, output, row, top_k, applied)
                for src, row in zip(loaded.sources, probs, strict=True)]

    def _prediction(self, source: str, output: str, probs: NDArray[np.float64], top_k: int,
                    applied: bool) -> Prediction:
        order = np.argsort(-probs, kind="stable")[:top_k]
        labels = self.labels if self.labels and len(self.labels) == len(probs) else None
        top = tuple(ClassScore(int(i), labels[i] if labels else None, float(probs[i]))
                    for i in order)
        return Prediction(source, output, top, applied)

    def layer_tensors(self, layers: Sequence[str | int] | None = None, stage: str = "conv"
                      ) -> list[str]:
        """Resolve layer names/indices (default: every conv layer) to tensors for a stage.

        Args:
            layers: node names, tensor names or indices; None for all conv layers.
            stage: ``"conv"`` (the layer's output), ``"act"`` (its activation) or ``"both"``.
        """
        if stage not in STAGES:
            raise InputError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
        chosen = self.info.conv_layers if layers is None else [self.layer(n) for n in layers]
        if layers is None and not chosen:
            raise InputError("the model has no conv layers; name layers explicitly "
                             "(all names are in ModelInfo.layers)")
        tensors: list[str] = []
        for lay in chosen:
            _check_exposable(lay)
            for tensor in _stage_tensors(lay, stage):
                if tensor not in tensors:
                    tensors.append(tensor)
        return tensors

    def activations(self, images: Images, layers: Sequence[str | int] | None = None, *,
                    stage: str = "conv", float32: bool = True,
                    max_bytes: int | None = None) -> dict[str, NDArray[np.generic]]:
        """Return the tensors of ``layers`` (default: every conv) for the inputs, in graph order.

        Args:
            images: image paths, PIL images, .npy/.npz paths or a model-ready array.
            layers: node names, tensor names or indices.
            stage: ``"conv"``, ``"act"`` or ``"both"`` (see ``layer_tensors``).
            float32: convert float16 tensors to float32 (int8 tensors are returned dequantized).
            max_bytes: bound on the bytes one onnxruntime pass may produce (None: no bound).

        Returns:
            Tensor name -> array (N, ...) exactly as the model computed it.
        """
        batch = self.load_batch(images).array
        return self.capture(batch, self.layer_tensors(layers, stage), float32=float32,
                            max_bytes=max_bytes)

    def capture(self, batch: NDArray[np.generic], tensors: Sequence[str], *,
                float32: bool = True, max_bytes: int | None = None
                ) -> dict[str, NDArray[np.generic]]:
        """Return ``tensors`` (names, not layers) for a model-ready batch, in the order given."""
        parts: dict[str, list[NDArray[np.generic]]] = {t: [] for t in tensors}
        for _, group in self.stream(batch, tensors, float32=float32, max_bytes=max_bytes):
            for name, value in group.items():
                parts[name].append(value)
        # one pass (the usual case) needs no copy
        return {t: parts[t][0] if len(parts[t]) == 1 else np.concatenate(parts[t])
                for t in tensors}

    def stream(self, batch: NDArray[np.generic], tensors: Sequence[str], *, float32: bool = True,
               max_bytes: int | None = None
               ) -> Iterator[tuple[slice, dict[str, NDArray[np.generic]]]]:
        """Yield ``(batch_slice, {tensor: array})`` groups whose bytes stay under ``max_bytes``.

        The batch is split into chunks so that one pass never holds more than ``max_bytes`` of
        exposed tensors (counted twice: onnxruntime's buffers and the returned arrays). When one
        sample alone exceeds the bound, the tensors are split into
        groups that each run in their own short-lived session (onnxruntime allocates every graph
        output of a session on each pass, fetched or not); all chunks of a group come before the
        next group.
        """
        sizes = self._sample_bytes(tensors)
        plan = _plan_passes(tensors, sizes, len(batch), max_bytes, self.max_batch)
        if len(plan_groups(plan)) == 1:
            for rows, group in plan:
                values = self._run(batch[rows], group)
                yield rows, {t: _to_host(values[t], float32) for t in group}
            return
        for group, chunks in plan_groups(plan):
            with runtime.Session(rewrite.expose_tensors(self.model, group), self.provider) as s:
                wanted = [_exposed_name(s, t) for t in group]
                for rows in chunks:
                    values = s.run({self.spec.name: batch[rows]}, wanted)
                    yield rows, {t: _to_host(values[w], float32)
                                 for t, w in zip(group, wanted, strict=True)}

    def _sample_bytes(self, tensors: Sequence[str]) -> dict[str, int]:
        info = self.info
        out = {}
        for tensor in tensors:
            lay = info.layer(tensor)
            shape = lay.shape if tensor == lay.output else None
            known = [d for d in (shape or ())[1:] if isinstance(d, int)]
            out[tensor] = int(np.prod(known)) * 4 if shape and len(known) == len(shape) - 1 else 0
        return out

    def filters(self, layer: str | int) -> weights.Filters:
        """Return the float32 filters ``(O, I/groups, kH, kW)`` and bias of a conv layer."""
        return weights.read_filters(self.model, self.layer(layer))

    def stats(self, images: Images, layers: Sequence[str | int] | None = None, *,
              stage: str = "conv") -> dict[str, ChannelStats]:
        """Return per-channel statistics of ``layers`` over all inputs, reduced on the device.

        Each chunk of ``max_batch`` rows runs once with the reductions of
        ``rewrite.append_channel_stats`` (only (N, C) statistics leave the device); a chunk
        whose sums come out non-finite runs once more to count its NaN/Inf
        (``rewrite.append_nonfinite_counts``). Chunks are merged in float64
        (``audit.merge_channel_stats``); ``at_low`` / ``at_high`` are set for Clip outputs.

        Returns:
            Tensor name -> ``ChannelStats``, in the order of ``layer_tensors``.
        """
        batch = self.load_batch(images).array
        tensors = self.layer_tensors(layers, stage)
        session = self.session(tensors, stats=True)
        names = [n for n in session.output_names if n.startswith("featviz/stats/")]
        counts = ("nonfinite", tuple(tensors))
        low_zero = {t: b[0] == 0.0 for t, b in rewrite.clip_bounds(self.model, tensors).items()}
        merged: dict[str, ChannelStats] = {}
        step = min(v for v in (self.max_batch, self.spec.batch, len(batch)) if v)
        for start in range(0, len(batch), step):
            feed = {self.spec.name: batch[start:start + step]}
            values = session.run(feed, names, split=False)
            if not all(np.isfinite(values[rewrite.stat_output("sum", t)]).all() for t in tensors):
                if counts not in self._sessions:
                    self._sessions[counts] = runtime.Session(
                        rewrite.append_nonfinite_counts(self.model, tensors), self.provider)
                wanted = [rewrite.stat_output(rewrite.NONFINITE_STAT, t) for t in tensors]
                values.update(self._sessions[counts].run(feed, wanted, split=False))
            for tensor in tensors:
                part = _batch_stats(values, tensor, low_zero[tensor])
                old = merged.get(tensor)
                merged[tensor] = part if old is None else audit.merge_channel_stats(old, part)
        return merged

    # -- class-activation maps -----------------------------------------------------------
    def cam(self, images: Images, options: CamOptions, *,
            progress: ProgressFn | None = None) -> CamReport:
        """Return class-activation maps of ``options.method`` for each input.

        Gradients come from the model's own ONNX reverse graph (``autodiff``), run in the same
        kind of session as the forward pass. ``progress`` is called as the forward passes of
        Score-CAM, Ablation-CAM and occlusion advance (unit: ``row``).

        Returns:
            ``CamReport`` with ``cam`` (R, H, W) in [0, 1] at the input size, ``layer_cam``
            (R, h, w) raw, targets (R,), overlays on the un-normalized inputs; R = N inputs, or
            N * k with ``explain_top=k``.

        Raises:
            InputError: unknown method, target out of range, label not found, a layer without
                spatial dims; ModelError: an op on the gradient path has no rule.
        """
        method = cams.resolve_method(options.method)
        loaded = self.load_batch(images)
        layer = self.cam_layer(options.layer)
        entry = cams.METHODS[method]
        run = self._cam_pass(loaded.array, layer, entry, options)
        score, scores, targets, index, rank, batch, cam_targets, acts, grads = run
        nchw = self._as_nchw(batch)
        inputs = cams.CamInputs(
            targets=cam_targets, input_size=(nchw.shape[2], nchw.shape[3]), activations=acts,
            gradients=grads, input_batch=nchw if entry.needs_input else None,
            forward=self._forward_fn(score) if entry.needs_forward else None,
            forward_masked=(self._masked_forward_fn(score, nchw, acts.shape[2:])
                            if method == "score_cam" else None),
            forward_from_layer=(self._layer_forward_fn(layer, score, batch)
                                if entry.needs_layer_forward else None),
            occlusion=options.occlusion or cams.OcclusionOptions(),
            batch_size=options.batch_size, progress=_row_progress(progress))
        result = cams.compute(method, inputs)
        probs, _ = _as_probabilities(np.asarray(scores, np.float64))
        top = tuple(self._prediction(src, score, row, options.top_k or 5, True).top
                    for src, row in zip(loaded.sources, probs, strict=True))
        overlays: tuple[Image.Image, ...] = ()
        if options.overlays:
            pictures = self._pictures(loaded, self._as_nchw(loaded.array))
            overlays = tuple(render.overlay_heatmap(pictures[i], heat, alpha=options.alpha,
                                                    cmap=options.cmap)
                             for i, heat in zip(index, result.cam, strict=True))
        return CamReport(method, layer, score, result.targets, top, result.cam,
                         result.layer_cam, overlays, loaded.sources, index, rank)

    def _cam_pass(self, batch: NDArray[np.generic], layer: str, entry: cams.CamMethod,
                  options: CamOptions) -> tuple[Any, ...]:
        """Run what a method needs before ``cam.compute``.

        Returns:
            (score tensor, (N, classes) scores, targets (R,), image index (R,), rank (R,),
            the batch the method sees, its targets, activations, gradients or None).
        """
        n = len(batch)
        if entry.needs_gradients and options.target is None and options.explain_top == 1:
            score, scores, targets, grads, acts = self._top1_gradients(batch, layer,
                                                                        options.score)
            index, rank = np.arange(n, dtype=np.int64), np.zeros(n, np.int64)
            return score, scores, targets, index, rank, batch, targets, acts, grads
        score, scores, shape, acts = self._cam_forward(batch, layer, options.score,
                                                       gradients=entry.needs_gradients)
        targets, index, rank = self._cam_targets(scores, options)
        if not entry.needs_gradients:  # the forward-pass methods serve T targets per image
            return (score, scores, targets, index, rank, batch, targets.reshape(n, -1), acts,
                    None)
        rows = batch[index]  # each (image, class) row needs its own reverse pass
        grads, acts = self._gradients(rows, score, layer, targets, (len(rows), *shape[1:]),
                                      keep=[layer])
        return score, scores, targets, index, rank, rows, targets, acts, grads

    def _top1_gradients(self, batch: NDArray[np.generic], layer: str,
                        score: str | int | None) -> tuple[str, NDArray[np.float32],
                                                          NDArray[np.int64],
                                                          NDArray[np.float32],
                                                          NDArray[np.float32]]:
        """One call: scores, each row's top-1 class, its gradient at ``layer``, activations.

        The gradient model's seed is the one-hot arg-max of the score computed in the graph
        (``autodiff.seed_top1``), so no separate forward pass picks the classes.
        """
        name = self.score_tensor(score)
        key = ("top1", (name, layer))
        if key not in self._sessions:
            grad = autodiff.differentiate(self.model, of=name, wrt=[layer], keep_outputs=[layer])
            fused = autodiff.seed_top1(grad)
            self._grads[key] = fused
            self._sessions[key] = runtime.Session(fused.model, self.provider)
        session, fused = self._sessions[key], self._grads[key]
        names = [name, fused.outputs[-1], fused.gradient(layer), layer]
        values = session.run({self.spec.name: batch}, names, max_batch=self.max_batch)
        scores = _class_scores(values[name], name)
        return (name, scores, np.asarray(values[names[1]], np.int64),
                np.asarray(values[names[2]], np.float32), np.asarray(values[layer], np.float32))

    def _cam_targets(self, scores: NDArray[np.float32], options: CamOptions
                     ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        """Return (targets, image index, rank) per CAM row (image-major for ``explain_top``)."""
        n = len(scores)
        if options.explain_top < 1:
            raise InputError(f"explain_top must be >= 1, got {options.explain_top}")
        if options.explain_top > 1 and options.target is not None:
            raise InputError(f"explain_top={options.explain_top} explains each image's best "
                             f"classes, but target={options.target!r} was also given; use one")
        if options.explain_top == 1:
            targets = cams.select_targets(scores, options.target, labels=self.labels)
            rank = np.full(n, 0 if options.target is None else -1, np.int64)
            return targets, np.arange(n, dtype=np.int64), rank
        k = options.explain_top
        best = cams.select_targets(scores, None, labels=self.labels, top_k=k)
        return (best.reshape(-1), np.repeat(np.arange(n, dtype=np.int64), k),
                np.tile(np.arange(k, dtype=np.int64), n))

    def cam_layer(self, layer: str | int | None = None) -> str:
        """Return the tensor a CAM uses: a conv layer's activation output, else the layer output.

        Default: the last conv layer whose output has spatial size > 1.

        Raises:
            InputError: the layer has no spatial dims; LayerNotFoundError: no such layer.
        """
        if layer is None:
            for lay in reversed(self.info.conv_layers):
                tensor = _stage_tensors(lay, "act")[0]
                if _spatial(self.info.layer(tensor).shape) > 1:
                    return tensor
            raise InputError("the model has no conv layer with spatial size > 1; name a layer "
                             "with spatial dims (N, C, h, w) via layer=")
        lay = self.layer(layer)
        _check_exposable(lay)
        tensor = _stage_tensors(lay, "act")[0]
        shape = self.info.layer(tensor).shape
        if shape is not None and (len(shape) != 4 or _spatial(shape) == 1):
            raise InputError(f"layer {lay.name!r} (tensor {tensor!r}, shape {shape}) has no "
                             "spatial dims; a CAM needs an (N, C, h, w) layer with h*w > 1: "
                             "pick a conv layer")
        return tensor

    def score_tensor(self, score: str | int | None = None) -> str:
        """Return the tensor CAM targets are scored on.

        Args:
            score: a layer or tensor holding one score per class, (N, classes); None: the
                pre-softmax logits when the graph ends in Softmax, else output 0.
        """
        if score is None:
            return catalog.find_softmax_logits(self.model) or self.info.outputs[0].name
        if isinstance(score, str) and score in [o.name for o in self.info.outputs]:
            return score
        return self.layer(score).output

    def _scores(self, batch: NDArray[np.generic], score: str | int | None = None
                ) -> tuple[str, NDArray[np.float32], tuple[int, ...]]:
        """Return the score tensor's name, its values as (N, classes) and its real shape."""
        name = self.score_tensor(score)
        values = self._run(batch, [name], exposed=self._score_exposure(name))[name]
        return name, _class_scores(values, name), tuple(values.shape)

    def _score_exposure(self, score: str) -> tuple[str, ...] | None:
        """The plain session serves a model output; any other score tensor must be exposed."""
        return () if score in [o.name for o in self.info.outputs] else None

    def _grad_session(self, of: str, wrt: str, *, guided: bool = False,
                      keep: Sequence[str] = ()) -> tuple[runtime.Session, autodiff.GradModel]:
        """Return (building once) the gradient model of ``of`` w.r.t. ``wrt`` and its session."""
        key = ("guided" if guided else "grad", (of, wrt, *keep))
        if key not in self._sessions:
            grad = autodiff.differentiate(self.model, of=of, wrt=[wrt], guided=guided,
                                          keep_outputs=list(keep))
            self._grads[key] = grad
            self._sessions[key] = runtime.Session(grad.model, self.provider)
        return self._sessions[key], self._grads[key]

    def _gradients(self, batch: NDArray[np.generic], of: str, wrt: str,
                   targets: NDArray[np.int64], shape: tuple[int, ...], *, guided: bool = False,
                   keep: Sequence[str] = ()) -> list[NDArray[np.float32]]:
        """Return the gradient w.r.t. ``wrt`` of each row's target score, then ``keep`` values."""
        session, grad = self._grad_session(of, wrt, guided=guided, keep=keep)
        onehot = np.zeros((len(targets), int(np.prod(shape[1:]))), np.float32)
        onehot[np.arange(len(targets)), targets] = 1.0
        seed = onehot.reshape(shape).astype(session.input_types.get(grad.seed, "float32"))
        names = [grad.gradient(wrt), *keep]
        values = session.run({self.spec.name: batch, grad.seed: seed}, names,
                             max_batch=self.max_batch)
        return [np.asarray(values[n], np.float32) for n in names]

    def _cam_forward(self, batch: NDArray[np.generic], layer: str, score: str | int | None, *,
                     gradients: bool
                     ) -> tuple[str, NDArray[np.float32], tuple[int, ...], NDArray[np.float32]]:
        """One forward pass: (score tensor, (N, classes) scores, their shape, activations).

        Gradient methods get the activations from their gradient pass, so only the scores are
        fetched here (the plain session); the others take both from one exposed pass.
        """
        if gradients:
            name, scores, shape = self._scores(batch, score)
            return name, scores, shape, np.zeros((0,), np.float32)
        name = self.score_tensor(score)
        got = self.capture(batch, [layer, name])
        return (name, _class_scores(got[name], name), tuple(got[name].shape),
                np.asarray(got[layer], np.float32))

    def _forward_fn(self, score: str) -> cams.ForwardFn:
        exposed = self._score_exposure(score)

        def forward(rows: NDArray[np.floating]) -> NDArray[np.floating]:
            model_rows = self._from_nchw(np.asarray(rows, np.float32))
            values = self._run(model_rows, [score], exposed=exposed)[score]
            return np.asarray(values, np.float32).reshape(len(values), -1)

        return forward

    def _masked_forward_fn(self, score: str, images: NDArray[np.float32],
                           map_size: tuple[int, ...]) -> cams.MaskedForwardFn:
        """Score-CAM rows masked inside the session (``rewrite.mask_input``).

        Only the layer maps, a row -> image index and the images a call uses are fed; the
        model's fixed batch size (Caffe2 zoo: 1), if any, bounds the rows per call.
        """
        size = (int(map_size[0]), int(map_size[1]))
        key = ("mask", (score, *map(str, size)))
        if key not in self._sessions:
            outputs = [o.name for o in self.info.outputs]
            base = self.model if score in outputs else rewrite.expose_tensors(self.model, [score])
            masked = rewrite.mask_input(base, map_size=size, input_size=images.shape[2:4],
                                        layout=self.spec.layout)
            self._sessions[key] = runtime.Session(masked, self.provider)
        session = self._sessions[key]
        name = _exposed_name(session, score)
        first = self.spec.shape[0] if self.spec.shape else None
        fixed = first if isinstance(first, int) and first > 0 else None

        def forward(maps: NDArray[np.float32], image_index: NDArray[np.intp]
                    ) -> NDArray[np.floating]:
            step = fixed or len(maps)
            parts = []
            for start in range(0, len(maps), step):
                used, local = np.unique(image_index[start:start + step], return_inverse=True)
                feeds: dict[str, NDArray[np.generic]] = {
                         rewrite.MASK_IMAGES: images[used],
                         rewrite.MASK_INDEX: local.astype(np.int64),
                         rewrite.MASK_MAPS: np.asarray(maps[start:start + step], np.float32)}
                parts.append(np.asarray(session.run(feeds, [name], split=False)[name]))
            values = np.concatenate(parts)
            return values.reshape(len(values), -1).astype(np.float32)

        return forward

    def _layer_forward_fn(self, layer: str, score: str, batch: NDArray[np.generic]
                          ) -> cams.LayerForwardFn:
        """Scores of the network after ``layer`` fed with a layer batch (for Ablation-CAM).

        The model cut at ``layer`` (``rewrite.cut_at``) is built once and kept in the session
        dict under ``("cut", (layer, score))``. Where the rest of the graph still reads the model
        input (a skip connection from before ``layer``), row ``b`` is fed image
        ``batch[image_index[b]]``.
        """
        key = ("cut", (layer, score))
        if key not in self._sessions:
            cut = rewrite.expose_tensors(rewrite.cut_at(self.model, layer), [score])
            self._sessions[key] = runtime.Session(cut, self.provider)
        session = self._sessions[key]
        dtype = session.input_types.get(layer, "float32")

        def forward(rows: NDArray[np.floating], image_index: NDArray[np.intp]
                    ) -> NDArray[np.floating]:
            feeds: dict[str, NDArray[np.generic]] = {layer: np.asarray(rows).astype(dtype)}
            if self.spec.name in session.input_types:
                feeds[self.spec.name] = batch[np.asarray(image_index, np.intp)]
            values = session.run(feeds, [score], max_batch=self.max_batch)[score]
            return np.asarray(values, np.float32).reshape(len(values), -1)

        return forward

    def _as_nchw(self, batch: NDArray[np.generic]) -> NDArray[np.float32]:
        arr = np.asarray(batch, np.float32)
        if self.spec.layout == "NHWC":
            return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
        return arr[:, None] if self.spec.layout == "NHW" else arr

    def _from_nchw(self, rows: NDArray[np.float32]) -> NDArray[np.generic]:
        if self.spec.layout == "NHWC":
            rows = np.ascontiguousarray(rows.transpose(0, 2, 3, 1))
        elif self.spec.layout == "NHW":
            rows = rows[:, 0]
        return rows.astype(self.spec.dtype)

    def _pictures(self, loaded: Batch, nchw: NDArray[np.float32]) -> list[Image.Image]:
        if len(loaded.images) == len(nchw):
            return list(loaded.images)
        return [_gray_picture(x) for x in nchw]

    def backprop(self, images: Images, method: str, target: int | str | None = None, *,
                 score: str | int | None = None) -> NDArray[np.float32]:
        """Return input-space gradient views: ``saliency``, ``guided`` or ``guided-gradcam``.

        ``score`` picks the (N, classes) tensor targets are scored on (see ``CamOptions``).

        Returns:
            saliency: (N, H, W) in [0, 1]; guided and guided-gradcam: (N, H, W, C) in [0, 1]
            (the model's channel order).

        Raises:
            InputError: unknown method, bad target; ModelError: an op without gradient rule.
        """
        if method not in BACKPROP_METHODS:
            raise InputError(f"unknown backprop method {method!r}; choose one of "
                             f"{', '.join(BACKPROP_METHODS)}")
        batch = self.load_batch(images).array
        score, scores, full = self._scores(batch, score)
        targets = cams.select_targets(scores, target, labels=self.labels)
        grads = self._as_nchw(self._gradients(batch, score, self.spec.name, targets, full,
                                              guided=method != "saliency")[0])
        if method == "saliency":
            return cams.saliency(grads)
        if method == "guided-gradcam":
            layer = self.cam_layer(None)
            lgrad, acts = self._gradients(batch, score, layer, targets, full, keep=[layer])
            heat = cams.compute("grad_cam", cams.CamInputs(
                targets=targets, input_size=(grads.shape[2], grads.shape[3]),
                activations=acts, gradients=lgrad)).cam
            grads = cams.guided_grad_cam(grads, heat)
        return cams.guided_backprop_image(grads)


# -- pictures for the command line ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Picture:
    """A rendered image and the relative file name it should be saved under."""

    name: str
    image: Image.Image


@dataclass(frozen=True, slots=True)
class Rendered:
    """Pictures plus the raw arrays behind them (for ``.npz`` export)."""

    pictures: tuple[Picture, ...]
    arrays: Mapping[str, NDArray[np.generic]]


@dataclass(frozen=True, slots=True)
class FilterRenderOptions:
    """How ``render_model_filters`` draws filters."""

    annotate: bool = False
    cmap: str = "RdBu_r"


@dataclass(frozen=True, slots=True)
class MapRenderOptions:
    """How ``render_feature_maps`` draws feature maps.

    ``stage``: ``"conv"``, ``"act"`` or ``"both"`` (both adds a side-by-side picture);
    ``reduce``: ``"none"``, ``"mean"`` or ``"max"`` over channels; ``channels``: a slice of
    channels to draw; ``cmap``: None picks viridis for activations and a diverging map centred on
    zero for pre-activation conv outputs; ``every_layer``: every node output (Keras-style);
    ``normalize``: ``"channel"`` or ``"layer"``.
    """

    stage: str = "act"
    reduce: str = "none"
    channels: slice | None = None
    cmap: str | None = None
    every_layer: bool = False
    normalize: str = "channel"


def render_model_filters(model: ModelSource, layers: Sequence[str | int] | None,
                         options: FilterRenderOptions | None = None) -> Rendered:
    """Draw the filters of ``layers`` (default: every conv layer) with a diverging colormap.

    Returns:
        One picture per layer (``filters_<layer>.png``); arrays keyed by layer name hold the
        float32 ``(O, I/groups, kH, kW)`` weights, dequantized.
    """
    opts = options or FilterRenderOptions()
    proto = load_model(model)
    info = catalog.read_catalog(proto)
    chosen = info.conv_layers if layers is None else tuple(info.layer(n) for n in layers)
    if not chosen:
        raise ModelError("the model has no conv layers, so it has no filters to draw")
    pictures, arrays = [], {}
    for layer in chosen:
        found = weights.read_filters(proto, layer)
        title = f"{layer.name}  weight {'x'.join(map(str, found.weight.shape))}"
        image = render.render_filters(found.weight, render.FilterOptions(
            annotate=opts.annotate, cmap=opts.cmap, title=title))
        pictures.append(Picture(f"filters_{_file_stem(layer.name)}.png", image))
        arrays[layer.name] = found.weight
    return Rendered(tuple(pictures), arrays)


def render_feature_maps(inspector: Inspector, images: Images,
                        layers: Sequence[str | int] | None,
                        options: MapRenderOptions | None = None) -> Rendered:
    """Draw the feature maps of ``layers`` for every input: one grid of channels per tensor.

    Returns:
        Pictures named ``<input>/<tensor>.png`` (and ``<input>/<layer>_before_after.png`` for
        stage ``both``); arrays keyed by tensor name exactly as the model computed them.
    """
    opts = options or MapRenderOptions()
    batch = inspector.load_batch(images)
    tensors = _map_tensors(inspector, layers, opts)
    arrays = inspector.capture(batch.array, tensors)
    pictures: list[Picture] = []
    for index, folder in enumerate(_input_folders(batch.sources)):
        grids = {t: _map_picture(inspector, t, arrays[t][index], opts) for t in tensors
                 if arrays[t].ndim >= 2}
        pictures += [Picture(f"{folder}/{_file_stem(t)}.png", g) for t, g in grids.items()]
        pictures += _before_after(inspector, grids, folder) if opts.stage == "both" else []
    return Rendered(tuple(pictures), arrays)


def render_cam(report: CamReport) -> Rendered:
    """Return ``<input>/cam_<method>.png`` overlays and ``<input>/cam_<method>_heatmap.png``.

    With several CAMs per input (``explain_top``) the names end in ``_top<rank>_class<index>``.
    Arrays: ``cam`` (R, H, W), ``layer_cam`` (R, h, w), ``target`` (R,) and ``image`` (R,) (the
    input row each CAM explains) for ``.npz`` export.
    """
    folders = _input_folders(report.sources)
    index = _cam_rows(report)
    several = len(index) > len(set(index.tolist()))
    pictures: list[Picture] = []
    for row, image in enumerate(index):
        stem = f"{folders[image]}/cam_{report.method}"
        if several:
            stem += f"_top{int(report.rank[row]) + 1}_class{int(report.targets[row])}"
        heat = Image.fromarray(render.apply_colormap(report.cam[row], "jet"))
        if report.overlays:
            pictures.append(Picture(f"{stem}.png", report.overlays[row]))
        pictures.append(Picture(f"{stem}_heatmap.png", heat))
    arrays: dict[str, NDArray[np.generic]] = {
        "cam": report.cam, "layer_cam": report.layer_cam, "target": report.targets,
        "image": index}
    return Rendered(tuple(pictures), arrays)


def _cam_rows(report: CamReport) -> NDArray[np.int64]:
    if len(report.image_index) == len(report.cam):
        return report.image_index
    return np.arange(len(report.cam), dtype=np.int64)


def cam_to_json(report: CamReport) -> list[dict[str, Any]]:
    """Return per CAM: image, target, rank, layer, score tensor and the image's top classes.

    ``rank`` is 1 for the image's best class, 2 for the second (as in the ``_top<rank>`` file
    names), and null when the target was given rather than picked from the scores.
    """
    index = _cam_rows(report)
    rank = report.rank if len(report.rank) == len(index) else np.zeros(len(index), np.int64)
    return [{"image": report.sources[int(i)], "method": report.method,
             "target": int(report.targets[row]),
             "rank": int(rank[row]) + 1 if rank[row] >= 0 else None,
             "layer": report.layer, "score_tensor": report.score_tensor,
             "top": [{"index": c.index, "label": c.label, "probability": c.score}
                     for c in report.top[int(i)]]}
            for row, i in enumerate(index)]


def render_backprop(inspector: Inspector, images: Images, method: str,
                    target: int | str | None = None, *,
                    score: str | int | None = None) -> Rendered:
    """Return one ``<input>/backprop_<method>.png`` per input (see ``Inspector.backprop``)."""
    batch = inspector.load_batch(images)
    views = inspector.backprop(batch.array, method, target, score=score)
    pictures = []
    for index, folder in enumerate(_input_folders(batch.sources)):
        pixels = np.round(np.clip(views[index], 0.0, 1.0) * 255).astype(np.uint8)
        if pixels.ndim == 3 and pixels.shape[-1] != 3:
            pixels = pixels[..., 0]  # one-channel models: guided views are gray
        image = Image.fromarray(pixels)
        pictures.append(Picture(f"{folder}/backprop_{method}.png", image))
    return Rendered(tuple(pictures), {method: views})


def _map_tensors(inspector: Inspector, layers: Sequence[str | int] | None,
                 opts: MapRenderOptions) -> list[str]:
    if opts.every_layer and layers is None:
        return rewrite.all_tensors(inspector.info)
    return inspector.layer_tensors(layers, opts.stage)


def _map_picture(inspector: Inspector, tensor: str, value: NDArray[np.generic],
                 opts: MapRenderOptions) -> Image.Image:
    maps = np.asarray(value, np.float32)
    maps = maps.reshape((1, 1, -1)) if maps.ndim == 1 else maps.reshape((-1, *maps.shape[-2:]))
    layer = inspector.layer(tensor)
    pre_activation = layer.is_conv and tensor == layer.output and layer.activation is not None
    title = f"{layer.name} [{tensor}]" if layer.name != tensor else tensor
    if opts.reduce != "none":
        count = len(maps)
        maps = render.reduce_maps(maps, opts.reduce)
        return render.tile_grid(maps, render.GridOptions(
            cmap=opts.cmap or ("RdBu_r" if pre_activation else "viridis"),
            symmetric=pre_activation, labels=False, colorbar=True, mode="layer", min_tile=224,
            title=f"{title} {opts.reduce} of {count} channels", shape=tuple(value.shape)))
    start = _check_channels(opts.channels, len(maps), tensor)
    chosen = maps[opts.channels] if opts.channels else maps
    return render.tile_grid(chosen, render.GridOptions(
        cmap=opts.cmap or ("RdBu_r" if pre_activation else "viridis"), symmetric=pre_activation,
        mode=opts.normalize, label_start=start, colorbar=True, title=title,
        shape=tuple(value.shape)))


def _check_channels(channels: slice | None, count: int, tensor: str) -> int:
    if channels is None:
        return 0
    start = channels.start or 0
    stop = count if channels.stop is None else channels.stop
    if start >= count or stop > count or stop <= start:
        raise InputError(f"channel range {start}:{stop} does not fit tensor {tensor!r}, which "
                         f"has {count} channels (0..{count - 1}); choose a range inside it")
    return start


def _before_after(inspector: Inspector, grids: Mapping[str, Image.Image],
                  folder: str) -> list[Picture]:
    pairs = []
    for layer in inspector.info.conv_layers:
        act = layer.activation
        if act and act != layer.output and layer.output in grids and act in grids:
            image = render.render_side_by_side(
                [grids[layer.output], grids[act]],
                [f"before {layer.activation_op or 'activation'}: {layer.output}",
                 f"after: {act}"])
            pairs.append(Picture(f"{folder}/{_file_stem(layer.name)}_before_after.png", image))
    return pairs


def _input_folders(sources: Sequence[str]) -> list[str]:
    """Return one distinct, file-system safe folder name per input."""
    names: list[str] = []
    for source in sources:
        stem = _file_stem(Path(source.split(":")[0]).stem + (
            "_" + source.rsplit(":", 1)[1] if ":" in source else ""))
        name, n = stem, 1
        while name in names:
            n += 1
            name = f"{stem}_{n}"
        names.append(name)
    return names


def _file_stem(name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return safe or "tensor"


def save_pictures(pictures: Sequence[Picture], out: Path, *,
                  arrays: Mapping[str, NDArray[np.generic]] | None = None,
                  npz: Path | None = None) -> list[Path]:
    """Save pictures under ``out`` (a folder, or a ``.png`` file for a single picture).

    Returns:
        The paths written, pictures first, then the ``.npz`` file.
    """
    if out.suffix.lower() == ".png" and len(pictures) == 1:
        targets = {out: pictures[0].image}
    elif out.suffix.lower() == ".png":
        raise InputError(f"{out} names one file but there are {len(pictures)} pictures; "
                         "give a folder instead")
    else:
        targets = {out / p.name: p.image for p in pictures}
    fileio.check_writable([*targets, *([npz] if npz is not None else [])])
    fileio.save_images(targets)
    written = list(targets)
    if npz is not None:
        fileio.save_npz({k: np.asarray(v) for k, v in (arrays or {}).items()}, npz)
        written.append(npz)
    return written


def expand_images(paths: Sequence[Path]) -> list[Path]:
    """Return the image files named by ``paths`` (folders searched recursively)."""
    return [image for path in paths for image in fileio.list_images(path)]


def describe(inspector: Inspector) -> dict[str, Any]:
    """Return a JSON-ready summary of the inspector's model (see ``report.describe_model``)."""
    return report.describe_model(inspector.info, inspector.spec, inspector.preprocessing,
                                 inspector.labels)


format_summary = report.format_summary
format_predictions = report.format_predictions
predictions_to_json = report.predictions_to_json


def build_conv(filters_file: Path | None, *, preset: str | None, out: Path,
               activation: str = "relu") -> Path:
    """Write a one-conv model built from a filter file or the ``edges`` preset; return ``out``."""
    bank: NDArray[np.generic]
    if preset == "edges":
        bank = construction.edge_filters()
    elif filters_file is not None:
        bank = _read_filter_file(filters_file)
    else:
        raise InputError("give a filter file or the 'edges' preset")
    fileio.save_model(construction.build_conv_model(bank, activation=activation), out)
    return out


def _read_filter_file(path: Path) -> NDArray[np.generic]:
    if path.suffix.lower() in (".npy", ".npz"):
        return next(iter(fileio.load_array_file(path).values()))
    return construction.parse_filter_text(fileio.read_text(path), source=str(path))


# -- one-shot functions -------------------------------------------------------------------
def inspect_model(model: ModelSource) -> ModelInfo:
    """Return the layer catalog of a model (shape inference only; no session)."""
    return catalog.read_catalog(load_model(model))


def compute_activations(model: ModelSource, images: Images,
                        layers: Sequence[str | int] | None = None, *, stage: str = "conv",
                        provider: str = "auto", prep: PrepOptions | None = None
                        ) -> dict[str, NDArray[np.generic]]:
    """Return the tensors of ``layers`` for ``images`` (see ``Inspector.activations``)."""
    with Inspector(model, provider, prep=prep) as inspector:
        return inspector.activations(images, layers, stage=stage)


def read_model_filters(model: ModelSource, layer: str | int) -> weights.Filters:
    """Return the filters of one conv layer (see ``weights.read_filters``)."""
    proto = load_model(model)
    return weights.read_filters(proto, catalog.read_catalog(proto).layer(layer))


def predict(model: ModelSource, images: Images, *, top_k: int = 5, provider: str = "auto",
            prep: PrepOptions | None = None) -> list[Prediction]:
    """Return the top-k classes per input (see ``Inspector.predict``)."""
    with Inspector(model, provider, prep=prep) as inspector:
        return inspector.predict(images, top_k)


# -- helpers ------------------------------------------------------------------------------
def _resolve_prep(model: onnx.ModelProto, spec: InputSpec,
                  prep: PrepOptions | None) -> Preprocessing:
    opts = prep or PrepOptions()
    return preprocess.resolve_preprocessing(
        spec, preset=opts.preset, base=preprocess.read_preprocessing(model), mean=opts.mean,
        std=opts.std, scale=opts.scale, channel_order=opts.channel_order, size=opts.size,
        resize=opts.resize)


def _model_labels(model: onnx.ModelProto) -> tuple[str, ...] | None:
    for prop in model.metadata_props:
        if prop.key == META_LABELS:
            try:
                value: Any = json.loads(prop.value)
            except (json.JSONDecodeError, RecursionError) as err:
                raise ModelError(f"metadata {META_LABELS!r} is not a JSON list of class names: "
                                 f"{str(err)[:100]}; fix or remove it") from err
            if not isinstance(value, list) or not all(
                    isinstance(v, str | int | float) for v in value):
                raise ModelError(f"metadata {META_LABELS!r} must be a JSON list of class names, "
                                 f"got {prop.value[:60]!r}; fix or remove it")
            return tuple(str(v) for v in value)
    return None


def read_labels(path: Path) -> tuple[str, ...]:
    """Read class names, one per line (index = class id); ``synset`` lines keep their text."""
    fileio.require_file(path, "labels file", "give a text file with one class name per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read labels file {path}: {err}; give a text file with one "
                         "class name per line") from err
    return tuple(line.strip() for line in lines if line.strip())


def _example_shape(spec: InputSpec, prep: Preprocessing) -> tuple[int, ...]:
    h = spec.height or (prep.size[0] if prep.size else 224)
    w = spec.width or (prep.size[1] if prep.size else 224)
    if spec.layout == "NHWC":
        return (1, h, w, spec.channels)
    if spec.layout == "NHW":
        return (1, h, w)
    return (1, spec.channels, h, w)


def _row_sources(source: str, rows: int) -> tuple[str, ...]:
    """One source name per batch row: ``source`` itself, or ``source[i]`` for several rows."""
    return (source,) if rows == 1 else tuple(f"{source}[{i}]" for i in range(rows))


def _exposed_name(session: runtime.Session, tensor: str) -> str:
    for name in (rewrite.dequantized_name(tensor), rewrite.float16_name(tensor)):
        if name in session.output_names:
            return name
    return tensor


def _check_exposable(layer: Layer) -> None:
    if not layer.exposable:
        raise ModelError(f"layer {layer.name!r} cannot be exposed: {layer.reason}; "
                         "choose a layer of the main graph")


def _stage_tensors(layer: Layer, stage: str) -> list[str]:
    act = layer.activation or layer.output
    if stage == "conv" or not layer.is_conv:
        return [layer.output]
    if stage == "act":
        return [act]
    return [layer.output] if act == layer.output else [layer.output, act]


def _spatial(shape: Sequence[int | str | None] | None) -> int:
    """Known h*w of an (N, C, h, w) shape; 0 when unknown (dynamic), 1 without spatial dims."""
    if shape is None or len(shape) < 3:
        return 1
    dims = shape[2:]
    if not all(isinstance(d, int) for d in dims):
        return 0
    return int(np.prod([int(d) for d in dims if isinstance(d, int)]))


def _gray_picture(x: NDArray[np.float32]) -> Image.Image:
    """Render a (C, H, W) model input as a gray RGB picture (channel mean, min-max scaled)."""
    plane = x.mean(axis=0)
    lo, hi = float(plane.min()), float(plane.max())
    scaled = (plane - lo) / (hi - lo) if hi > lo else np.zeros_like(plane)
    return Image.fromarray(np.uint8(np.round(scaled * 255))).convert("RGB")


def _as_probabilities(scores: NDArray[np.float64]) -> tuple[NDArray[np.float64], bool]:
    rows_sum = scores.sum(axis=1)
    if np.all(scores >= 0) and np.allclose(rows_sum, 1.0, atol=1e-2):
        return scores, False
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True), True


def _to_host(value: NDArray[np.generic], float32: bool) -> NDArray[np.generic]:
    if float32 and value.dtype == np.float16:
        return value.astype(np.float32)
    return value


def _plan_passes(tensors: Sequence[str], sizes: Mapping[str, int], total: int,
                 max_bytes: int | None, max_batch: int | None
                 ) -> list[tuple[slice, list[str]]]:
    """Split rows into chunks (and, if one sample is too big, tensors into groups).

    Returns:
        ``(rows, tensors)`` passes, group-major, each producing at most ``max_bytes`` when a
        single sample of a single tensor fits in it.
    """
    step = max_batch or total or 1
    # A pass briefly holds its outputs twice: onnxruntime's buffers and the arrays returned.
    per_sample = 2 * sum(sizes.values())
    if not max_bytes or per_sample <= max_bytes:
        if max_bytes and per_sample:
            step = max(1, min(step, max_bytes // per_sample))
        return [(slice(i, i + step), list(tensors)) for i in range(0, total, step)]
    groups: list[list[str]] = []
    used = max_bytes + 1
    for tensor in tensors:
        if used + 2 * sizes[tensor] > max_bytes:
            groups.append([])
            used = 0
        groups[-1].append(tensor)
        used += 2 * sizes[tensor]
    return [(slice(i, i + 1), g) for g in groups for i in range(total)]


def plan_groups(plan: Sequence[tuple[slice, list[str]]]) -> list[tuple[list[str], list[slice]]]:
    """Regroup a group-major pass plan as ``(tensors, [row slices])`` pairs."""
    out: list[tuple[list[str], list[slice]]] = []
    for rows, group in plan:
        if not out or out[-1][0] != group:
            out.append((group, []))
        out[-1][1].append(rows)
    return out


def _batch_stats(values: Mapping[str, NDArray[np.generic]], tensor: str, low_zero: bool
                 ) -> ChannelStats:
    """``ChannelStats`` of one chunk from the session's (N, C) reductions of ``tensor``.

    ``low_zero``: the tensor is a Clip output with lower bound 0, whose ``at_low`` is ``zeros``.
    """
    stats = (*rewrite.STAT_NAMES, *rewrite.BOUND_STAT_NAMES, rewrite.NONFINITE_STAT)
    reduced = {s: values[rewrite.stat_output(s, tensor)] for s in stats
               if rewrite.stat_output(s, tensor) in values}
    if low_zero:
        reduced["at_low"] = reduced["zeros"]
    return audit.batch_channel_stats(reduced)


__all__ = [
    "BACKPROP_METHODS", "Batch", "CamOptions", "CamReport", "FilterRenderOptions", "Inspector",
    "MapRenderOptions", "OcclusionOptions", "Picture", "PrepOptions", "Rendered", "build_conv",
    "cam_to_json", "compute_activations", "describe", "expand_images", "format_predictions",
    "format_summary",
    "inspect_model", "load_model", "predict", "predictions_to_json", "read_labels",
    "read_model_filters", "render_backprop", "render_cam", "render_feature_maps",
    "render_model_filters", "save_pictures",
]


def _row_progress(progress: ProgressFn | None) -> cams.ProgressFn | None:
    """Adapt a ``structs.ProgressFn`` to the ``(done, total)`` callback of ``cam``."""
    if progress is None:
        return None
    report = progress
    return lambda done, total: report(Progress(done, total, "row"))


def _class_scores(values: NDArray[np.generic], name: str) -> NDArray[np.float32]:
    """Return (N, classes) float32 scores; trailing size-1 axes ((N, C, 1, 1) heads) are dropped.

    Raises:
        InputError: the tensor is not one score per class (a feature map, a detection head).
    """
    arr = np.asarray(values, np.float32)
    shape = arr.shape
    while arr.ndim > 2 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(f"tensor {name!r} has shape {shape}, not one score per class "
                         "(N, classes); CAM targets need a classifier score: pass score= with "
                         "the name of an (N, classes) tensor or layer (ModelInfo.layers lists "
                         "every tensor with its shape)")
    return arr
