"""Gradient and activation CAMs and input-gradient views (pure numpy): Grad-CAM and its variants,
Eigen-CAM, saliency, guided backprop; upsampling and normalization of heatmaps.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from onnx_featviz.errors import InputError

FloatArray = NDArray[np.float32]

log = logging.getLogger(__name__)
_XGRAD_EPS = 1e-7  # pytorch-grad-cam xgrad_cam.py


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


def saliency(input_gradients: NDArray[np.floating], *, normalize: bool = True) -> FloatArray:
    """Vanilla saliency (Simonyan et al. 2014): max over channels of |dS/dx|.

    Args:
        input_gradients: (N, C, H, W) gradient of each image's target score w.r.t. the input.
        normalize: scale each map to [0, 1].

    Returns:
        (N, H, W) float32.
    """
    g = np.asarray(input_gradients)
    _as_layer(g[:0], "input gradients")  # the shape check, on no values
    out = np.abs(g.astype(np.float32, copy=False)).max(axis=1)  # abs and max are exact
    return normalize_heatmaps(out) if normalize else out


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
    _as_layer(np.asarray(guided_gradients)[:0], "guided gradients")  # the shape check
    g = np.asarray(guided_gradients).astype(np.float32, copy=False)
    mean = g.mean(axis=(1, 2, 3), keepdims=True, dtype=np.float64)  # float64 sums
    std = g.std(axis=(1, 2, 3), keepdims=True, dtype=np.float64)
    scale = (0.1 / (std + 1e-5)).astype(np.float32)
    out = (g - mean.astype(np.float32)) * scale  # float32: the image's own precision
    out += np.float32(0.5)
    np.clip(out, 0.0, 1.0, out=out)
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1))


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

