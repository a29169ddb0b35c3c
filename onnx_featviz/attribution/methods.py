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
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from onnx_featviz.errors import InputError

log = logging.getLogger(__name__)

FloatArray = NDArray[np.float32]
ForwardFn = Callable[[FloatArray], NDArray[np.floating]]
"""(B, C, H, W) model input batch -> (B, classes) scores (pre-softmax logits preferred)."""
LayerForwardFn = Callable[[FloatArray, NDArray[np.intp]], NDArray[np.floating]]
"""(layer batch (B, K, h, w), image_index (B,)) -> (B, classes) scores of the rest of the network.

``image_index[b]`` is the input image row ``b`` derives from, so the caller can feed any other
tensor the rest of the graph needs (a skip connection from before the layer) from that image."""
MaskedForwardFn = Callable[[FloatArray, NDArray[np.intp]], NDArray[np.floating]]
"""(layer maps (B, h, w), image_index (B,)) -> (B, classes) scores of
``input[image_index[b]] * minmax(upsample(maps[b]))``: Score-CAM's masked rows, masks built
where the model runs (see ``rewrite.mask_input``)."""
ProgressFn = Callable[[int, int], None]
"""Called as ``progress(done, total)`` with ``done`` strictly increasing up to ``total``."""

_XGRAD_EPS = 1e-7  # pytorch-grad-cam xgrad_cam.py
_SCORE_CAM_EPS = 1e-8  # pytorch-grad-cam score_cam.py, min-max of each upsampled channel
_ABLATION_EPS = 1e-7  # guards y -> 0 in (y - y_k) / y


@dataclass(frozen=True, slots=True)
class OcclusionOptions:
    """Sliding-window occlusion settings (input pixels).

    ``window``/``stride`` are ``(height, width)``; ``None`` picks ``max(1, size // 8)`` for the
    window and half the window for the stride. ``baseline`` fills the window: a number (model
    input units, 0.0 is the dataset mean for mean/std-normalized inputs) or ``"mean"`` for the
    per-image, per-channel mean of the input.
    """

    window: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    baseline: float | str = 0.0


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


# --------------------------------------------------------------------------- resizing / scaling


def _interp_matrix(n_in: int, n_out: int) -> NDArray[np.float64]:
    """(n_out, n_in) matrix of 1-D linear interpolation with half-pixel centres."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)  # torch clamps negative source coordinates to the first pixel
    lo = np.minimum(np.floor(src).astype(np.intp), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    mat = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(mat, (rows, lo), 1.0 - frac)
    np.add.at(mat, (rows, hi), frac)
    return mat


def upsample_bilinear(maps: NDArray[np.floating], size: tuple[int, int]) -> FloatArray:
    """Resize maps bilinearly with half-pixel centres (align_corners=False).

    Matches ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` and
    ``cv2.resize(INTER_LINEAR)`` when enlarging (no antialiasing when shrinking). Computed as
    R @ map @ C^T with separable interpolation matrices, in float64.

    Args:
        maps: (N, h, w) float array.
        size: output (H, W), each >= 1.

    Returns:
        (N, H, W) float32.

    Raises:
        InputError: ``maps`` is not 3-D or ``size`` is not two positive ints.
    """
    arr = np.asarray(maps, dtype=np.float64)
    if arr.ndim != 3 or 0 in arr.shape:
        raise InputError(f"expected maps of shape (N, h, w), got {arr.shape}; pass one 2-D map "
                         "per image with a batch axis first")
    out_h, out_w = _check_size(size)
    return _resize(arr, (out_h, out_w)).astype(np.float32)


def _resize(arr: NDArray[np.floating], size: tuple[int, int]) -> NDArray[Any]:
    """(N, h, w) -> (N, H, W) bilinear in ``arr``'s float dtype (no checks)."""
    rows = _interp_matrix(arr.shape[1], size[0]).astype(arr.dtype)
    cols = _interp_matrix(arr.shape[2], size[1]).astype(arr.dtype)
    return np.asarray(rows @ arr @ cols.T)


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise InputError(f"expected an output size (H, W) of two positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def normalize_heatmaps(maps: NDArray[np.floating]) -> FloatArray:
    """Scale each map to [0, 1] by its own min and max.

    A constant map becomes all zeros. NaN/Inf values are set to 0 first (logged as a warning).

    Args:
        maps: (N, ...) float array, one map per leading index.

    Returns:
        float32 array of the same shape with values in [0, 1].
    """
    arr = np.asarray(maps, dtype=np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        log.warning("%d non-finite heatmap values set to 0 before normalizing", int(bad.sum()))
        arr = np.where(bad, 0.0, arr)
    if arr.ndim == 0 or arr.size == 0:
        return arr.astype(np.float32)
    axes = tuple(range(1, arr.ndim))
    lo = arr.min(axis=axes, keepdims=True)
    span = arr.max(axis=axes, keepdims=True) - lo
    safe = np.where(span > 0, span, 1.0)
    out = np.where(span > 0, (arr - lo) / safe, 0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- gradient CAMs


def _relu_sum(weights: NDArray[np.float64], acts: NDArray[np.float64]) -> FloatArray:
    """ReLU(sum_k w_k A_k): weights (N, K) or (N, K, h, w), acts (N, K, h, w) -> (N, h, w)."""
    if weights.ndim == 2:
        weights = weights[:, :, None, None]
    out: FloatArray = np.maximum((weights * acts).sum(axis=1), 0.0).astype(np.float32)
    return out


def _pair(activations: NDArray[np.floating], gradients: NDArray[np.floating]
          ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    acts = _as_layer(activations, "activations")
    grads = _as_layer(gradients, "gradients")
    if grads.shape != acts.shape:
        raise InputError(f"gradients have shape {grads.shape} but activations {acts.shape}; "
                         "take the gradient of the target score with respect to the same layer")
    return acts, grads


def _as_layer(arr: NDArray[np.floating], what: str) -> NDArray[np.float64]:
    out = np.asarray(arr, dtype=np.float64)
    if out.ndim != 4:
        raise InputError(f"expected {what} of shape (N, K, h, w), got {out.shape}; CAMs need a "
                         "layer with channel and spatial axes (a conv layer, NCHW)")
    return out


def grad_cam(activations: NDArray[np.floating], gradients: NDArray[np.floating]) -> FloatArray:
    """Grad-CAM: ReLU(sum_k mean_ab(g_k) A_k).

    Args:
        activations: (N, K, h, w) layer activations A.
        gradients: (N, K, h, w) gradients g = dS/dA of each image's target score.

    Returns:
        (N, h, w) float32 raw map (>= 0, not normalized).
    """
    acts, grads = _pair(activations, gradients)
    return _relu_sum(grads.mean(axis=(2, 3)), acts)


def grad_cam_pp(activations: NDArray[np.floating], gradients: NDArray[np.floating]) -> FloatArray:
    """Grad-CAM++: ReLU(sum_k w_k A_k), w_k = sum_ab alpha_kab ReLU(g_kab).

    alpha = g^2 / (2 g^2 + sum_ab(A_k) g^3) as in pytorch-grad-cam ``grad_cam_plusplus.py``
    (Chattopadhay et al. eq. 19, exponential score), set to 0 where g = 0. It is evaluated as the
    algebraically equal 1 / (2 + sum_ab(A_k) g) without pytorch-grad-cam's ``+1e-6`` in the
    denominator: that eps dominates g^2 when |g| < ~1e-3 (common after global pooling over many
    positions) and would change the weights; with eps = 0 both forms agree.

    Args:
        activations: (N, K, h, w) layer activations A.
        gradients: (N, K, h, w) gradients g = dS/dA.

    Returns:
        (N, h, w) float32 raw map.
    """
    acts, grads = _pair(activations, gradients)
    denom = 2.0 + acts.sum(axis=(2, 3), keepdims=True) * grads
    ok = (grads != 0) & (denom != 0)
    alpha = np.where(ok, 1.0 / np.where(ok, denom, 1.0), 0.0)
    weights = (alpha * np.maximum(grads, 0.0)).sum(axis=(2, 3))
    return _relu_sum(weights, acts)


def xgrad_cam(activations: NDArray[np.floating], gradients: NDArray[np.floating]) -> FloatArray:
    """XGrad-CAM: w_k = sum_ab(g_k A_k) / (sum_ab A_k + 1e-7); ReLU(sum_k w_k A_k).

    Args:
        activations: (N, K, h, w) layer activations A.
        gradients: (N, K, h, w) gradients g = dS/dA.

    Returns:
        (N, h, w) float32 raw map.
    """
    acts, grads = _pair(activations, gradients)
    weights = (grads * acts).sum(axis=(2, 3)) / (acts.sum(axis=(2, 3)) + _XGRAD_EPS)
    return _relu_sum(weights, acts)


def hires_cam(activations: NDArray[np.floating], gradients: NDArray[np.floating]) -> FloatArray:
    """HiRes-CAM: ReLU(sum_k g_k * A_k) (element-wise, no spatial averaging).

    Args:
        activations: (N, K, h, w) layer activations A.
        gradients: (N, K, h, w) gradients g = dS/dA.

    Returns:
        (N, h, w) float32 raw map.
    """
    acts, grads = _pair(activations, gradients)
    return _relu_sum(grads, acts)


def layer_cam(activations: NDArray[np.floating], gradients: NDArray[np.floating]) -> FloatArray:
    """Layer-CAM: ReLU(sum_k ReLU(g_k) * A_k).

    Args:
        activations: (N, K, h, w) layer activations A.
        gradients: (N, K, h, w) gradients g = dS/dA.

    Returns:
        (N, h, w) float32 raw map.
    """
    acts, grads = _pair(activations, gradients)
    return _relu_sum(np.maximum(grads, 0.0), acts)


def eigen_cam(activations: NDArray[np.floating]) -> FloatArray:
    """Eigen-CAM: first principal component of the activations, as a map; then ReLU.

    As pytorch-grad-cam ``get_2d_projection``: per image, M = A reshaped (h*w, K), centred by
    subtracting its mean over positions; map = M v1 with v1 the first right singular vector.
    Computed from the smaller Gram matrix (M M^T: M v1 = sqrt(l1) u1, or M^T M: v1), which gives
    the same projection as the SVD and is far cheaper for wide layers. The sign of a singular
    vector is arbitrary, so the map is flipped when it correlates negatively with the
    channel-mean map mean_k A_k (if that correlation is 0: so that its largest-magnitude value is
    positive), making the highlighted region the one where the layer is active. NaN counts as 0.

    Args:
        activations: (N, K, h, w) layer activations.

    Returns:
        (N, h, w) float32 raw map (>= 0).
    """
    acts = np.nan_to_num(_as_layer(activations, "activations"), nan=0.0)
    n, k, h, w = acts.shape
    mats = acts.reshape(n, k, h * w).transpose(0, 2, 1)
    mats = mats - mats.mean(axis=1, keepdims=True)
    if h * w <= k:
        vals, vecs = np.linalg.eigh(mats @ mats.transpose(0, 2, 1))
        proj = vecs[:, :, -1] * np.sqrt(np.maximum(vals[:, -1:], 0.0))
    else:
        _, vecs = np.linalg.eigh(mats.transpose(0, 2, 1) @ mats)
        proj = np.einsum("npk,nk->np", mats, vecs[:, :, -1])
    out: FloatArray = np.maximum(_orient(proj, mats.mean(axis=2)), 0.0)
    return out.reshape(n, h, w).astype(np.float32)


def _orient(proj: NDArray[np.float64], reference: NDArray[np.float64]) -> NDArray[np.float64]:
    """Flip each row of ``proj`` (N, P) to correlate positively with ``reference`` (N, P)."""
    corr = (proj * reference).sum(axis=1)
    scale = np.linalg.norm(proj, axis=1) * np.linalg.norm(reference, axis=1)
    peak = proj[np.arange(proj.shape[0]), np.abs(proj).argmax(axis=1)]
    sign = np.where(np.abs(corr) > 1e-9 * scale, np.sign(corr), np.where(peak < 0, -1.0, 1.0))
    return np.asarray(proj * sign[:, None], dtype=np.float64)


# --------------------------------------------------------------------------- forward-pass CAMs


def _score_rows(scores: NDArray[np.floating], rows: int, classes: NDArray[np.intp],
                what: str) -> NDArray[np.float64]:
    """Pick each row's target scores (classes: (rows, T)) from a (rows, classes) output."""
    out = np.asarray(scores, dtype=np.float64)
    if out.ndim == 1 and rows == out.shape[0]:
        out = out[:, None]
    if out.ndim != 2 or out.shape[0] != rows:
        raise InputError(f"{what} returned shape {out.shape} for a batch of {rows}; it must "
                         "return (batch, classes) scores")
    if classes.size and classes.max() >= out.shape[1]:
        raise InputError(f"target class {int(classes.max())} is out of range for the "
                         f"{out.shape[1]} scores {what} returned; pick a target in "
                         f"0..{out.shape[1] - 1}")
    return np.take_along_axis(out, classes, axis=1)


def _run_batched(total: int, batch_size: int, make_batch: Callable[[int, int], FloatArray],
                 call: Callable[[FloatArray, int, int], NDArray[np.float64]],
                 progress: ProgressFn | None) -> NDArray[np.float64]:
    """Evaluate rows [0, total) in chunks: ``call(make_batch(i, j), i, j)`` -> (j - i, T).

    Returns:
        (total, T) float64 scores.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    parts = []
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        parts.append(call(make_batch(start, stop), start, stop))
        if progress is not None:
            progress(stop, total)
    return np.concatenate(parts) if parts else np.zeros((0, 1), np.float64)


def _softmax(x: NDArray[np.float64], axis: int) -> NDArray[np.float64]:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return np.asarray(e / e.sum(axis=axis, keepdims=True), dtype=np.float64)


def score_cam(activations: NDArray[np.floating], input_batch: NDArray[np.floating], *,
              targets: NDArray[np.integer], forward: ForwardFn, batch_size: int = 32,
              progress: ProgressFn | None = None,
              forward_masked: MaskedForwardFn | None = None) -> FloatArray:
    """Score-CAM: softmax-weighted channels, weights from forward passes of masked inputs.

    For image n and channel k, M_k = minmax(upsample(A_k)) (bilinear to the input size, then
    (M - min) / (max - min + 1e-8)) masks the input: x * M_k; s_k is its target score;
    w = softmax_k(s) (as pytorch-grad-cam ``score_cam.py``; the paper's softmax of the score
    increase over a baseline is the same, softmax being shift-invariant); map = ReLU(sum w_k A_k).
    Runs N * K forward rows in chunks of ``batch_size``; with T targets per image the same rows
    serve all of them.

    Args:
        activations: (N, K, h, w) layer activations.
        input_batch: (N, C, H, W) float model input.
        targets: (N,) target class per image, or (N, T) several per image.
        forward: (B, C, H, W) -> (B, classes) scores.
        batch_size: rows per forward call.
        progress: ``progress(done_rows, N * K)`` after each call.
        forward_masked: when given, rows are fed as (layer map, image index) and masked where
            the model runs (no (rows, C, H, W) masks on the host); same scores.

    Returns:
        (N * T, h, w) float32 raw maps, image-major ((N, h, w) for (N,) targets).
    """
    acts = _as_layer(activations, "activations")
    x = _as_input(input_batch, acts.shape[0]).astype(np.float32)
    n, k = acts.shape[:2]
    cls = _row_targets(targets, n, k)
    acts32 = acts.astype(np.float32)  # masks are built in float32: this loop is the hot path

    def masked(i: int, j: int) -> FloatArray:
        img, ch = np.divmod(np.arange(i, j), k)
        up = _resize(acts32[img, ch], x.shape[2:])
        lo = up.min(axis=(1, 2), keepdims=True)
        up -= lo
        up /= up.max(axis=(1, 2), keepdims=True) + np.float32(_SCORE_CAM_EPS)
        out: FloatArray = np.empty((j - i, *x.shape[1:]), dtype=np.float32)
        for image in np.unique(img):  # rows are grouped by image: broadcast, no gather
            rows = slice(*np.searchsorted(img, [image, image + 1]))
            np.multiply(x[image], up[rows, None], out=out[rows])
        return out

    def call(batch: FloatArray, i: int, j: int) -> NDArray[np.float64]:
        return _score_rows(forward(batch), j - i, cls[i:j], "forward")

    def maps(i: int, j: int) -> FloatArray:
        img, ch = np.divmod(np.arange(i, j), k)
        return acts32[img, ch]

    def call_masked(rows: FloatArray, i: int, j: int) -> NDArray[np.float64]:
        assert forward_masked is not None
        index = (np.arange(i, j) // k).astype(np.intp)
        return _score_rows(forward_masked(rows, index), j - i, cls[i:j], "forward_masked")

    if forward_masked is not None:
        scores = _run_batched(n * k, batch_size, maps, call_masked, progress).reshape(n, k, -1)
        return _relu_sum_targets(_softmax(scores, axis=1), acts)
    scores = _run_batched(n * k, batch_size, masked, call, progress).reshape(n, k, -1)
    return _relu_sum_targets(_softmax(scores, axis=1), acts)


def ablation_cam(activations: NDArray[np.floating], *, targets: NDArray[np.integer],
                 forward_from_layer: LayerForwardFn, batch_size: int = 32,
                 progress: ProgressFn | None = None) -> FloatArray:
    """Ablation-CAM: w_k = (y - y_k) / y; map = ReLU(sum_k w_k A_k).

    y is the target score from the unchanged layer tensor and y_k the score with channel k set
    to 0 (the paper's ablation; pytorch-grad-cam instead uses min - 1e7 when activations can be
    negative), both through ``forward_from_layer`` so they share numerics. |y| < 1e-7 is replaced
    by +-1e-7 (sign kept) to avoid dividing by 0. Runs N * (K + 1) rows in chunks.

    Args:
        activations: (N, K, h, w) layer activations.
        targets: (N,) target class per image, or (N, T) several (the rows serve all).
        forward_from_layer: (layer batch, image_index) -> (B, classes) scores.
        batch_size: rows per call.
        progress: ``progress(done_rows, N * (K + 1))`` after each call.

    Returns:
        (N * T, h, w) float32 raw maps, image-major.
    """
    acts = _as_layer(activations, "activations")
    n, k = acts.shape[:2]
    cls = _row_targets(targets, n, k + 1)
    acts32 = acts.astype(np.float32)

    def ablated(i: int, j: int) -> FloatArray:
        img, ch = np.divmod(np.arange(i, j), k + 1)  # ch == k: the unablated row
        batch = acts32[img]  # fancy indexing copies
        hit = ch < k
        batch[np.flatnonzero(hit), ch[hit]] = 0.0
        return batch

    def call(batch: FloatArray, i: int, j: int) -> NDArray[np.float64]:
        index = (np.arange(i, j) // (k + 1)).astype(np.intp)
        return _score_rows(forward_from_layer(batch, index), j - i, cls[i:j],
                           "forward_from_layer")

    scores = _run_batched(n * (k + 1), batch_size, ablated, call, progress).reshape(n, k + 1, -1)
    base = scores[:, k:]
    base = np.where(np.abs(base) < _ABLATION_EPS, np.where(base < 0, -1.0, 1.0) * _ABLATION_EPS,
                    base)
    return _relu_sum_targets((scores[:, k:] - scores[:, :k]) / base, acts)


def _row_targets(targets: NDArray[np.integer], n: int, per_image: int) -> NDArray[np.intp]:
    """(N,) or (N, T) targets -> (N * per_image, T) classes per forward row (image-major)."""
    cls = np.asarray(targets)
    if cls.ndim == 1:
        cls = cls[:, None]
    if cls.ndim != 2 or cls.shape[0] != n or not np.issubdtype(cls.dtype, np.integer):
        raise InputError(f"expected targets as {n} ints (one class per image) or (N={n}, T) "
                         f"ints, got {cls.dtype} array of shape {np.shape(targets)}")
    if cls.size and cls.min() < 0:
        raise InputError(f"target {int(cls.min())} is negative; class indices start at 0")
    return np.repeat(cls.astype(np.intp), per_image, axis=0)


def _relu_sum_targets(weights: NDArray[np.float64], acts: NDArray[np.float64]) -> FloatArray:
    """ReLU(sum_k w_kt A_k) for weights (N, K, T), acts (N, K, h, w) -> (N * T, h, w)."""
    n, _, h, w = acts.shape
    maps = np.einsum("nkt,nkhw->nthw", weights, acts, optimize=True)
    out: FloatArray = np.maximum(maps, 0.0).reshape(n * weights.shape[2], h, w).astype(np.float32)
    return out


def _as_input(input_batch: NDArray[np.floating], n: int) -> NDArray[np.float64]:
    x = np.asarray(input_batch, dtype=np.float64)
    if x.ndim != 4 or x.shape[0] != n:
        raise InputError(f"expected the input batch as (N={n}, C, H, W), got {x.shape}; pass the "
                         "model input (NCHW) the activations were computed from")
    return x


# --------------------------------------------------------------------------- occlusion


def _starts(size: int, window: int, stride: int) -> NDArray[np.intp]:
    """Window starts covering [0, size): every stride, plus a last one flush with the edge."""
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return np.asarray(starts, dtype=np.intp)


def _occlusion_grid(options: OcclusionOptions, size: tuple[int, int]
                    ) -> tuple[NDArray[np.intp], NDArray[np.intp], tuple[int, int]]:
    """Row starts, column starts and (wh, ww) window for an input of ``size`` (H, W)."""
    win = options.window or (max(1, size[0] // 8), max(1, size[1] // 8))
    stride = options.stride or (max(1, win[0] // 2), max(1, win[1] // 2))
    for name, pair in (("window", win), ("stride", stride)):
        if len(pair) != 2 or any(int(v) != v or v < 1 for v in pair):
            raise InputError(f"occlusion {name} must be two positive ints (h, w), got {pair!r}")
    if win[0] > size[0] or win[1] > size[1]:
        raise InputError(f"occlusion window {tuple(win)} is larger than the input {size}; use a "
                         "window no larger than the input")
    wh, ww = int(win[0]), int(win[1])
    return _starts(size[0], wh, int(stride[0])), _starts(size[1], ww, int(stride[1])), (wh, ww)


def _baseline(x: NDArray[np.float64], baseline: float | str) -> NDArray[np.float64]:
    """(N, C, 1, 1) fill value per image and channel."""
    if isinstance(baseline, str):
        if baseline != "mean":
            raise InputError(f"occlusion baseline must be a number or 'mean', got {baseline!r}")
        return np.asarray(x.mean(axis=(2, 3), keepdims=True), dtype=np.float64)
    return np.full((x.shape[0], x.shape[1], 1, 1), float(baseline))


def occlusion(input_batch: NDArray[np.floating], *, targets: NDArray[np.integer],
              forward: ForwardFn, options: OcclusionOptions | None = None, batch_size: int = 32,
              progress: ProgressFn | None = None) -> FloatArray:
    """Occlusion sensitivity: ReLU(y - y_p) for each window position p.

    Windows start every ``stride`` pixels, plus one flush with the bottom/right edge so every
    pixel is covered. Runs N (unoccluded) + N * P rows in chunks.

    Args:
        input_batch: (N, C, H, W) float model input.
        targets: (N,) target class per image, or (N, T) several (the rows serve all).
        forward: (B, C, H, W) -> (B, classes) scores.
        options: window, stride and fill value.
        batch_size: rows per forward call.
        progress: ``progress(done_rows, N * (P + 1))`` after each call.

    Returns:
        (N * T, gh, gw) float32 score drops (after ReLU) on the grid of window positions.
    """
    x = np.asarray(input_batch, dtype=np.float64)
    if x.ndim != 4:
        raise InputError(f"expected the input batch as (N, C, H, W), got {x.shape}")
    n = x.shape[0]
    rows, cols, (wh, ww) = _occlusion_grid(options or OcclusionOptions(), x.shape[2:])
    per = rows.size * cols.size + 1  # row 0 of each image is the unoccluded input
    cls = _row_targets(targets, n, per)
    fill = _baseline(x, (options or OcclusionOptions()).baseline).astype(np.float32)
    x32 = x.astype(np.float32)

    def occluded(i: int, j: int) -> FloatArray:
        img, pos = np.divmod(np.arange(i, j), per)
        batch = x32[img]  # fancy indexing copies
        for b in np.flatnonzero(pos > 0):
            r, c = rows[(pos[b] - 1) // cols.size], cols[(pos[b] - 1) % cols.size]
            batch[b, :, r:r + wh, c:c + ww] = fill[img[b]]
        return batch

    def call(batch: FloatArray, i: int, j: int) -> NDArray[np.float64]:
        return _score_rows(forward(batch), j - i, cls[i:j], "forward")

    scores = _run_batched(n * per, batch_size, occluded, call, progress).reshape(n, per, -1)
    drops = (scores[:, :1] - scores[:, 1:]).transpose(0, 2, 1)  # (N, T, P)
    return np.maximum(drops, 0.0).reshape(-1, rows.size, cols.size).astype(np.float32)


def occlusion_to_pixels(grid: NDArray[np.floating], size: tuple[int, int], *,
                        options: OcclusionOptions | None = None) -> FloatArray:
    """Average each pixel over the occlusion windows covering it.

    Args:
        grid: (N, gh, gw) values per window position, as returned by ``occlusion``.
        size: input (H, W) the windows were placed on.
        options: the same options ``occlusion`` used.

    Returns:
        (N, H, W) float32 per-pixel mean of the covering windows' values.
    """
    rows, cols, (wh, ww) = _occlusion_grid(options or OcclusionOptions(), _check_size(size))
    vals = np.asarray(grid, dtype=np.float64)
    if vals.shape[1:] != (rows.size, cols.size):
        raise InputError(f"occlusion grid has shape {vals.shape[1:]}, expected "
                         f"{(rows.size, cols.size)} for input {size} and these options")
    total = np.zeros((vals.shape[0], *size))
    count = np.zeros(size)
    for a, r in enumerate(rows):
        for b, c in enumerate(cols):
            total[:, r:r + wh, c:c + ww] += vals[:, a, b, None, None]
            count[r:r + wh, c:c + ww] += 1.0
    return (total / count).astype(np.float32)


# --------------------------------------------------------------------------- backprop views


def saliency(input_gradients: NDArray[np.floating], *, normalize: bool = True) -> FloatArray:
    """Vanilla saliency (Simonyan et al. 2014): max over channels of |dS/dx|.

    Args:
        input_gradients: (N, C, H, W) gradient of each image's target score w.r.t. the input.
        normalize: scale each map to [0, 1].

    Returns:
        (N, H, W) float32.
    """
    g = _as_layer(input_gradients, "input gradients")
    out = np.abs(g).max(axis=1)
    return normalize_heatmaps(out) if normalize else out.astype(np.float32)


def guided_backprop_image(guided_gradients: NDArray[np.floating]) -> FloatArray:
    """Turn guided-backprop gradients into displayable images.

    Per image: (g - mean) / (std + 1e-5) * 0.1 + 0.5, clipped to [0, 1] (the usual deprocessing,
    e.g. pytorch-grad-cam ``deprocess_image``), moved to channels-last. Channel order is the
    model's (BGR models give BGR images).

    Args:
        guided_gradients: (N, C, H, W) guided gradients w.r.t. the input.

    Returns:
        (N, H, W, C) float32 in [0, 1].
    """
    g = _as_layer(guided_gradients, "guided gradients")
    mean = g.mean(axis=(1, 2, 3), keepdims=True)
    std = g.std(axis=(1, 2, 3), keepdims=True)
    out = np.clip((g - mean) / (std + 1e-5) * 0.1 + 0.5, 0.0, 1.0)
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1)).astype(np.float32)


def guided_grad_cam(guided_gradients: NDArray[np.floating],
                    cam: NDArray[np.floating]) -> FloatArray:
    """Guided Grad-CAM: guided gradients times the input-size heatmap, element-wise.

    Args:
        guided_gradients: (N, C, H, W) guided gradients w.r.t. the input.
        cam: (N, H, W) Grad-CAM heatmap at the input size (``CamResult.cam``).

    Returns:
        (N, C, H, W) float32 (pass to ``guided_backprop_image`` for display).
    """
    g = _as_layer(guided_gradients, "guided gradients")
    heat = np.asarray(cam, dtype=np.float64)
    if heat.shape != (g.shape[0], *g.shape[2:]):
        raise InputError(f"cam has shape {heat.shape}, expected {(g.shape[0], *g.shape[2:])} to "
                         "match the gradients; upsample the CAM to the input size first")
    return (g * heat[:, None]).astype(np.float32)


# --------------------------------------------------------------------------- registry


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


# --------------------------------------------------------------------------- targets


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
    index = _label_index(target, labels) if isinstance(target, str) else int(target)
    if not 0 <= index < classes:
        raise InputError(f"target {index} is out of range for {classes} classes "
                         f"(0..{classes - 1})")
    return np.full(n, index, dtype=np.int64)


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
    near = difflib.get_close_matches(target, list(labels), n=5, cutoff=0.5)
    hint = f"close matches: {', '.join(repr(x) for x in near)}" if near else "no close matches"
    raise InputError(f"label {target!r} not found among {len(labels)} labels; {hint}; "
                     "use a class index or an exact label")
