"""Perturbation CAMs (pure numpy over caller-supplied forward functions): Score-CAM,
Ablation-CAM and occlusion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from onnx_featviz.attribution.maps import FloatArray, _as_layer, _check_size, _resize
from onnx_featviz.errors import InputError
from onnx_featviz.io import limits

ForwardFn = Callable[[FloatArray], NDArray[np.floating]]

_SCORE_CAM_EPS = 1e-8  # pytorch-grad-cam score_cam.py, min-max of each upsampled channel
_ABLATION_EPS = 1e-7  # guards y -> 0 in (y - y_k) / y


LayerForwardFn = Callable[[FloatArray, NDArray[np.intp]], NDArray[np.floating]]


MaskedForwardFn = Callable[[FloatArray, NDArray[np.intp]], NDArray[np.floating]]


ProgressFn = Callable[[int, int], None]


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
    Runs one forward row per image and distinct non-constant map, in chunks of ``batch_size``,
    plus one all-zero row shared by every constant channel (its min-max mask is 0, so its
    masked input is all zeros: the same exact score). Maps whose min-max normalised values are
    the same float32 bytes (e.g. every map with one non-zero cell at the same place) share one
    row, fed with the first one's map: their masks differ only through the 1e-8 in the
    denominator (relative 1e-8 / range of the upsampled map). With T targets per image the
    same rows serve all of them.

    Args:
        activations: (N, K, h, w) layer activations.
        input_batch: (N, C, H, W) float model input.
        targets: (N,) target class per image, or (N, T) several per image.
        forward: (B, C, H, W) -> (B, classes) scores.
        batch_size: rows per forward call.
        progress: ``progress(done_rows, rows)`` after each call (rows: distinct maps).
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
    flat = acts32.reshape(n * k, -1)
    constant = flat.max(axis=1) == flat.min(axis=1)  # mask 0: the all-zero input, run once
    live, source = _distinct_maps(flat, constant, k)

    def masked(i: int, j: int) -> FloatArray:
        img, ch = np.divmod(live[i:j], k)
        return _masked_inputs(x, acts32[img, ch], img)

    def call(batch: FloatArray, i: int, j: int) -> NDArray[np.float64]:
        return _score_rows(forward(batch), j - i, cls[live[i:j]], "forward")

    def maps(i: int, j: int) -> FloatArray:
        img, ch = np.divmod(live[i:j], k)
        return acts32[img, ch]

    def call_masked(rows: FloatArray, i: int, j: int) -> NDArray[np.float64]:
        assert forward_masked is not None
        index = (live[i:j] // k).astype(np.intp)
        return _score_rows(forward_masked(rows, index), j - i, cls[live[i:j]], "forward_masked")

    scores = np.empty((n * k, cls.shape[1]), np.float64)
    if forward_masked is not None:
        ran = _run_batched(live.size, batch_size, maps, call_masked, progress)
    else:
        ran = _run_batched(live.size, batch_size, masked, call, progress)
    scores[~constant] = ran[source[~constant]]  # each row takes its distinct map's scores
    if constant.any():  # every constant channel masks the input to zeros: one shared row
        scores[constant] = _zero_input_scores(forward, x.shape[1:], cls[constant])
    return _relu_sum_targets(_softmax(scores.reshape(n, k, -1), axis=1), acts)


def _distinct_maps(flat: FloatArray, constant: NDArray[np.bool_], k: int
                   ) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Pick one row per image and distinct min-max normalised map among the non-constant rows.

    Maps equal after ``(a - min) / (max - min)`` (same float32 bytes, same image) give the same
    Score-CAM mask (up to the 1e-8 in its denominator), so one forward row serves them all.

    Args:
        flat: (N * K, h * w) float32 maps, image-major.
        constant: (N * K,) True where a map is constant (those rows are left out).
        k: channels per image.

    Returns:
        ``live`` (R,) row indices to run, ascending (so grouped by image), and ``source``
        (N * K,) the position in ``live`` serving each non-constant row (0 for constant ones).
    """
    rows = np.flatnonzero(~constant)
    lo = flat[rows].min(axis=1, keepdims=True)
    norm = (flat[rows] - lo) / (flat[rows].max(axis=1, keepdims=True) - lo)
    image = (rows // k).astype(np.int64)[:, None].view(np.uint8)  # (rows, 8) bytes
    raw = np.ascontiguousarray(np.concatenate([image, norm.view(np.uint8)], axis=1))
    keys = raw.view(np.dtype((np.void, raw.shape[1]))).ravel()  # image and map bytes
    _, head, inverse = np.unique(keys, return_index=True, return_inverse=True)
    first = head[inverse.ravel()]  # per non-constant row: its group's first row (in ``rows``)
    live_at = np.unique(first)  # positions in ``rows`` of the rows to run, ascending
    source = np.zeros(flat.shape[0], np.intp)
    source[rows] = np.searchsorted(live_at, first)
    return rows[live_at], source


def _masked_inputs(x: FloatArray, maps: FloatArray, img: NDArray[np.intp]) -> FloatArray:
    """Each row's image times its map upsampled and min-max scaled (rows grouped by image)."""
    up = _resize(maps, x.shape[2:])
    up -= up.min(axis=(1, 2), keepdims=True)
    up /= up.max(axis=(1, 2), keepdims=True) + np.float32(_SCORE_CAM_EPS)
    out: FloatArray = np.empty((len(maps), *x.shape[1:]), dtype=np.float32)
    for image in np.unique(img):  # rows are grouped by image: broadcast, no gather
        rows = slice(*np.searchsorted(img, [image, image + 1]))
        np.multiply(x[image], up[rows, None], out=out[rows])
    return out


def _zero_input_scores(forward: ForwardFn, row_shape: tuple[int, ...],
                       classes: NDArray[np.intp]) -> NDArray[np.float64]:
    """Scores of the all-zero input (one run) for every row's classes."""
    zero = np.asarray(forward(np.zeros((1, *row_shape), np.float32)), np.float64)
    _score_rows(zero, 1, classes[:1], "forward")  # (batch, classes), as for the other rows
    return _score_rows(np.repeat(zero.reshape(1, -1), len(classes), axis=0), len(classes),
                       classes, "forward")


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
    if stride[0] > size[0] or stride[1] > size[1]:
        raise InputError(f"occlusion stride {tuple(stride)} is larger than the input {size}; "
                         "use a stride no larger than the input (and at most the window, so "
                         "every pixel is covered)")
    wh, ww = int(win[0]), int(win[1])
    count = ((size[0] - wh) // int(stride[0]) + 2) * ((size[1] - ww) // int(stride[1]) + 2)
    limits.check_windows(count, f"occlusion windows per image (window {tuple(win)}, stride "
                                f"{tuple(stride)}, input {size})")
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

