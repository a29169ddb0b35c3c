"""Class-activation maps and backprop views as pure array-to-array functions.

Every CAM variant maps the target layer's activations ``A`` (N, K, h, w) - plus, depending on the
method, the gradients ``dS/dA`` of the target score ``S``, extra forward passes of modified inputs
or of modified layer tensors - to a raw layer-resolution map (N, h, w). ``compute`` looks a method
up in ``METHODS``, runs it, and returns that raw map together with the heatmap upsampled to the
input size and normalized to [0, 1].

This module imports numpy only. Forward passes and gradients come in as callables that the api
builds from ``runtime`` and ``autodiff``; ``METHODS[name]`` says which ones a method needs.

Definitions (S = target score, g = dS/dA, sums over spatial positions a, b unless noted):

- Grad-CAM (Selvaraju et al. 2017): w_k = mean_ab g_k; map = ReLU(sum_k w_k A_k).
- Grad-CAM++ (Chattopadhay et al. 2018, eq. 19 with the exponential-score closed form used by
  pytorch-grad-cam ``grad_cam_plusplus.py``): alpha = g^2 / (2 g^2 + sum_ab(A) g^3), 0 where g = 0;
  w_k = sum_ab alpha ReLU(g); map = ReLU(sum_k w_k A_k).
- XGrad-CAM (Fu et al. 2020): w_k = sum_ab(g_k A_k) / (sum_ab A_k + 1e-7); map as Grad-CAM.
- HiRes-CAM (Draelos & Carin 2020): map = ReLU(sum_k g_k * A_k).
- Layer-CAM (Jiang et al. 2021): map = ReLU(sum_k ReLU(g_k) * A_k).
- Eigen-CAM (Muhammad & Yeasin 2020): projection of the centred (h*w, K) activation matrix on its
  first right singular vector, sign fixed (see ``eigen_cam``), then ReLU.
- Score-CAM (Wang et al. 2020): each channel, upsampled to the input and min-max normalized, masks
  the input; w = softmax over channels of the masked inputs' target scores; map = ReLU(sum w_k A_k).
- Ablation-CAM (Desai & Ramaswamy 2020): w_k = (y - y_k) / y with y_k the target score when
  channel k of the layer is zeroed; map = ReLU(sum_k w_k A_k).
- Occlusion (Zeiler & Fergus 2014): a window filled with a baseline slides over the input; the map
  is the drop in target score per window position.

The maths lives in ``attribution.maps`` (gradient and activation maps, input-gradient views)
and ``attribution.perturbation`` (Score-CAM, Ablation-CAM, occlusion); this module holds the
registry, ``compute`` and target selection.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from numpy.typing import NDArray

from onnx_featviz.attribution.maps import (
    FloatArray,
    _check_size,
    eigen_cam,
    grad_cam,
    grad_cam_pp,
    hires_cam,
    layer_cam,
    normalize_heatmaps,
    upsample_bilinear,
    xgrad_cam,
)
from onnx_featviz.attribution.perturbation import (
    ForwardFn,
    LayerForwardFn,
    MaskedForwardFn,
    OcclusionOptions,
    ProgressFn,
    _row_targets,
    ablation_cam,
    occlusion,
    occlusion_to_pixels,
    score_cam,
)
from onnx_featviz.errors import InputError

log = logging.getLogger(__name__)


"""(B, C, H, W) model input batch -> (B, classes) scores (pre-softmax logits preferred)."""


"""(layer batch (B, K, h, w), image_index (B,)) -> (B, classes) scores of the rest of the network.

``image_index[b]`` is the input image row ``b`` derives from, so the caller can feed any other
tensor the rest of the graph needs (a skip connection from before the layer) from that image."""


"""(layer maps (B, h, w), image_index (B,)) -> (B, classes) scores of
``input[image_index[b]] * minmax(upsample(maps[b]))``: Score-CAM's masked rows, masks built
where the model runs (see ``masking.mask_input``)."""


"""Called as ``progress(done, total)`` with ``done`` strictly increasing up to ``total``."""








@dataclass(frozen=True, slots=True, kw_only=True)
class CamInputs:
    """Everything a CAM method may use; which fields each method needs is in ``METHODS``.

    Attributes:
        targets: (N,) int class index per image (the score the gradients were taken of); the
            forward-pass methods also take (N, T): T maps per image from the same passes.
        input_size: (H, W) of the model input; heatmaps are returned at this size.
        activations: (N, K, h, w) float target-layer activations.
        gradients: (N, K, h, w) dS/dA for each image's target score S, or None.
        input_batch: (N, C, H, W) float model input (NCHW), or None.
        forward: batch -> scores, for Score-CAM and occlusion (see ``ForwardFn``).
        forward_from_layer: layer batch -> scores, for Ablation-CAM (see ``LayerForwardFn``).
        forward_masked: optional faster Score-CAM path that masks on the device
            (``MaskedForwardFn``); ``forward`` is used when it is None.
        batch_size: rows per ``forward``/``forward_from_layer`` call (>= 1).
        progress: called after each call as ``progress(done_rows, total_rows)``.
        occlusion: window settings for the occlusion method.
    """

    targets: NDArray[np.integer]
    input_size: tuple[int, int]
    activations: NDArray[np.floating] | None = None
    gradients: NDArray[np.floating] | None = None
    input_batch: NDArray[np.floating] | None = None
    forward: ForwardFn | None = None
    forward_from_layer: LayerForwardFn | None = None
    forward_masked: MaskedForwardFn | None = None
    batch_size: int = 32
    progress: ProgressFn | None = None
    occlusion: OcclusionOptions = field(default_factory=OcclusionOptions)


@dataclass(frozen=True, slots=True)
class CamResult:
    """Output of ``compute``.

    Attributes:
        method: the registry name used.
        layer_cam: (N, h, w) float32 raw map at the layer's resolution (after the method's ReLU,
            not normalized); for occlusion the (N, gh, gw) grid of score drops.
        cam: (N, H, W) float32 heatmap at the input size, each image min-max scaled to [0, 1].
        targets: (N,) int64 class indices the maps explain.
    """

    method: str
    layer_cam: FloatArray
    cam: FloatArray
    targets: NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class CamMethod:
    """A registry entry: the function and what the caller must put into ``CamInputs``.

    ``fn`` returns the raw (N, h, w) map; ``to_input`` maps it to the (N, H, W) input size
    (``None``: bilinear upsampling).
    """

    fn: Callable[[CamInputs], FloatArray]
    needs_gradients: bool = False
    needs_forward: bool = False
    needs_layer_forward: bool = False
    needs_activations: bool = True
    needs_input: bool = False
    description: str = ""
    to_input: Callable[[FloatArray, CamInputs], FloatArray] | None = None


def _need(inputs: CamInputs, name: str, method: str) -> object:
    value = getattr(inputs, name)
    if value is None:
        raise InputError(f"CAM method {method!r} needs CamInputs.{name}, which is None; supply it "
                         "or pick a method from METHODS that does not need it")
    return value


def _grad_entry(fn: Callable[[NDArray[np.floating], NDArray[np.floating]], FloatArray],
                description: str) -> CamMethod:
    def run(inputs: CamInputs) -> FloatArray:
        assert inputs.activations is not None and inputs.gradients is not None
        return fn(inputs.activations, inputs.gradients)

    return CamMethod(run, needs_gradients=True, description=description)


def _eigen(inputs: CamInputs) -> FloatArray:
    assert inputs.activations is not None
    return eigen_cam(inputs.activations)


def _score(inputs: CamInputs) -> FloatArray:
    assert inputs.activations is not None and inputs.input_batch is not None
    assert inputs.forward is not None
    return score_cam(inputs.activations, inputs.input_batch, targets=inputs.targets,
                     forward=inputs.forward, batch_size=inputs.batch_size,
                     progress=inputs.progress, forward_masked=inputs.forward_masked)


def _ablation(inputs: CamInputs) -> FloatArray:
    assert inputs.activations is not None and inputs.forward_from_layer is not None
    return ablation_cam(inputs.activations, targets=inputs.targets,
                        forward_from_layer=inputs.forward_from_layer,
                        batch_size=inputs.batch_size, progress=inputs.progress)


def _occlusion(inputs: CamInputs) -> FloatArray:
    assert inputs.input_batch is not None and inputs.forward is not None
    return occlusion(inputs.input_batch, targets=inputs.targets, forward=inputs.forward,
                     options=inputs.occlusion, batch_size=inputs.batch_size,
                     progress=inputs.progress)


def _occlusion_pixels(grid: FloatArray, inputs: CamInputs) -> FloatArray:
    return occlusion_to_pixels(grid, inputs.input_size, options=inputs.occlusion)


METHODS: Mapping[str, CamMethod] = MappingProxyType({
    "grad_cam": _grad_entry(grad_cam, "Grad-CAM: channels weighted by mean gradient"),
    "grad_cam_pp": _grad_entry(grad_cam_pp, "Grad-CAM++: positive-gradient weights"),
    "xgrad_cam": _grad_entry(xgrad_cam, "XGrad-CAM: activation-normalized gradient weights"),
    "hires_cam": _grad_entry(hires_cam, "HiRes-CAM: element-wise gradient x activation"),
    "layer_cam": _grad_entry(layer_cam, "Layer-CAM: element-wise ReLU(gradient) x activation"),
    "eigen_cam": CamMethod(_eigen, description="Eigen-CAM: first principal component, no target"),
    "score_cam": CamMethod(_score, needs_forward=True, needs_input=True,
                           description="Score-CAM: N*K forward passes of masked inputs"),
    "ablation_cam": CamMethod(_ablation, needs_layer_forward=True,
                              description="Ablation-CAM: N*(K+1) passes from the layer"),
    "occlusion": CamMethod(_occlusion, needs_forward=True, needs_input=True,
                           needs_activations=False, to_input=_occlusion_pixels,
                           description="Occlusion: sliding baseline window over the input"),
})


"""Name -> CAM method. Names are snake_case; ``resolve_method`` also accepts aliases."""


_ALIASES = {
    "gradcam": "grad_cam", "gradcam++": "grad_cam_pp", "grad_cam++": "grad_cam_pp",
    "gradcampp": "grad_cam_pp", "gradcamplusplus": "grad_cam_pp", "xgradcam": "xgrad_cam",
    "hirescam": "hires_cam", "layercam": "layer_cam", "eigencam": "eigen_cam",
    "scorecam": "score_cam", "ablationcam": "ablation_cam",
}


def resolve_method(method: str) -> str:
    """Return the registry name for a method name or alias (case, '-' and ' ' ignored).

    Raises:
        InputError: unknown method; the message lists close matches and all names.
    """
    key = method.strip().lower().replace("-", "_").replace(" ", "_")
    if key in METHODS:
        return key
    if key.replace("_", "") in _ALIASES or key in _ALIASES:
        return _ALIASES.get(key, _ALIASES.get(key.replace("_", ""), key))
    near = difflib.get_close_matches(key, [*METHODS, *_ALIASES], n=3, cutoff=0.5)
    hint = f"close matches: {', '.join(near)}; " if near else ""
    raise InputError(f"unknown CAM method {method!r}; {hint}valid methods: {', '.join(METHODS)}")


def _validate(entry: CamMethod, method: str, inputs: CamInputs) -> None:
    """Check that ``inputs`` holds what ``entry`` needs, with consistent shapes."""
    needs = {"activations": entry.needs_activations, "gradients": entry.needs_gradients,
             "input_batch": entry.needs_input, "forward": entry.needs_forward,
             "forward_from_layer": entry.needs_layer_forward}
    for name, needed in needs.items():
        if needed:
            _need(inputs, name, method)
    size = _check_size(inputs.input_size)
    batch_shape = np.shape(inputs.input_batch) if inputs.input_batch is not None else ()
    if entry.needs_input and tuple(batch_shape[2:]) != size:
        raise InputError(f"input_batch has shape {batch_shape} but input_size is {size}; pass "
                         "the NCHW model input and its (H, W)")
    if inputs.activations is not None and entry.needs_activations:
        shape = np.shape(inputs.activations)
        if len(shape) == 4 and shape[2] * shape[3] <= 1:
            raise InputError(f"the target layer has no spatial extent (activations {shape}); a "
                             "CAM needs h*w > 1: pick an earlier conv layer (by default the last "
                             "conv layer with spatial size > 1)")
        _row_targets(inputs.targets, shape[0] if shape else 0, 1)


def compute(method: str, inputs: CamInputs) -> CamResult:
    """Run a CAM method and return its raw layer map and the [0, 1] heatmap at the input size.

    Args:
        method: a name in ``METHODS`` (or an alias, see ``resolve_method``).
        inputs: what the method needs (``METHODS[name]`` flags say which fields).

    Returns:
        ``CamResult`` with ``layer_cam`` (R, h, w) raw and ``cam`` (R, H, W) in [0, 1], one row
        per target (R = N, or N * T image-major for (N, T) targets).

    Raises:
        InputError: unknown method, a needed input missing, inconsistent shapes, a layer without
            spatial extent, or a callable returning scores of the wrong shape.
    """
    name = resolve_method(method)
    entry = METHODS[name]
    _validate(entry, name, inputs)
    raw = entry.fn(inputs)
    targets = np.asarray(inputs.targets, dtype=np.int64).reshape(-1)
    if len(raw) < len(targets):  # a class-independent map (Eigen-CAM) serves every target
        raw = np.repeat(raw, len(targets) // len(raw), axis=0)
    size = _check_size(inputs.input_size)
    full = entry.to_input(raw, inputs) if entry.to_input else upsample_bilinear(raw, size)
    return CamResult(name, raw, normalize_heatmaps(full), targets)


def select_targets(scores: NDArray[np.floating], target: int | str | None = None, *,
                   labels: Sequence[str] | None = None,
                   top_k: int | None = None) -> NDArray[np.int64]:
    """Choose the class each image's CAM explains.

    Args:
        scores: (N, classes) model scores (logits or probabilities).
        target: ``None`` for each image's top-1 class, a class index, or a label name (needs
            ``labels``; a string of digits not among the labels is read as an index).
        labels: class names, index = class id.
        top_k: return each image's k best classes instead (only with ``target=None``).

    Returns:
        (N,) int64 class indices, or (N, k) best-first when ``top_k`` is given.

    Raises:
        InputError: scores not 2-D, index out of range, label not found (with close matches),
            ``top_k`` out of range or combined with a target.
    """
    arr = np.asarray(scores)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise InputError(f"expected classifier scores of shape (N, classes), got {arr.shape}; "
                         "pick the model output that holds one score per class")
    n, classes = arr.shape
    if labels is not None and len(labels) != classes:
        log.warning("%d labels given for %d classes", len(labels), classes)
    if top_k is not None:
        if target is not None:
            raise InputError(f"top_k={top_k} and target={target!r} were both given; use one")
        if not 1 <= top_k <= classes:
            raise InputError(f"top_k must be in 1..{classes} for {classes} classes, got {top_k}")
        order = np.argsort(-arr, axis=1, kind="stable")
        return order[:, :top_k].astype(np.int64)
    if target is None:
        return np.asarray(np.argmax(arr, axis=1), dtype=np.int64)
    index = target_index(target, labels)
    check_target(index, classes)
    return np.full(n, index, dtype=np.int64)


def target_index(target: int | str, labels: Sequence[str] | None) -> int:
    """Return the class index a target names (an index, or a label as ``select_targets``).

    Raises:
        InputError: a label not found, or a label name without labels.
    """
    return _label_index(target, labels) if isinstance(target, str) else int(target)


def check_target(index: int, classes: int) -> None:
    """Raise InputError unless ``index`` is a class of a ``classes``-way score."""
    if not 0 <= index < classes:
        raise InputError(f"target {index} is out of range for {classes} classes "
                         f"(0..{classes - 1})")


def _label_index(target: str, labels: Sequence[str] | None) -> int:
    """Index of a label name: exact, then case-insensitive on the name or a comma-separated part."""
    if labels is not None and target in labels:
        return list(labels).index(target)
    if labels is None or target.strip().lstrip("-").isdigit():
        if target.strip().lstrip("-").isdigit():
            return int(target)
        raise InputError(f"target {target!r} is a label name but no labels were given; pass the "
                         "class names or a class index")
    key = target.strip().lower()
    hits = sorted({i for i, lab in enumerate(labels)
                   if key == lab.lower() or key in (p.strip().lower() for p in lab.split(","))})
    if len(hits) == 1:
        return hits[0]
    if hits:
        listed = ", ".join(f"{i}: {labels[i]!r}" for i in hits[:5])
        raise InputError(f"label {target!r} matches several classes ({listed}); use a class index")
    guess = _unique_close_label(key, labels)
    if guess is not None:
        log.warning("label %r is not a class name; taking its one close match, class %d %r",
                    target, guess, labels[guess])
        return guess
    near = difflib.get_close_matches(target, list(labels), n=5, cutoff=0.5)
    hint = f"close matches: {', '.join(repr(x) for x in near)}" if near else "no close matches"
    raise InputError(f"label {target!r} not found among {len(labels)} labels; {hint}; "
                     "use a class index or an exact label")


def _unique_close_label(key: str, labels: Sequence[str]) -> int | None:
    """The one class a lower-case ``key`` plausibly names, else None.

    In order: a label (or comma-separated synonym) whose words all occur in ``key`` ("tabby
    cat" names ImageNet's "tabby"), one holding all of ``key``'s words ("labrador" names
    "Labrador retriever"), a spelling within difflib ratio 0.8 ("golden retreiver"); each counts
    only when exactly one class matches.
    """
    names = [(i, part.strip().lower()) for i, lab in enumerate(labels) for part in
             {lab, *lab.split(",")} if part.strip()]
    words = set(key.split())
    for inside in (True, False):
        hits = {i for i, name in names
                if (set(name.split()) <= words if inside else words <= set(name.split()))}
        if len(hits) == 1:
            return hits.pop()
    spelled = {i for i, name in names
               if difflib.SequenceMatcher(None, key, name).ratio() >= 0.8}
    return spelled.pop() if len(spelled) == 1 else None

